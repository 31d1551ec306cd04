"""The parametric multi-loss (eq. 7), omega sampling and the objectives of the paper's experiments
(the zoo's tunable.md, section 2).

    L = mean_b sum_i omega_bi lambda_i L_i(b)

with the same omega fed to the network. Reading chosen: omega is drawn per image (the reference
layers take [B, p]), so each image of a batch trains its own setting; `per_sample=False` in
`sample_omega` gives the literal one-setting-per-step instead.

Objectives are callables `objective(output, batch, omega) -> [B]` (one loss per image), where batch
is the training pair (degraded input z, clean target y) and omega is [B, p].
"""

import pathlib

import torch
import torch.nn.functional as F
from torch import nn

from flexops.models import data
from flexops.models import train as training

NU = 0.9  # share of the noise the noise-preserving target keeps at omega_2 = 1 (eq. 9)
GAMMA = 8.0  # unsharp-mask strength of the deblurring target
SHARPEN_SIZE, SHARPEN_STD = 9, 2.5  # its Gaussian


class ParametricMultiLoss(nn.Module):
    """Eq. 7: sum_i omega_i lambda_i L_i, averaged over the batch, with omega [p] or [B, p].

    Args:
        objectives: the p objectives, each `objective(output, batch, omega) -> [B]` (omega as [B, p]).
        lambdas: the fixed weights lambda_i >= 0 (default all 1).

    >>> loss_fn = ParametricMultiLoss(denoise_objectives())
    >>> omega = sample_omega("simplex", 16, 2, generator)      # [16, 2]
    >>> loss = loss_fn(net(z, omega), (z, y), omega)
    """

    def __init__(self, objectives, lambdas=None):
        super().__init__()
        self.objectives = list(objectives)
        lambdas = [1.0] * len(self.objectives) if lambdas is None else [float(v) for v in lambdas]
        if len(lambdas) != len(self.objectives) or min(lambdas, default=0) < 0:
            raise ValueError(f"lambdas must be {len(self.objectives)} non-negative weights; got {lambdas}")
        self.lambdas = lambdas

    @property
    def num_params(self):
        return len(self.objectives)

    def terms(self, output, batch, omega):
        """The objectives' values per image, unweighted: [B, p]."""
        omega = self._rows(omega, output.shape[0])
        return torch.stack([objective(output, batch, omega) for objective in self.objectives], dim=1)

    def forward(self, output, batch, omega):
        return self.evaluate(output, batch, omega)[0]

    def evaluate(self, output, batch, omega):
        """(the loss, the unweighted objectives per image [B, p])."""
        omega = self._rows(omega, output.shape[0])
        terms = self.terms(output, batch, omega)
        return (omega * omega.new_tensor(self.lambdas) * terms).sum(1).mean(), terms

    def _rows(self, omega, batch):
        p = self.num_params
        if omega.shape not in ((p,), (batch, p)):
            raise ValueError(f"omega must be [{p}] or [B, {p}] = [{batch}, {p}]; got {list(omega.shape)}")
        return omega.expand(batch, p)


def sample_omega(kind, batch, num_params, generator=None, per_sample=True):
    """Random settings for training: [batch, num_params].

    Args:
        kind: "simplex" (the convex experiments: omega_1 ~ U(0, 1), omega_2 = 1 - omega_1 for p = 2,
            so both marginals are uniform; Dirichlet(1, ..., 1) for p >= 3) or "independent" (every
            omega_i ~ U(0, 1): the joint denoise + deblur experiment).
        per_sample: False: one setting repeated for the whole batch (one per step, the literal reading).
    """
    rows = batch if per_sample else 1
    if kind == "independent":
        omega = torch.rand(rows, num_params, generator=generator)
    elif kind == "simplex":
        if num_params == 2:
            first = torch.rand(rows, 1, generator=generator)
            omega = torch.cat([first, 1 - first], dim=1)
        else:  # normalised unit exponentials are Dirichlet(1, ..., 1)
            draws = -torch.log1p(-torch.rand(rows, num_params, generator=generator))
            omega = draws / draws.sum(1, keepdim=True)
    else:
        raise ValueError(f"kind must be 'simplex' or 'independent'; got {kind!r}")
    return omega.expand(batch, num_params)


def _l1(output, target):
    return (output - target).abs().flatten(1).mean(1)


def noisy_target(clean, noisy, keep):
    """y_eta = y + keep * nu * (z - y): the clean image with a share of the noise kept (keep [B])."""
    return clean + (keep * NU).view(-1, 1, 1, 1) * (noisy - clean)


def sharpen(image, strength):
    """Unsharp mask T + strength * gamma * (T - g * T), g a 9x9 Gaussian of std 2.5 (replicate borders)."""
    taps = data.gaussian_kernel(SHARPEN_STD, SHARPEN_SIZE, dtype=image.dtype).to(image.device)
    channels, pad = image.shape[1], SHARPEN_SIZE // 2
    blurred = F.pad(image, (pad, pad, pad, pad), mode="replicate")
    blurred = F.conv2d(blurred, taps.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    blurred = F.conv2d(blurred, taps.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return image + (strength * GAMMA).view(-1, 1, 1, 1) * (image - blurred)


def denoise_objectives():
    """Denoising strength (Table 1): L_rec = |y^ - y|, L_noise = |y^ - y_eta|, y_eta = y + omega_2 nu (z - y)."""

    def reconstruction(output, batch, omega):
        return _l1(output, batch[1])

    def noise_preservation(output, batch, omega):
        noisy, clean = batch
        return _l1(output, noisy_target(clean, noisy, omega[:, 1]))

    return [reconstruction, noise_preservation]


def joint_objectives():
    """Joint denoising + deblurring (Table 3), the zoo's reading (tunable.md section 2):
    T = y + (1 - omega_1) nu (z - y); L_noise = |y^ - T|; L_blur = |y^ - sharpen(T, omega_2)|.
    omega_1 sets how much noise (and blur) is removed, omega_2 how much sharpening is added."""

    def target(batch, omega):
        noisy, clean = batch
        return noisy_target(clean, noisy, 1 - omega[:, 0])

    def noise(output, batch, omega):
        return _l1(output, target(batch, omega))

    def blur(output, batch, omega):
        return _l1(output, sharpen(target(batch, omega), omega[:, 1]))

    return [noise, blur]


# torchvision's VGG-19 (IMAGENET1K_V1) file, looked for in torch.hub's cache; never downloaded here.
VGG19_FILE = "vgg19-dcbb9e9d.pth"
# Indices in torchvision's vgg19().features of the layers the paper names.
VGG19_LAYERS = {"relu3_3": 15, "conv5_4": 34}


def vgg19_features(layer, weights=None):
    """VGG-19 up to `layer` ("relu3_3" or "conv5_4"), frozen, taking images in [0, 1].

    Args:
        weights: a torchvision VGG-19 state_dict file; default: torch.hub's cache
            (`<torch.hub.get_dir()>/checkpoints/vgg19-dcbb9e9d.pth`). Nothing is downloaded.

    Raises:
        FileNotFoundError: with what to do, when the weights are not on this machine.
    """
    from torchvision.models import vgg19

    path = pathlib.Path(weights) if weights else pathlib.Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"the perceptual and style objectives need torchvision's VGG-19 weights, not found at {str(path)!r}; "
            "flexops does not download them: put them there (torchvision.models.VGG19_Weights.IMAGENET1K_V1) "
            "or pass their path"
        )
    net = vgg19()
    net.load_state_dict(training.read_torch_file(path, "VGG-19 weights"))
    return _Normalised(net.features[: VGG19_LAYERS[layer] + 1]).eval().requires_grad_(False)


class _Normalised(nn.Module):
    def __init__(self, features):
        super().__init__()
        self.features = features
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x):
        return self.features((x - self.mean) / self.std)


def sr_objectives(features, adversary=None):
    """x4 SR (Tables 4-5), reconstruction vs GAN: L_rec = |y^ - y|; L_gan = 0.01 L_rec + L_vgg + 0.005 L_adv,
    L_vgg the l1 distance of VGG-19 conv5_4 features (`features`, e.g. vgg19_features("conv5_4")) and
    L_adv the network's RaGAN loss from `adversary` (adversarial.RelativisticAdversary, whose
    discriminator the training loop steps as a companion); without an adversary, L_adv is left out."""

    def reconstruction(output, batch, omega):
        return _l1(output, batch[1])

    def gan(output, batch, omega):
        features.to(output.device)
        loss = 0.01 * _l1(output, batch[1]) + _l1(features(output), features(batch[1]))
        if adversary is not None:
            loss = loss + 0.005 * adversary.generator_loss(output, batch[1])
        return loss

    return [reconstruction, gan]


# Not in the paper (its supplementary holds them): the zoo's readings, Johnson et al.'s balance with
# the Gram matrices normalised by C H W.
STYLE_LAMBDAS = dict(gram=1e5, vgg=1.0, tv=1e-6, uv=1.0)


def gram(features):
    """Gram matrices [B, C, C] of [B, C, H, W] features, divided by C H W."""
    b, c, h, w = features.shape
    flat = features.reshape(b, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)


def _yuv_chroma(image):
    r, g, b = image.unbind(1)
    return torch.stack([-0.14713 * r - 0.28886 * g + 0.436 * b, 0.615 * r - 0.51499 * g - 0.10001 * b], dim=1)


def style_objectives(features, styles, lambdas=STYLE_LAMBDAS):
    """The style experiment (Fig. 7): one objective per style image,
    L_style = l_gram |G(f(y^)) - G(f(s))|_F^2 + l_vgg |f(y^) - f(x)|_2^2 + l_tv TV(y^) + |UV(y^) - UV(x)|_2^2,
    f = VGG-19 relu3_3 (`features`), x the input, UV the YUV chroma.

    Args:
        features: e.g. vgg19_features("relu3_3"). styles: p style images [3, H, W] in [0, 1].
        lambdas: dict with gram, vgg, tv, uv (default STYLE_LAMBDAS, a reading).
    """

    def objective(style):
        target = None

        def loss(output, batch, omega):
            nonlocal target
            features.to(output.device)
            if target is None or target.device != output.device:
                with torch.no_grad():
                    target = gram(features(style[None].to(output.device)))
            content = batch[0]
            f_out, f_in = features(output), features(content)
            tv = (output[..., 1:, :] - output[..., :-1, :]).abs().flatten(1).sum(1) + \
                 (output[..., 1:] - output[..., :-1]).abs().flatten(1).sum(1)
            return (lambdas["gram"] * (gram(f_out) - target).pow(2).flatten(1).sum(1)
                    + lambdas["vgg"] * (f_out - f_in).pow(2).flatten(1).mean(1)
                    + lambdas["tv"] * tv
                    + lambdas["uv"] * (_yuv_chroma(output) - _yuv_chroma(content)).pow(2).flatten(1).mean(1))

        return loss

    return [objective(style) for style in styles]
