"""What every tunable network of the zoo shares: its layers made by one factory (tunable or plain),
omega checked once per forward, every layer's alpha computed at once, and `bake(omega)`.

An architecture is written once, as a module built from `Layers` and run by `run(x, alphas)`:
- the tunable network (`Layers(num_params, mode)`) runs it with the `Alphas` of its omega;
- its plain twin (`Layers(None)`: nn.Conv2d, nn.Linear, nn.Parameter) runs it with alphas None.
Inside `run`, a layer is called as `run_layer(layer, x, alphas)` and a tunable tensor read as
`value(param, alphas)` (both flexops.nn.tunable, which the zoo's SwinIR shares), so the same code
serves both. `bake(omega)` fills the plain twin with the blended tensors: its state_dict keys are the
tunable network's, less the omega MLPs, with each TunableParameter `name.weight` stored as the plain
Parameter `name`.

A new architecture (e.g. a tunable SwinIR) is one more file: the plain network built from a
`layers` argument with a `run(x, alphas)`, and `class TunableX(TunableNetwork, X)` (see edsr.py).
"""

import torch
from torch import nn

from flexops.models import checks
from flexops.nn.dense import Conv2d, Linear
from flexops.nn.tunable import MODES, Alphas, TunableConv2d, TunableLinear, TunableParameter

TUNABLE = (TunableConv2d, TunableLinear, TunableParameter)


class Layers:
    """Makes a network's layers: tunable when `num_params` is an int, plain when it is None.

    Args:
        num_params: p, the length of omega (None: the plain twin).
        mode: "mlp" (alpha = Linear(p, p)(omega), one per layer) or "linear" (alpha = omega).
    """

    def __init__(self, num_params=None, mode="mlp"):
        if num_params is not None and (not isinstance(num_params, int) or num_params < 1):
            raise ValueError(f"num_params must be a positive int, got {num_params!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.num_params, self.mode = num_params, mode

    @property
    def tunable(self):
        return self.num_params is not None

    def conv(self, in_channels, out_channels, kernel_size, stride=1, groups=1, bias=True):
        """A square convolution with 'same' padding ((k - 1) // 2: 0 for the 2x2/s2 and 1x1 kernels)."""
        padding = (kernel_size - 1) // 2
        if self.tunable:
            return TunableConv2d(in_channels, out_channels, kernel_size, self.num_params, stride=stride,
                                 padding=padding, groups=groups, bias=bias, mode=self.mode)
        return Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, groups=groups,
                         bias=bias)

    def linear(self, in_features, out_features, bias=True):
        if self.tunable:
            return TunableLinear(in_features, out_features, self.num_params, bias=bias, mode=self.mode)
        return Linear(in_features, out_features, bias=bias)

    def param(self, shape, plain_shape=None, init=nn.init.zeros_):
        """A tunable tensor of `shape` (TunableParameter, p copies initialised by `init`), or the plain
        twin's nn.Parameter of `plain_shape` (default `shape`; the same elements, e.g. NAFNet's beta
        [c, 1, 1] tunable, so per-sample values broadcast as [B, c, 1, 1], and [1, c, 1, 1] plain)."""
        if self.tunable:
            return TunableParameter(shape, self.num_params, mode=self.mode, init=init)
        param = nn.Parameter(torch.empty(plain_shape or shape))
        init(param.data)
        return param


class TunableNetwork:
    """Mixin of the zoo's tunable networks: `forward(x, omega)`, `bake(omega)`.

    `class TunableX(TunableNetwork, X)`, where X is the plain architecture built from `layers` with a
    `run(x, alphas)`; TunableX's __init__ builds X with `Layers(num_params, mode)`, then calls
    `_collect_tunable(num_params, mode)`, and defines `plain()` (X with the same settings).
    """

    def _collect_tunable(self, num_params, mode):
        self.num_params, self.mode = num_params, mode
        # Kept as a plain tuple (not submodules), in module order: found once, not per forward.
        self._tunable = tuple(m for m in self.modules() if isinstance(m, TUNABLE))

    @property
    def tunable_layers(self):
        """The tunable layers (convolutions, linears, parameters), in module order."""
        return self._tunable

    # Whether forward may run a baked twin when called twice in a row with the same omega (see forward).
    reuse_baked = True

    def forward(self, x, omega):
        """x [B, C, H, W]; omega [p] (one setting for the batch) or [B, p] (one per image).

        Without autograd (torch.no_grad / inference_mode), a shared omega given twice in a row runs a
        baked twin kept from the second call on (the blends are the network's own: outputs are
        identical), so restoring many images at one setting costs what the plain network costs; the
        twin holds a copy of the blended weights, is dropped when omega changes and baked again when a
        weight has changed. `net.reuse_baked = False` turns this off.
        """
        checks.image_batch(x, self.in_chans)
        omega = checks.omega(omega, self.num_params, x, self._tunable[0]._parameters["weight"])
        if self._may_reuse_baked(omega):
            baked = self._kept_baked(omega)
            if baked is not None:
                return baked(x)
        return self.run(x, Alphas(self._tunable, omega))

    def _may_reuse_baked(self, omega):
        """Whether a baked twin may serve this call: a shared omega, without autograd, and no graph
        being captured (torch.fx, torch.export, torch.compile: a graph blends on every call, and
        reading omega's values would break it). Otherwise a kept twin is dropped (e.g. training
        resumed after an evaluation: the twin would only hold memory)."""
        if checks.traced(omega) or torch.compiler.is_compiling():
            return False
        if omega.dim() == 1 and self.reuse_baked and not torch.is_grad_enabled():
            return True
        self.__dict__.pop("_last_call", None)
        return False

    def _kept_baked(self, omega):
        """The baked twin for omega when the previous call had the same setting (kept from then if the
        weights are unchanged, else baked now), else None; the setting is remembered for the next call.

        A new setting (a user moving a slider) reads no weights: the weights' versions are compared only
        when a setting comes again, since walking every parameter costs about 1 ms for NAFNet."""
        setting = (tuple(omega.tolist()), omega.dtype, omega.device, self.training)
        last_setting, kept_weights, baked = self.__dict__.get("_last_call", (None, None, None))
        if setting != last_setting:
            self.__dict__["_last_call"] = (setting, None, None)  # the old twin goes with its setting
            return None
        # Each module's own dicts: named_parameters' de-duplicating walk costs twice as long.
        weights = tuple((t.data_ptr(), t._version) for module in self.modules()
                        for tensors in (module._parameters, module._buffers) for t in tensors.values() if t is not None)
        if baked is None or weights != kept_weights:
            with torch.inference_mode(False):  # its tensors must serve outside inference_mode too
                baked = self.bake(omega)
            self.__dict__["_last_call"] = (setting, weights, baked)
        return baked

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """nn.Module.load_state_dict, after checking that the checkpoint has this network's p."""
        for name, module in self.named_modules():
            if isinstance(module, TUNABLE) and f"{name}.weight" in state_dict:
                found = state_dict[f"{name}.weight"].shape[0]
                if found != self.num_params:
                    raise ValueError(f"the state_dict holds {found} kernels per tunable layer ({name}.weight is "
                                     f"{list(state_dict[f'{name}.weight'].shape)}) but this network has "
                                     f"num_params={self.num_params}: build it with num_params={found}")
                break  # every layer has the same p: one is enough
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def blended_state_dict(self, omega):
        """The plain twin's state_dict at one setting omega [p]: every tunable tensor blended with its
        layer's alpha (TunableParameter `name.weight` becomes `name`, omega MLPs dropped), everything
        else (norms, buffers) as it is. Detached; tunable parameters keep their tunable shape."""
        checks.setting(omega, self.num_params)
        reference = next(self.parameters())
        omega = omega.to(dtype=reference.dtype, device=reference.device)
        names = {name: module for name, module in self.named_modules() if isinstance(module, TUNABLE)}
        prefixes = tuple(f"{name}." for name in names)
        # Copies: the plain network must not share its norms and buffers with this one.
        state = {key: t.detach().clone() for key, t in self.state_dict().items() if not key.startswith(prefixes)}
        # Without autocast: the blends are the parameters' dtype, as the plain twin's weights must be.
        with torch.no_grad(), torch.autocast(reference.device.type, enabled=False):
            alphas = Alphas(self._tunable, omega)
            for name, module in names.items():
                alpha = alphas.of(module)
                if isinstance(module, TunableParameter):
                    state[name] = _blend(module.weight, alpha)
                    continue
                state[f"{name}.weight"] = _blend(module.weight, alpha)
                if module.bias is not None:
                    state[f"{name}.bias"] = _blend(module.bias, alpha)
        return state

    def bake(self, omega):
        """The plain network equal to this one at the fixed setting omega [p]: nn.Conv2d / nn.Linear /
        nn.Parameter holding the blended tensors, `forward(x)`, on this network's device and dtype, in
        its train/eval mode. A user who settled on a setting pays nothing for tunability at inference.

        >>> net = TunableEDSR(n_resblocks=2, n_feats=8)
        >>> plain = net.bake(torch.tensor([0.3, 0.7]))
        >>> plain(x)                                       # == net(x, torch.tensor([0.3, 0.7]))
        """
        state = self.blended_state_dict(omega)
        with torch.device("meta"):
            plain = self.plain()
        shapes = plain.state_dict()
        copy_unsaved_buffers(plain, self)  # first: loading checks stored buffers against them (SwinIR's index)
        plain.load_state_dict({key: t.reshape(shapes[key].shape) for key, t in state.items()}, assign=True)
        return plain.train(self.training)


def copy_unsaved_buffers(target, source):
    """Replaces `target`'s buffers on the meta device by copies of `source`'s of the same names: a
    network built on meta and then loaded from a state_dict would keep the buffers that a state_dict
    does not hold (non-persistent ones, e.g. SwinIR's mean and index) on meta."""
    for name, buffer in target.named_buffers():
        if buffer.is_meta:
            module, _, leaf = name.rpartition(".")
            target.get_submodule(module)._buffers[leaf] = source.get_buffer(name).clone()


def _blend(tensor, alpha):
    """sum_i alpha_i tensor[i] for a [p, ...] tensor and alpha [p]."""
    return (alpha @ tensor.flatten(1)).view(tensor.shape[1:])
