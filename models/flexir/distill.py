"""FlexIR's training (paper section 3.2, Algorithm 1; spec section 3): progressive self-distillation.

A frozen teacher (the SwinIR FlexIR starts from) gives the deep feature F_t. The pointer schedule
activates the B-RSTBs one at a time (d = min(L, 1 + floor(L * step / steps))); for each active exit j
the loss is alpha * L_CA,j + (1 - alpha) * L_c,j, with L_c the Charbonnier loss of exit j's output
and L_CA the channel-wise scoring distillation mean|F_j * phi_j(F_j) - F_t|; the exits are weighted
by j / sum(1..d) (eq. 5). Blocks beyond d do not run and get no gradient.
"""

import torch
import torch.nn.functional as F
from torch import nn

from flexops.models import data
from flexops.models import train as training
from flexops.models.flexir.network import FlexIR
from flexops.models.swinir import SwinIR
from flexops.nn.dense import Conv2d

ALPHA = 0.1
CHARBONNIER_EPS = 1e-3


def charbonnier(output, target, eps=CHARBONNIER_EPS):
    """mean(sqrt((output - target)^2 + eps^2)) (eq. 2, per-pixel mean)."""
    return torch.sqrt((output - target) ** 2 + eps**2).mean()


def pointer_schedule(step, steps, num_blocks):
    """Active B-RSTBs at `step` of `steps`: equal stages, 1 at the start, all in the last stage."""
    return min(num_blocks, 1 + num_blocks * step // max(steps, 1))


def exit_weights(depth):
    """Eq. 5's weights of exits 1..depth: j / sum(1..depth)."""
    total = depth * (depth + 1) / 2
    return [j / total for j in range(1, depth + 1)]


class ChannelScoring(nn.Module):
    """C-WS's channel scores phi = sigmoid(Theta(avgpool F) + Theta(maxpool F)) (eq. 3, CBAM-style);
    Theta = Conv1x1(C -> C / reduction) - ReLU - Conv1x1(-> C), no bias. forward(F [B, C, H, W]) ->
    phi [B, C, 1, 1] in (0, 1)."""

    def __init__(self, channels, reduction=16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.theta = nn.Sequential(Conv2d(channels, hidden, 1, bias=False), nn.ReLU(inplace=True),
                                   Conv2d(hidden, channels, 1, bias=False))

    def forward(self, features):
        average = self.theta(F.adaptive_avg_pool2d(features, 1))
        peak = self.theta(F.adaptive_max_pool2d(features, 1))
        return torch.sigmoid(average + peak)


class Distillation(nn.Module):
    """What the training loop optimises: the student FlexIR and one ChannelScoring per exit (Theta is
    training-only); the teacher SwinIR is frozen (no gradients, eval mode)."""

    def __init__(self, student, teacher, reduction=16):
        super().__init__()
        self.student = student
        self.scorers = nn.ModuleList([ChannelScoring(student.embed_dim, reduction) for _ in student.layers])
        self.teacher = teacher.eval().requires_grad_(False)

    def train(self, mode=True):
        super().train(mode)
        self.teacher.eval()
        return self

    def teacher_feature(self, x):
        """F_t: the teacher's final deep feature (after its last RSTB, before the tail's norm) [B, C, H', W']."""
        with torch.no_grad():
            _, _, tokens = self.teacher.head(x)
            for layer in self.teacher.layers:
                tokens = layer(tokens)
            return tokens.permute(0, 3, 1, 2)

    def forward(self, degraded, target, depth, alpha=ALPHA):
        """Eq. 5 over exits 1..depth: (total, {name: float}). The loss is the forward, so that a
        DDP wrapper sees the student run."""
        outputs, features = self.student.exits(degraded, depth)
        teacher = self.teacher_feature(degraded)
        total = 0
        logs = {}
        for j, (weight, output, feature) in enumerate(zip(exit_weights(depth), outputs, features)):
            scored = feature * self.scorers[j](feature)
            l_ca = (scored - teacher).abs().mean()
            l_c = charbonnier(output, target)
            total = total + weight * (alpha * l_ca + (1 - alpha) * l_c)
            logs[f"Lc{j + 1}"] = l_c.item()
        return total, dict(logs, d=depth)


def train(teacher=None, images=None, *, steps=1000, patch_size=128, batch_size=8, lr=1e-5, sigma=25.0, alpha=ALPHA,
          shared_tail=False, network=None, seed=0, checkpoint=None, save_every=1000, num_workers=0, progress=True,
          precision="fp32"):
    """Trains FlexIR from a SwinIR teacher by progressive self-distillation (module docstring).

    Args:
        teacher: the trained SwinIR (frozen; the student starts from its weights). None builds one
            from `network` (SwinIR arguments; default FlexIR's colour-denoising configuration) with
            seed-random weights, which only makes sense for tests and smoke runs.
        images: list of [3, H, W] images in [0, 1] (default: the built-in sample photos).
        sigma: Gaussian noise level (0-255 scale). alpha: eq. 5's weight of L_CA.
        lr: Adam (0.9, 0.999), halved at 20/40/60/80 % of `steps` (the paper's warm-up + decay shape
            is not given; the zoo's loop has step decay).
        Others: as flexops.models.train.train.

    Returns the trained FlexIR in eval mode.
    """
    images = training.images() if images is None else images
    network = dict(dict(img_size=128, window_size=8, depths=[6] * 6, embed_dim=180, num_heads=[6] * 6, mlp_ratio=2,
                        upsampler="", upscale=1, resi_connection="1conv"), **(network or {}))
    torch.manual_seed(seed)
    if teacher is None:
        teacher = SwinIR(**network)
    elif not isinstance(teacher, SwinIR):
        raise ValueError(f"teacher must be a flexops.models.swinir.SwinIR, got {type(teacher).__name__}")
    student = FlexIR.from_swinir(teacher, shared_tail=shared_tail).train()
    model = Distillation(student, teacher)
    dataset = data.NoisyPairs(images, patch_size, sigma, seed)
    config = {"model": "flexir", "network": {k: v for k, v in teacher.config.items() if k != "norm_layer"},
              "shared_tail": shared_tail, "sigma": sigma, "alpha": alpha, "patch_size": patch_size,
              "batch_size": batch_size, "seed": seed}
    num_blocks = student.num_blocks

    def loss_fn(model, batch, step):
        degraded, target = batch
        return model(degraded, target, pointer_schedule(step, steps, num_blocks), alpha)

    trained = training.train(model, loss_fn, dataset, steps=steps, batch_size=batch_size, lr=lr, betas=(0.9, 0.999),
                             checkpoint=checkpoint, save_every=save_every, config=config, num_workers=num_workers,
                             progress=progress, description="FlexIR PSD", precision=precision,
                             find_unused_parameters=True)  # blocks past the scheduled pointer do not run
    return trained.student.eval()
