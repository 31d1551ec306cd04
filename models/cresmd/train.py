"""CResMD's training: l1 against the clean patch on CResMD's degradations (the zoo's tasnet.md, section 2)."""

import torch
import torch.nn.functional as F

from flexops.models import data
from flexops.models import train as training
from flexops.models.cresmd.network import CResMD


def l1_loss(model, batch, step=None):
    """CResMD's objective: l1 between the restored patch and its target."""
    degraded, target, tasks = batch
    return F.l1_loss(model(degraded, tasks), target)


def train(images=None, *, steps=1000, patch_size=64, batch_size=16, lr=5e-4, nf=64, nb=32, seed=0,
          checkpoint=None, save_every=1000, num_workers=0, progress=True, precision="fp32"):
    """Trains CResMD the official way: l1 loss against the clean patch (absolute ground truth), CResMD's
    degradation sampling (flexops.models.data.sample_level_cresmd), Adam (0.9, 0.99), halving the
    learning rate at 20/40/60/80 % of `steps` (the official run: 1M steps, batch 16, patch 64).

    Args:
        images: list of [3, H, W] images in [0, 1] (default: the built-in sample photos).
        nf, nb: network width and depth (official: 64, 32). seed: weights and data stream.
        Others: as flexops.models.train.train. Returns the trained CResMD in eval mode.

    Example: `train(data.load_folder("DIV2K_sub"), steps=1_000_000, checkpoint="cresmd.pt")`, or
    `python -m flexops.models.cresmd train --data DIV2K_sub --steps 1000000 --checkpoint cresmd.pt`.
    """
    images = training.images() if images is None else images
    dataset = data.RestorationPairs(images, patch_size, relative=False, seed=seed)
    torch.manual_seed(seed)
    network = dict(nf=nf, nb=nb)
    model = CResMD(**network)
    config = {"model": "cresmd", "network": network, "patch_size": patch_size, "batch_size": batch_size, "seed": seed}
    return training.train(model, l1_loss, dataset, steps=steps, batch_size=batch_size, lr=lr, checkpoint=checkpoint,
                          save_every=save_every, config=config, num_workers=num_workers, progress=progress,
                          description="CResMD", precision=precision)
