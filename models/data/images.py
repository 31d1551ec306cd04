"""Image files and the built-in sample photos: float32 RGB tensors ``[3, H, W]`` in ``[0, 1]``."""

from __future__ import annotations

import functools
import pathlib

import numpy as np
import torch

from flexops.models import checks
from flexops.ops import ArgumentError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    """uint8 ``[H, W]`` or ``[H, W, 3]`` array -> float32 ``[3, H, W]`` in [0, 1]."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.dtype != np.uint8:
        raise ValueError(f"expected an 8-bit image, got dtype {array.dtype}")
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float().div_(255.0).contiguous()


# Colour (RGB) photographs shipped inside scikit-image's package (no download). Left out: RGBA
# (logo), synthetic (colorwheel, checkerboard, phantom), binary (horse), grayscale photos and
# textures (camera, moon, coins, ...), and `cat`, an alias of `chelsea`.
_SKIMAGE_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "rocket",
    "stereo_motorcycle",  # the left view of the stereo pair
)


@functools.cache
def _sample_images() -> tuple[torch.Tensor, ...]:
    try:
        import skimage.data
    except ImportError as err:
        raise ImportError(
            'sample_images() needs scikit-image; install it with `pip install "flexops[zoo]"` '
            "(or `pip install scikit-image`)"
        ) from err
    images = []
    for name in _SKIMAGE_PHOTOS:
        array = getattr(skimage.data, name)()
        if name == "stereo_motorcycle":
            array = array[0]
        images.append(_to_tensor(array))
    return tuple(images)


def sample_images() -> list[torch.Tensor]:
    """The colour photographs bundled with scikit-image (no download needed): astronaut, chelsea,
    coffee, hubble_deep_field, immunohistochemistry, retina, rocket and the left motorcycle view.

    Returns:
        list of float32 ``[3, H, W]`` tensors in ``[0, 1]`` (smallest side 300). They are loaded
        once and cached: the tensors are shared between calls, so do not modify them in place.

    Raises:
        ImportError: if scikit-image is not installed (``pip install "flexops[zoo]"``).
    """
    return list(_sample_images())


def load_folder(path) -> list[torch.Tensor]:
    """Load every ``.png``, ``.jpg`` and ``.jpeg`` file (any letter case) of a folder, sorted by
    file name, converted to RGB with Pillow. Sub-folders and other files are ignored.

    Args:
        path: folder (str or path-like).

    Returns:
        list of float32 ``[3, H, W]`` tensors in ``[0, 1]``.

    Raises:
        FileNotFoundError: if ``path`` does not exist or is not a folder.
        ValueError: if the folder holds no such image.
    """
    folder = pathlib.Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found (or not a directory): {str(folder)!r}")
    files = sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
        key=lambda p: p.name,
    )
    if not files:
        raise ValueError(
            f"no images in {str(folder)!r}: files ending in {', '.join(IMAGE_EXTENSIONS)} "
            "(any letter case) are read"
        )
    return [load_image(p) for p in files]


def load_image(path) -> torch.Tensor:
    """One PNG/JPEG file as a float32 ``[3, H, W]`` RGB tensor in ``[0, 1]`` (Pillow).

    Raises:
        FileNotFoundError: if ``path`` is not a file.
        flexops.ops.ArgumentError: if it is not an image Pillow can read (a ValueError).
    """
    from PIL import Image  # an optional dependency (flexops[zoo]): imported when used

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {str(path)!r}")
    try:
        with Image.open(path) as im:
            return _to_tensor(np.array(im.convert("RGB")))
    except (OSError, SyntaxError) as error:  # Pillow's kinds for an unknown, damaged or cut file
        raise ArgumentError(f"{str(path)!r} is not a readable image ({type(error).__name__}): PNG or JPEG "
                            "files are expected") from None


def save_image(image: torch.Tensor, path) -> None:
    """Writes a ``[3, H, W]`` (or gray ``[1, H, W]``) image in ``[0, 1]`` (clipped, rounded to 8 bits) to ``path``; the
    format follows the file extension (PNG for lossless output)."""
    from PIL import Image  # an optional dependency (flexops[zoo]): imported when used

    checks.image(image)
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    Image.fromarray(np.ascontiguousarray(array[:, :, 0] if array.shape[2] == 1 else array)).save(path)

