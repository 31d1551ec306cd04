"""Tunable layers (Maggioni et al., CVPR 2023): each holds p sets of parameters and blends them
with alpha, computed from the user's interactive parameters omega.

mode "mlp": alpha = Linear(p, p)(omega), no activation; mode "linear": alpha = omega. omega is [p]
(one setting for the whole batch) or [B, p] (one per sample).

Inside a network, pass an `Alphas` where a layer takes omega: it holds every layer's alpha computed
in one batched product, and the layers then skip the per-call checks (the network checked its
input and omega once). A network of hundreds of small layers pays that fixed cost once, not per layer.
"""

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from flexops.nn import _inputs
from flexops.nn._init import default_init_
from flexops.nn.dense import Linear
from flexops.ops._args import ArgumentError, conv_params, fx_leaf, fx_leaf_layer
from flexops.ops.tunable_conv2d import tunable_conv2d, tunable_conv2d_unchecked

MODES = ("mlp", "linear")


class Alphas:
    """Every tunable layer's alpha for one omega, computed together.

    Args:
        layers: the tunable layers (TunableConv2d, TunableLinear, TunableParameter), all with
            num_params = p.
        omega: [p] (shared by the batch) or [B, p] (per sample), already checked by the caller (a
            network checks it against its input once): layers handed an Alphas do not check again.

    The "mlp" layers' alphas come from one batched product of their stacked Linear(p, p) weights
    (differentiable, so training goes through it too); "linear" layers get omega itself.

    >>> conv1, conv2 = TunableConv2d(3, 8, 3, 2, padding=1), TunableConv2d(8, 3, 3, 2, padding=1)
    >>> alphas = Alphas([conv1, conv2], torch.tensor([0.3, 0.7]))
    >>> y = conv2(conv1(x, alphas), alphas)          # == conv2(conv1(x, omega), omega)
    """

    __slots__ = ("_by_layer", "per_sample")

    def __init__(self, layers, omega):
        traced = isinstance(omega, torch.fx.Proxy)
        # Whether omega is [B, p] (one setting per image); None where torch.fx traces it (rank unknown).
        self.per_sample = None if traced else omega.dim() == 2
        mlps = [(layer, layer._modules.get("mlp")) for layer in layers]
        mlp = [(layer, _weight_and_bias(linear, traced)) for layer, linear in mlps if linear is not None]
        self._by_layer = {layer: omega for layer, linear in mlps if linear is None}
        if mlp:
            # alpha[l] = W_l omega + b_l for every layer l, omega [p] or [B, p] alike (no branch on its
            # rank, which torch.fx cannot read): the bias is a weight on a constant 1 appended to omega.
            weight = torch.stack([w for _, (w, _) in mlp])  # [L, p, p]
            bias = torch.stack([b for _, (_, b) in mlp])  # [L, p]
            augmented = torch.cat([weight, bias.unsqueeze(-1)], -1)  # [L, p, p + 1]
            with _without_autocast(mlp[0][0]):
                alpha = torch.einsum("...i,lqi->l...q", F.pad(omega, (0, 1), value=1.0), augmented)
            # A Proxy cannot be unbound into a sequence, only indexed.
            per_layer = [alpha[i] for i in range(len(mlp))] if traced else alpha.unbind(0)
            self._by_layer.update(zip((layer for layer, _ in mlp), per_layer))

    def of(self, layer):
        """The alpha of `layer`: [p] or [B, p], like omega."""
        return self._by_layer[layer]


def _weight_and_bias(linear, traced):
    """An nn.Linear's weight and bias: under torch.fx its attributes (get_attr nodes, so the graph reads
    the parameters rather than holding copies), else from its own dict: nn.Module.__getattr__ costs
    microseconds per layer, which for hundreds of layers is as much as the batched product itself."""
    if traced:
        return linear.weight, linear.bias
    params = linear._parameters
    return params["weight"], params["bias"]


class _Tunable(nn.Module):
    """Holds the omega -> alpha map shared by the tunable layers."""

    def __init__(self, num_params, mode):
        super().__init__()
        if not isinstance(num_params, int) or num_params < 1:
            raise ValueError(f"num_params must be a positive int, got {num_params!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.num_params = num_params
        self.mode = mode
        self.mlp = Linear(num_params, num_params) if mode == "mlp" else None

    def alpha(self, omega, batch=None):
        """alpha for omega [p] or [B, p] (checked, B = `batch` when given), or the one an `Alphas` holds
        for this layer."""
        if type(omega) is Alphas:
            return omega.of(self)
        omega = checked_omega(omega, self.num_params, self.weight, batch)
        if self.mlp is None:
            return omega
        with _without_autocast(self):
            return self.mlp(omega)

    def extra_repr(self):
        return f"num_params={self.num_params}, mode={self.mode!r}"


@fx_leaf
def checked_omega(omega, num_params, like, batch=None, name="omega"):
    """The rule for a setting omega, of a tunable layer and of a tunable network alike: [p] (one
    setting for the batch) or [B, p] (one per image, B = `batch` when given), finite; returned as
    `like`'s dtype and device (a layer's or network's parameters), since omega is the user's setting:
    float64 or integer values, or a CPU tensor for a network on the GPU, are taken as they are meant.
    Under mixed precision omega thereby stays in the parameters' float32, as alpha does.

    Finiteness is not checked while torch.compile or torch.export capture a graph, where values are
    unknown. One node under torch.fx, where shapes are unknown."""
    if not isinstance(omega, torch.Tensor) or omega.dim() not in (1, 2) or omega.shape[-1] != num_params:
        shape = list(omega.shape) if isinstance(omega, torch.Tensor) else type(omega).__name__
        raise ArgumentError(f"{name} must be [{num_params}] (one setting for the batch) or [B, {num_params}] "
                            f"(one per image); got {shape}")
    if batch is not None and omega.dim() == 2 and omega.shape[0] != batch:
        raise ArgumentError(f"{name} has {omega.shape[0]} rows (one setting per image) but x has {batch} images: "
                            f"give {name} [{num_params}] for the whole batch or [B, {num_params}]")
    # Before the move to like's device: a CPU omega (the usual setting) is checked without a host sync.
    if not torch.compiler.is_compiling() and not bool(torch.isfinite(omega).all()):
        raise ArgumentError(f"{name} must be finite; got {omega.tolist()}")
    return omega.to(device=like.device, dtype=like.dtype)


def _without_autocast(layer):
    """Autocast off on layer's device while alpha is computed: alpha stays in the parameters' dtype
    (float32 under mixed precision), and the op casts it to the input's."""
    return torch.autocast(layer._parameters["weight"].device.type, enabled=False)


def _leaf_unless_alphas(forward):
    """fx_leaf_layer for a layer called with omega; called with an `Alphas` (inside a network) the
    forward is traced through, since an Alphas is no value a graph can hold: the node is the op."""
    leaf = fx_leaf_layer(forward)

    @functools.wraps(forward)
    def run(self, *args):
        return forward(self, *args) if type(args[-1]) is Alphas else leaf(self, *args)

    return run


# The op of a TunableConv2d inside a network (no checks: the network checked its input and omega once),
# one node under torch.fx.
_network_conv = fx_leaf(tunable_conv2d_unchecked)


class TunableConv2d(_Tunable):
    """Conv2d with p kernels blended by alpha(omega) (Tunable Convolutions, Maggioni et al., CVPR 2023).

    y = conv(x, sum_i alpha_i W_i) + sum_i alpha_i b_i, where omega are the user's interactive
    parameters (e.g. omega = (1, 0): the first objective, (0, 1): the second, anything in between:
    a blend) and alpha = Linear(p, p)(omega) (mode "mlp", learned) or alpha = omega ("linear").

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: as nn.Conv2d.
        num_params: p, the number of kernels (and of omega's entries).
        mode: "mlp" or "linear" (see above).

    forward(x, omega): x [B, in_channels, H, W]; omega [p] (one setting for the batch) or [B, p]
    (one per image) -> [B, out_channels, Ho, Wo]. Parameters: weight [p, out, in/groups, kh, kw],
    bias [p, out], mlp (mode "mlp").

    >>> layer = TunableConv2d(64, 64, kernel_size=3, num_params=2, padding=1)
    >>> y = layer(torch.randn(1, 64, 128, 128), torch.tensor([0.3, 0.7]))
    >>> y = layer(torch.randn(4, 64, 128, 128), torch.rand(4, 2))        # a setting per image
    """

    def __init__(self, in_channels, out_channels, kernel_size, num_params, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, mode="mlp"):
        super().__init__(num_params, mode)
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = (kh, kw)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self._pairs = conv_params(stride, padding, dilation)  # normalised once, not per call
        self.weight = nn.Parameter(torch.empty(num_params, out_channels, in_channels // groups, kh, kw))
        self.bias = nn.Parameter(torch.empty(num_params, out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        # Each of the p kernels is initialised as nn.Conv2d initialises its one.
        for i in range(self.num_params):
            default_init_(self.weight[i], None if self.bias is None else self.bias[i])

    @_leaf_unless_alphas
    def forward(self, x, omega):
        """x [B, in_channels, H, W]; omega [p], [B, p] or an `Alphas` (then unchecked)."""
        if type(omega) is Alphas:
            return _network_conv(x, self.weight, self.bias, omega.of(self), *self._pairs, self.groups)
        x = _layer_input(x, self.in_channels)
        alpha = self.alpha(omega, x.shape[0])
        return tunable_conv2d(x, self.weight, self.bias, alpha, *self._pairs, self.groups)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, bias={self.bias is not None}, {super().extra_repr()}")


@fx_leaf
def _layer_input(x, in_channels):
    """x itself once it fits a TunableConv2d: its errors speak of the layer's in_channels, not of the
    op's weight. One node under torch.fx, where shapes are unknown."""
    _inputs.image(x, in_channels)
    return x


class TunableParameter(_Tunable):
    """A tensor blended from p tensors: forward(omega) -> [*shape] or [B, *shape].

    Args:
        shape: the blended tensor's shape. num_params: p. mode: "mlp" or "linear" (as TunableConv2d).
        init: initialiser applied to each of the p tensors (default zeros).

    >>> scale = TunableParameter((64, 1, 1), num_params=2, init=torch.nn.init.ones_)
    >>> y = x * scale(torch.tensor([0.5, 0.5]))        # NAFNet's beta/gamma, tunable
    """

    def __init__(self, shape, num_params, mode="mlp", init=nn.init.zeros_):
        super().__init__(num_params, mode)
        self.shape = tuple(shape)
        self.weight = nn.Parameter(torch.empty(num_params, *self.shape))
        for i in range(num_params):
            init(self.weight[i])

    @_leaf_unless_alphas
    def forward(self, omega):
        """omega [p], [B, p] or an `Alphas`; returns [*shape] or [B, *shape]."""
        alpha = self.alpha(omega)
        return (alpha @ self.weight.flatten(1)).unflatten(-1, self.shape)


class TunableLinear(_Tunable):
    """Linear with p weight matrices blended by alpha(omega): forward(x, omega).

    Args:
        in_features, out_features, bias: as nn.Linear. num_params: p. mode: "mlp" or "linear" (as
            TunableConv2d).

    x is [..., in_features]; with per-sample omega [B, p], x's first dimension is the batch. It runs as
    flexops.ops.tunable_conv2d's 1x1 convolution, on that op's backends and dtypes (CPU: fp32, fp64).

    >>> fc = TunableLinear(180, 360, num_params=2)
    >>> y = fc(torch.randn(4, 64, 180), torch.rand(4, 2))      # [4, 64, 360], a setting per image
    """

    def __init__(self, in_features, out_features, num_params, bias=True, mode="mlp"):
        super().__init__(num_params, mode)
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(num_params, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(num_params, out_features)) if bias else None
        for i in range(num_params):
            default_init_(self.weight[i], None if self.bias is None else self.bias[i])

    @_leaf_unless_alphas
    def forward(self, x, omega):
        """x [..., in_features] ([B, ..., in_features] with per-sample omega); omega [p], [B, p] or an
        `Alphas` (then unchecked)."""
        checked = type(omega) is Alphas
        return _tunable_linear(x, self.weight, self.bias, self.alpha(omega), self.in_features, checked)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, {super().extra_repr()}")


@fx_leaf
def _tunable_linear(x, weight, bias, alpha, in_features, checked):
    """TunableLinear's product for alpha [p] or [B, p]; x is checked unless `checked`. One node under
    torch.fx: how x is viewed depends on alpha's rank."""
    if not checked and x.shape[-1] != in_features:
        raise ArgumentError(f"x must end in in_features={in_features}, got shape {tuple(x.shape)}")
    if not checked and alpha.dim() == 2 and x.shape[0] != alpha.shape[0]:
        raise ArgumentError(f"per-sample omega has {alpha.shape[0]} rows but x has batch {x.shape[0]}")
    # x's rows are the pixels of a channels-last [B, in, rows, 1] image (a view, no copy), so the
    # product is tunable_conv2d's pointwise convolution: its blends write to memory kept between calls
    # rather than allocating the kernel afresh, which costs more than the blend itself.
    shared = alpha.dim() == 1
    batch, rows = (1, math.prod(x.shape[:-1])) if shared else (x.shape[0], math.prod(x.shape[1:-1]))
    if rows == 0:  # an image without pixels, which a convolution refuses: the empty product directly
        blended = torch.einsum("...p,poi->...io", alpha, weight).reshape(-1, in_features, weight.shape[1])
        y = x.reshape(blended.shape[0], 0, in_features) @ blended
        if bias is not None:
            y = y + (alpha @ bias).reshape(blended.shape[0], 1, -1)
        return y.reshape(*x.shape[:-1], weight.shape[1])
    image = x.reshape(batch, rows, 1, in_features).permute(0, 3, 1, 2)
    kernel = weight[..., None, None]
    y = tunable_conv2d_unchecked(image, kernel, bias, alpha, (1, 1), (0, 0), (1, 1), 1)
    return y.permute(0, 2, 3, 1).reshape(*x.shape[:-1], weight.shape[1])


def run_layer(module, x, *layer_args):
    """module(x, *layer_args) for a TunableConv2d or TunableLinear, module(x) for any other layer; a
    Sequential runs layer by layer (its activations and pixel shuffles get x alone).

    One network body thereby serves a tunable network, whose layer_args are (alphas,), and its plain
    twin, whose layer_args are empty or (None,).
    """
    if isinstance(module, nn.Sequential):
        for layer in module:
            x = run_layer(layer, x, *layer_args)
        return x
    return module(x, *layer_args) if isinstance(module, (TunableConv2d, TunableLinear)) else module(x)


def value(param, alphas):
    """A tunable tensor's value ([...] for shared omega, [B, ...] per sample) for a network's alphas,
    or, with alphas None, the plain twin's Parameter itself (as run_layer serves both twins' layers)."""
    return param if alphas is None else param(alphas)
