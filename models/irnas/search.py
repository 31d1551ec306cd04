"""IR-NAS's search and training entry points on gray Gaussian denoising (the zoo's irnas.md, section 6).

- `denoising_pairs`: gray patches (BT.601 luma of RGB images) and their noisy versions at sigma 30,
  50 or 70 (0-255 scale), each item a function of its index.
- `search(...)`: weights-only warm-up (the paper's epochs 1-20 of 100: the first 20 % of the steps),
  then per step one architecture step (Adam on alpha, beta) on a Train A batch and one weight step
  (SGD, cosine learning rate) on a Train W batch; the images are split into Train V (2 %, at least one
  image), Train W and Train A (halves of the rest). Every `eval_every` steps and at the end the
  supernet is evaluated on Train V (64x64 tiles) and the genotype of the best SSIM + PSNR / 100 kept.
- `train(...)`: trains a derived `IRNASNet` with the shared training loop.

    python -m flexops.models.irnas search --steps 1000 --checkpoint irnas_search.pt
    python -m flexops.models.irnas train --search irnas_search.pt --sigma 30 --checkpoint irnas30.pt
"""

import math
from typing import NamedTuple

import torch

from flexops.models import data
from flexops.models import train as training
from flexops.models.irnas.loss import irnas_loss, psnr, ssim
from flexops.models.irnas.network import ILLUSTRATIVE_GENOTYPE, ILLUSTRATIVE_PATH, IRNASNet, check_genotype
from flexops.models.irnas.supernet import SuperNet
from flexops.models.irnas.viterbi import check_path

SIGMAS = (30, 50, 70)
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as Matlab's rgb2gray and OpenCV's BGR2GRAY


def to_gray(image):
    """[3, H, W] RGB -> [1, H, W] luma (BT.601 weights); a [1, H, W] image is returned as it is."""
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must be [3, H, W] (RGB) or [1, H, W] (gray), got {list(image.shape)}")
    if image.shape[0] == 1:
        return image
    return torch.tensordot(torch.tensor(LUMA, dtype=image.dtype), image, dims=1).unsqueeze(0)


def denoising_pairs(images, patch_size=64, sigma=SIGMAS, seed=0, length=None):
    """IR-NAS's data: `data.NoisyPairs` of the gray (`to_gray`) images, items (noisy [1, p, p],
    clean [1, p, p]) with one noise level of `sigma` drawn per item (0-255 scale).

    Example: `noisy, clean = denoising_pairs(data.sample_images(), 64, sigma=50)[0]`.
    """
    return data.NoisyPairs([to_gray(image) for image in images], patch_size, sigma, seed, length)


def split_images(images, val_portion=0.02, seed=0):
    """(Train V, Train W, Train A): a seeded shuffle of `images`, `val_portion` of them (at least one)
    for evaluation and the rest halved (Train W gets the odd one). Needs at least 3 images."""
    images = list(images)
    if len(images) < 3:
        raise ValueError(f"the search needs at least 3 images (Train V, W and A are disjoint), got {len(images)}")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed)).tolist()
    shuffled = [images[k] for k in order]
    n_val = min(max(1, round(val_portion * len(images))), len(images) - 2)
    rest = shuffled[n_val:]
    half = (len(rest) + 1) // 2
    return shuffled[:n_val], rest[:half], rest[half:]


def evaluate(model, images, sigma=SIGMAS, patch_size=64, seed=0, batch_size=16, progress=False):
    """(PSNR dB, SSIM) of `model` on `images` cut into non-overlapping patch_size tiles (the remainder
    dropped), each noisy at every level of `sigma` (noise seeded by `seed`), in eval mode; `progress`
    shows a bar over the batches."""
    device = next(model.parameters()).device
    tiles = []
    for image in images:
        gray = to_gray(image)
        h, w = (gray.shape[1] // patch_size) * patch_size, (gray.shape[2] // patch_size) * patch_size
        if h == 0 or w == 0:
            raise ValueError(f"evaluation image of size {gray.shape[1]}x{gray.shape[2]} is smaller than {patch_size}")
        cut = gray[:, :h, :w].unfold(1, patch_size, patch_size).unfold(2, patch_size, patch_size)
        tiles.append(cut.permute(1, 2, 0, 3, 4).reshape(-1, 1, patch_size, patch_size))
    clean = torch.cat(tiles)
    g = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    outputs, targets = [], []
    levels = data.noise_levels(sigma)
    bar = training.progress_bar(progress, 0, len(levels) * math.ceil(len(clean) / batch_size), "IR-NAS evaluation")
    with torch.no_grad():
        for sigma_value in levels:
            noisy = data.add_noise(clean.expand(-1, 3, -1, -1), sigma_value, g)[:, :1]
            for start in range(0, len(clean), batch_size):
                outputs.append(model(noisy[start:start + batch_size].to(device)).cpu())
                targets.append(clean[start:start + batch_size])
                bar.update(1)
    bar.close()
    model.train(was_training)
    output, target = torch.cat(outputs), torch.cat(targets)
    return psnr(output, target), ssim(output, target).item()


def denoising_loss(net, batch, step=None):
    """Eq. 7's loss of `net` on a batch (noisy, clean), in the training loop's loss_fn form."""
    noisy, clean = batch
    return irnas_loss(net(noisy), clean)


class SearchResult(NamedTuple):
    """What `search` returns: the best evaluated (genotype, path), its PSNR and SSIM on Train V, the
    step of that evaluation, and the supernet at the end of the search (eval mode)."""

    genotype: list
    path: list
    psnr: float
    ssim: float
    step: int
    supernet: SuperNet


def _batch(dataset, batch_size, step, device):
    start = step * batch_size
    items = [dataset[(start + j) % len(dataset)] for j in range(batch_size)]
    return [torch.stack(column).to(device) for column in zip(*items)]


def search(images=None, *, steps=1000, warmup=None, patch_size=64, batch_size=12, sigma=SIGMAS, layers=4, nodes=5,
           width=10, lr=0.025, lr_min=0.001, momentum=0.9, weight_decay=3e-4, arch_lr=1e-3,
           arch_weight_decay=1e-3, val_portion=0.02, eval_every=1000, seed=0, checkpoint=None, save_every=1000,
           progress=True, precision="fp32"):
    """Searches IR-NAS's cell and width path for gray denoising.

    Args:
        images: [3, H, W] RGB or [1, H, W] gray images in [0, 1] (default: the built-in sample photos),
            split by `split_images(images, val_portion, seed)`.
        steps: search steps in all; warmup: the weights-only first steps (default 20 % of `steps`, the
            paper's 20 of 100 epochs). After it, each step is an architecture step then a weight step.
        patch_size, batch_size: 64 and 12 in the paper. sigma: noise level(s), drawn per patch.
        layers, nodes, width: the supernet (paper, denoising: 4, 5, 10).
        lr, lr_min, momentum, weight_decay: SGD on the weights, cosine from lr to lr_min over `steps`.
        arch_lr, arch_weight_decay: Adam on alpha and beta.
        eval_every: steps between evaluations on Train V (also one at the end). seed: weights, split, data.
        checkpoint: resume from and save to this path (every `save_every` steps, at the end, on Ctrl-C).
        progress: show a progress bar. precision: as flexops.models.train.train's.

    Returns a `SearchResult`; `IRNASNet(result.genotype, result.path, width, nodes)` is the derived net.

    Example::

        result = search(steps=50, patch_size=32, batch_size=4, layers=2, nodes=2, width=4)
        net = IRNASNet(result.genotype, result.path, width=4, nodes=2)
    """
    warmup = math.ceil(0.2 * steps) if warmup is None else warmup
    if steps < 0 or not 0 <= warmup <= steps or batch_size < 1 or eval_every < 1 or save_every < 1:
        raise ValueError(f"steps >= 0, 0 <= warmup <= steps, batch_size, eval_every, save_every >= 1 expected; "
                         f"got {steps}, {warmup}, {batch_size}, {eval_every}, {save_every}")
    images = training.images() if images is None else images
    val_images, weight_images, arch_images = split_images(images, val_portion, seed)
    weight_data = denoising_pairs(weight_images, patch_size, sigma, seed=2 * seed)
    arch_data = denoising_pairs(arch_images, patch_size, sigma, seed=2 * seed + 1)
    network = dict(in_chans=1, layers=layers, nodes=nodes, width=width)
    config = {"model": "irnas_supernet", "network": network, "steps": steps, "warmup": warmup,
              "patch_size": patch_size, "batch_size": batch_size, "sigma": list(data.noise_levels(sigma)), "seed": seed,
              "val_portion": val_portion}
    torch.manual_seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = training.Precision(precision, device)
    model = SuperNet(**network).to(device).train()
    weight_optimizer = torch.optim.SGD(model.weight_parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    arch_optimizer = torch.optim.Adam(model.arch_parameters(), lr=arch_lr, weight_decay=arch_weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(weight_optimizer, max(steps, 1), eta_min=lr_min)
    stateful = dict(model=model, weight_optimizer=weight_optimizer, arch_optimizer=arch_optimizer, scheduler=scheduler,
                    **precision.stateful())
    state = training.resume(checkpoint, config, precision.name, **stateful)
    step, best = (0, None) if state is None else (state["step"], state["best"])
    if step < steps:  # the weights' SGD keeps one momentum per weight (alpha and beta's Adam: few)
        training.check_memory(model, denoising_loss, weight_data[0],
                              batch_size, steps - 1, device, optimizer_slots=1, what="IR-NAS search")

    def save(report=False):
        if checkpoint is not None:
            state = dict(training.run_state(step, config, precision.name, **stateful), best=best)
            training.save_checkpoint(checkpoint, state)
            if report:
                contents = training.checkpoint_contents(state)
                training.say(f"IR-NAS search: saved step {step} to {checkpoint} ({contents})")

    def evaluate_and_keep():
        nonlocal best
        value_psnr, value_ssim = evaluate(model, val_images, sigma, patch_size, seed, progress=progress)
        genotype, path = model.genotype()
        if best is None or value_ssim + value_psnr / 100 > best["ssim"] + best["psnr"] / 100:
            best = {"genotype": genotype, "path": path, "psnr": value_psnr, "ssim": value_ssim, "step": step}

    def descend(loss_batch, optimizer):
        with precision.autocast():
            loss = denoising_loss(model, loss_batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss is {loss.item()} at step {step}: stopped without saving; "
                                     "lower the learning rates")
        optimizer.zero_grad(set_to_none=True)
        precision.descend(loss, optimizer)
        return loss.item()

    first = step
    bar = training.progress_bar(progress, first, steps, "IR-NAS search")
    try:
        while step < steps:
            metrics = {}
            if step >= warmup:
                metrics["arch"] = f"{descend(_batch(arch_data, batch_size, step, device), arch_optimizer):.4f}"
            metrics["loss"] = f"{descend(_batch(weight_data, batch_size, step, device), weight_optimizer):.4f}"
            scheduler.step()
            step += 1
            if step % eval_every == 0 and step < steps:
                evaluate_and_keep()
                metrics["best"] = f"{best['psnr']:.2f}dB"
            bar.update(1)
            bar.set_postfix(lr=f"{scheduler.get_last_lr()[0]:.1e}", **metrics)
            if step % save_every == 0 and step < steps:
                save()
    except KeyboardInterrupt:
        bar.close()
        save(report=True)
        raise
    finally:
        bar.close()
    if best is None or best["step"] != step:
        evaluate_and_keep()
    save(report=True)
    model.eval()
    return SearchResult([tuple(pair) for pair in best["genotype"]], list(best["path"]), best["psnr"], best["ssim"],
                        best["step"], model)


def train(images=None, *, genotype=ILLUSTRATIVE_GENOTYPE, path=ILLUSTRATIVE_PATH, width=10, nodes=5, sigma=30,
          steps=1000, patch_size=64, batch_size=12, lr=1e-3, seed=0, checkpoint=None, save_every=1000,
          num_workers=0, progress=True, precision="fp32"):
    """Trains a derived IR-NAS network for gray denoising at noise level(s) `sigma` (the paper: one
    model per level) with eq. 7's loss, on the zoo's training loop (Adam, betas (0.9, 0.999), the
    learning rate halved at 20/40/60/80 % of `steps`).

    Args:
        images: as `search` (default: the built-in sample photos), all used for training.
        genotype, path, width, nodes: the network (`IRNASNet`); default the illustrative genotype.
        sigma: a noise level or a sequence of them (0-255). Others: as flexops.models.train.train.

    Returns the trained IRNASNet in eval mode. Reading: the paper trains with "Adam, initial lr 0.05"
    (600k steps, batch 12); lr 0.05 diverges with Adam, so the default is Adam's usual 1e-3.

    Example: `net = train(genotype=result.genotype, path=result.path, sigma=50, steps=600_000)`.
    """
    images = training.images() if images is None else images
    dataset = denoising_pairs(images, patch_size, sigma, seed=seed)
    network = dict(genotype=[list(pair) for pair in check_genotype(genotype, nodes)], path=check_path(path),
                   width=width, nodes=nodes, in_chans=1)
    torch.manual_seed(seed)
    model = IRNASNet(**network)
    config = {"model": "irnas", "network": network, "sigma": list(data.noise_levels(sigma)), "patch_size": patch_size,
              "batch_size": batch_size, "seed": seed}

    return training.train(model, denoising_loss, dataset, steps=steps, batch_size=batch_size, lr=lr, betas=(0.9, 0.999),
                          checkpoint=checkpoint, save_every=save_every, config=config, num_workers=num_workers,
                          progress=progress, description="IR-NAS train", precision=precision)
