"""TASNet's search entry point: supernet and controller trained jointly on eq. 8 (the zoo's tasnet.md, 3.2)."""

import torch
import torch.nn.functional as F

from flexops.models import data
from flexops.models import train as training
from flexops.models.tasnet.network import TASNet

# Not in the paper (its supplementary holds them): the zoo's readings. R1 is normalised to 1 for all
# of CResMD per task and R2 to the mean disagreement per gate, so both weights are scale-free.
LAMBDA_FLOPS, LAMBDA_AGREEMENT = 0.05, 0.05


def search_loss(lambda_flops, lambda_agreement):
    """Eq. 8 for a batch (degraded, target, tasks): l1 + lambda1 R1 + lambda2 R2."""

    def loss(model, batch, step=None):
        degraded, target, tasks = batch
        out = model(degraded, tasks)
        l1 = F.l1_loss(out.image, target)
        total = l1 + lambda_flops * out.flops + lambda_agreement * out.agreement
        return total, {"l1": l1.item(), "R1": out.flops.item(), "shared": int(out.shared.long().cumprod(0).sum())}

    return loss


def search(images=None, *, steps=1000, patch_size=64, batch_size=16, lr=5e-4, lambda_flops=LAMBDA_FLOPS,
           lambda_agreement=LAMBDA_AGREEMENT, share=True, gamma=0.9, momentum=0.99, nf=64, nb=32, seed=0,
           checkpoint=None, save_every=1000, num_workers=0, progress=True, precision="fp32"):
    """Searches TASNet: trains the CResMD supernet and the controller together on relative ground truth
    (eq. 11: input degraded at l_in, target at l_gt <= l_in, task = l_in - l_gt).

    Args:
        images: list of [3, H, W] images in [0, 1] (default: the built-in sample photos).
        lambda_flops, lambda_agreement: eq. 8's lambda1 (R1, FLOPs) and lambda2 (R2, agreement).
        share: False searches TSNet (no forced sharing). gamma, momentum: see TASNet.
        nf, nb: the supernet (official: 64, 32). seed: weights and data stream.
        Others: as flexops.models.train.train (CResMD's optimiser and schedule).

    Returns the searched TASNet in eval mode; `.deploy()` gives its deploy form.

    Example: `deploy = search(steps=100_000, checkpoint="tasnet.pt").deploy()`, or
    `python -m flexops.models.tasnet search --steps 100000 --checkpoint tasnet.pt`.
    """
    images = training.images() if images is None else images
    dataset = data.RestorationPairs(images, patch_size, relative=True, seed=seed)
    network = dict(nf=nf, nb=nb, share=share, gamma=gamma, momentum=momentum)
    torch.manual_seed(seed)
    model = TASNet(**network)
    config = {"model": "tasnet", "network": network, "lambda_flops": lambda_flops,
              "lambda_agreement": lambda_agreement, "patch_size": patch_size, "batch_size": batch_size, "seed": seed}
    return training.train(model, search_loss(lambda_flops, lambda_agreement), dataset, steps=steps,
                          batch_size=batch_size, lr=lr, checkpoint=checkpoint, save_every=save_every, config=config,
                          num_workers=num_workers, progress=progress, description="TASNet search",
                          precision=precision)
