"""The zoo's registry: every network is built by name, in the spirit of timm's create_model."""

_constructors = {}


def register(name):
    """Decorator: `@register("cresmd")` makes `create("cresmd", **kwargs)` call the decorated class
    or function with those keyword arguments."""

    def decorate(constructor):
        if name in _constructors:
            raise ValueError(f"a zoo network named {name!r} is already registered")
        _constructors[name] = constructor
        return constructor

    return decorate


def create(name, **kwargs):
    """Builds the zoo network registered as `name` with keyword arguments `kwargs`.

    Example: `flexops.models.create("cresmd", nb=16)`. `list_models()` gives the names.
    """
    if name not in _constructors:
        raise ValueError(f"no zoo network named {name!r}; available: {', '.join(list_models())}")
    return _constructors[name](**kwargs)


def list_models():
    """The names `create` accepts, sorted."""
    return sorted(_constructors)
