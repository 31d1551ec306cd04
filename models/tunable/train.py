"""Training the tunable networks on the paper's experiments, through the zoo's shared loop.

Each step draws omega (per image, a function of the step number so resumed runs see the same
stream), runs the network at that omega and minimises the parametric multi-loss at the same omega.
The paper's optimiser: Adam, learning rate 1e-4, fixed (no decay), batch 16, 64x64 patches.

    python -m flexops.models.tunable train --experiment denoise --steps 500000 --checkpoint resnet_dn.pt
"""

import dataclasses

import torch

from flexops.models import data
from flexops.models import train as training
from flexops.models.registry import create
from flexops.models.tunable import loss as losses
from flexops.models.tunable.adversarial import RelativisticAdversary

NETWORKS = {"edsr": "tunable_edsr", "nafnet": "tunable_nafnet", "stylenet": "tunable_stylenet",
            "swinir": "tunable_swinir"}


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One of the paper's experiments: omega's length and sampling, the degradation, the objectives."""

    num_params: int
    sampling: str  # "simplex" or "independent" (loss.sample_omega)
    scale: int = 1  # SR factor of the input pairs
    blur: bool = False  # blur (std U(0, 4), 21x21) before the noise
    noise: bool = True  # Gaussian noise, sigma U(5, 30) (0-255 scale)


EXPERIMENTS = {
    "denoise": Experiment(2, "simplex"),
    "joint": Experiment(2, "independent", blur=True),
    "sr": Experiment(2, "simplex", scale=4, noise=False),
    "style": Experiment(3, "simplex", noise=False),
}
SIGMA_RANGE = (5.0, 30.0)
MAX_BLUR = 4.0


class TunablePairs(data.PatchPairs):
    """Training pairs (degraded z, clean y) of an experiment: `data.PatchPairs` (item i a function of
    (seed, i)) with the experiment's degradation.

    The clean patch is data.random_patch of image i % len(images) (patch_size x patch_size, times
    `scale` for SR); z is y blurred (21x21 Gaussian, std U(0, 4)) when `blur`, with Gaussian noise of
    sigma U(sigma_range) (clipped, 8-bit) when `noise`, bicubic-downscaled by `scale`. Style: z = y.
    """

    def __init__(self, images, patch_size, experiment, sigma_range=SIGMA_RANGE, seed=0):
        self.experiment, self.sigma_range = experiment, sigma_range
        super().__init__(images, patch_size * experiment.scale, self._degrade, seed)

    def _degrade(self, clean, g):
        e = self.experiment
        degraded = clean
        if e.blur:
            degraded = data.gaussian_blur(degraded, MAX_BLUR * float(torch.rand((), generator=g)))
        if e.scale > 1:
            degraded = torch.nn.functional.interpolate(degraded[None], scale_factor=1 / e.scale, mode="bicubic",
                                                       antialias=True)[0].clamp(0, 1)
        if e.noise:
            low, high = self.sigma_range
            degraded = data.add_noise(degraded, low + (high - low) * float(torch.rand((), generator=g)), g)
        return degraded, clean


def loss_function(multi_loss, sampling, seed=0, per_sample=True):
    """The training loop's loss_fn: omega drawn for the step (seeded by step), the network run and
    scored at that omega; metrics are the unweighted objectives' batch means."""

    def loss(model, batch, step):
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        degraded = batch[0]
        omega = losses.sample_omega(sampling, degraded.shape[0], multi_loss.num_params, g, per_sample)
        omega = omega.to(degraded.device, degraded.dtype)
        output = model(degraded, omega)
        total, terms = multi_loss.evaluate(output, batch, omega)
        return total, {f"L{i + 1}": v for i, v in enumerate(terms.detach().mean(0).tolist())}

    return loss


def objectives(experiment, style_images=None, vgg_weights=None, adversary=None):
    """The p objectives of an experiment (see loss.py); "sr" and "style" need VGG-19 weights on disk,
    "sr" takes the RaGAN term from `adversary` (none: left out)."""
    if experiment == "denoise":
        return losses.denoise_objectives()
    if experiment == "joint":
        return losses.joint_objectives()
    if experiment == "sr":
        return losses.sr_objectives(losses.vgg19_features("conv5_4", vgg_weights), adversary)
    if experiment == "style":
        if not style_images or len(style_images) != EXPERIMENTS["style"].num_params:
            raise ValueError(f"the style experiment needs {EXPERIMENTS['style'].num_params} style images "
                             f"(Mosaic, Edtaonisl, Kandinsky in the paper); got {len(style_images or [])}")
        return losses.style_objectives(losses.vgg19_features("relu3_3", vgg_weights), style_images)
    raise ValueError(f"experiment must be one of {', '.join(EXPERIMENTS)}; got {experiment!r}")


def train(experiment="denoise", network="edsr", images=None, *, network_kwargs=None, steps=1000, patch_size=64,
          batch_size=16, lr=1e-4, sigma_range=SIGMA_RANGE, per_sample=True, style_images=None, vgg_weights=None,
          seed=0, checkpoint=None, save_every=1000, num_workers=0, progress=True, precision="fp32"):
    """Trains a tunable network with the parametric multi-loss of one of the paper's experiments.

    Args:
        experiment: "denoise" (reconstruction vs noise preservation, p = 2), "joint" (denoise + deblur,
            omega_i independent), "sr" (x4, reconstruction vs GAN: VGG-19 features and a RaGAN
            discriminator trained alongside, saved in the checkpoint; VGG-19 weights needed),
            "style" (3 styles; VGG-19 weights and `style_images` needed).
        network: "edsr" (the paper's ResNet; scale 4 for "sr"), "nafnet" or "stylenet".
        images: list of [3, H, W] images in [0, 1] (default: the built-in sample photos).
        network_kwargs: the network's settings (num_params and, for "sr", scale are the experiment's).
        sigma_range: training noise std (0-255 scale). per_sample: one omega per image (else per step).
        style_images: the 3 style images [3, H, W] of "style". vgg_weights: path of VGG-19's weights
            (default: torch.hub's cache). seed: weights, data and omega streams.
        Others: as flexops.models.train.train, with the paper's fixed learning rate (no decay).

    Returns the trained network in eval mode.
    """
    if experiment not in EXPERIMENTS:
        raise ValueError(f"experiment must be one of {', '.join(EXPERIMENTS)}; got {experiment!r}")
    if network not in NETWORKS:
        raise ValueError(f"network must be one of {', '.join(NETWORKS)}; got {network!r}")
    spec = EXPERIMENTS[experiment]
    settings = dict(network_kwargs or {}, num_params=spec.num_params)
    if network == "edsr":
        settings["scale"] = spec.scale
    elif spec.scale != 1:
        raise ValueError(f"the {experiment!r} experiment needs an upscaling network: network='edsr'")
    torch.manual_seed(seed)
    model = create(NETWORKS[network], **settings)
    adversary = RelativisticAdversary() if experiment == "sr" else None
    multi_loss = losses.ParametricMultiLoss(objectives(experiment, style_images, vgg_weights, adversary))
    images = training.images() if images is None else images
    dataset = TunablePairs(images, patch_size, spec, sigma_range, seed)
    config = {"model": NETWORKS[network], "network": settings, "experiment": experiment, "patch_size": patch_size,
              "batch_size": batch_size, "sigma_range": list(sigma_range), "per_sample": per_sample, "seed": seed}
    return training.train(model, loss_function(multi_loss, spec.sampling, seed, per_sample), dataset, steps=steps,
                          batch_size=batch_size, lr=lr, betas=(0.9, 0.999), milestones=[], checkpoint=checkpoint,
                          save_every=save_every, config=config, num_workers=num_workers, progress=progress,
                          description=f"tunable {network} {experiment}", precision=precision,
                          companions=None if adversary is None else {"discriminator": adversary})
