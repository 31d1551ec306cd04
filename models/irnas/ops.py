"""IR-NAS's candidate operations (the zoo's irnas.md, section 1).

Every op maps C channels to C channels at stride 1 and keeps the spatial size. The convolutions start
with a ReLU and end with a BatchNorm (affine in the derived network, not during the search):

    conv  ReLU -> Conv2d 3x3 -> BN                                   9C^2 + 2C parameters (affine BN)
    sep   2 x [ReLU -> depthwise 3x3 -> Conv2d 1x1 -> BN] (DARTS)    2 (9C + C^2 + 2C)
    dil   ReLU -> Conv2d 3x3, dilation 2 -> BN (a full conv)         9C^2 + 2C
    def   ReLU -> DCNv2 3x3, 2 offset groups, sigmoid mask -> BN     9C^2 + C + (54 * 9C + 54) + 2C
    skip  identity                                                   0
    none  zero                                                       0

At C = 10: 920, 420, 920, 5,844, 0, 0.

Example::

    op = OPS["def"](10, affine=True)
    y = op(torch.randn(2, 10, 32, 32))      # [2, 10, 32, 32]
"""

from torch import nn

from flexops.nn.deform_conv import ModulatedDeformConv2d
from flexops.nn.dense import Conv2d

OP_NAMES = ("conv", "sep", "dil", "def", "skip", "none")


def _relu_conv_bn(channels, affine, dilation=1):
    return nn.Sequential(
        nn.ReLU(),
        Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(channels, affine=affine),
    )


def _separable(channels, affine):
    layers = []
    for _ in range(2):
        layers += [nn.ReLU(), Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
                   Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels, affine=affine)]
    return nn.Sequential(*layers)


def _deformable(channels, affine):
    """ReLU -> DCNv2 (CharlesShang/DCNv2's DCN: 2 offset groups, mask = sigmoid, bias starting at 0,
    offset/mask predictor starting at 0) -> BN. A fresh DCN computes 0.5 * conv3x3(x) + bias."""
    dcn = ModulatedDeformConv2d(channels, channels, 3, padding=1, offset_groups=2, mask_activation="sigmoid")
    nn.init.zeros_(dcn.bias)
    return nn.Sequential(nn.ReLU(), dcn, nn.BatchNorm2d(channels, affine=affine))


class Zero(nn.Module):
    """The "none" op: a zero map of the input's shape."""

    def forward(self, x):
        return x.mul(0.0)


def _check_width(name, channels):
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"C (channels) of op {name!r} must be a positive int, got {channels!r}")
    if name == "def" and channels % 2:
        raise ValueError(f"C (channels) of op 'def' must be even (2 offset groups), got {channels}")


def _constructor(name, build):
    def construct(C, affine=True):
        _check_width(name, C)
        return build(C, affine)

    construct.__name__ = f"op_{name}"
    construct.__doc__ = f"IR-NAS op {name!r}: C -> C channels, stride 1; BN affine when `affine`."
    return construct


class _Ops(dict):
    """{name: constructor(C, affine)}; an unknown name raises a ValueError listing the known ones."""

    def __missing__(self, name):
        raise ValueError(f"unknown IR-NAS op {name!r}; the ops are {', '.join(OP_NAMES)}")


_BUILDERS = {
    "conv": lambda C, affine: _relu_conv_bn(C, affine),
    "sep": _separable,
    "dil": lambda C, affine: _relu_conv_bn(C, affine, dilation=2),
    "def": _deformable,
    "skip": lambda C, affine: nn.Identity(),
    "none": lambda C, affine: Zero(),
}
OPS = _Ops((name, _constructor(name, _BUILDERS[name])) for name in OP_NAMES)


def check_op_name(name, what="op"):
    """Raises a ValueError unless `name` is one of OP_NAMES."""
    if name not in OP_NAMES:
        raise ValueError(f"{what} must be one of {', '.join(OP_NAMES)}; got {name!r}")

