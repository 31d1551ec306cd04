"""IR-NAS (Zhang et al., "IR-NAS: Neural Architecture Search for Image Restoration", arXiv 1909.08228 v1;
later HiNAS): a searched cell (which op on which edge) stacked along a searched width path.

- `OPS`: the six candidate ops ("conv", "sep", "dil", "def" = DCNv2 on flexops.ops.deform_conv2d,
  "skip", "none"), `OPS[name](C, affine)`.
- `SuperNet`: supercells of softmax-weighted mixed ops (alpha shared by all cells) on a W/2W/4W
  trellis with routers mixed by beta (transition probabilities); `genotype()` -> (cell, path).
- `viterbi(beta)`: the most probable width path.
- `IRNASNet(genotype, path, width, nodes, in_chans)`: the derived network (cells on the path, ASPP).
- `log_ssim_loss`, `irnas_loss` (MSE + 0.5 log10(1 / SSIM)), `ssim`.
- `search(...)`, `train(...)`: gray denoising at sigma 30/50/70 on folder images or the sample photos.

    python -m flexops.models.irnas search --steps 1000 --checkpoint irnas_search.pt
    python -m flexops.models.irnas train --search irnas_search.pt --sigma 50 --checkpoint irnas50.pt

>>> from flexops.models import irnas
>>> net = irnas.IRNASNet()        # the illustrative genotype, path (0, 1, 2, 2): 612,397 parameters
>>> y = net(torch.rand(1, 1, 321, 481))
"""

from flexops.models.irnas.loss import irnas_loss, log_ssim_loss, psnr, ssim
from flexops.models.irnas.network import ILLUSTRATIVE_GENOTYPE, ILLUSTRATIVE_PATH, IRNASNet, check_genotype
from flexops.models.irnas.ops import OP_NAMES, OPS
from flexops.models.irnas.search import denoising_pairs, SearchResult, evaluate, search, split_images, to_gray, train
from flexops.models.irnas.supernet import MixedOp, SuperCell, SuperNet, cell_genotype, num_edges
from flexops.models.irnas.viterbi import beta_rows, check_path, viterbi

__all__ = ["ILLUSTRATIVE_GENOTYPE", "ILLUSTRATIVE_PATH", "IRNASNet", "MixedOp", "OPS", "OP_NAMES", "denoising_pairs",
           "SearchResult", "SuperCell", "SuperNet", "beta_rows", "cell_genotype", "check_genotype", "check_path",
           "evaluate", "irnas_loss", "log_ssim_loss", "num_edges", "psnr", "search", "split_images", "ssim",
           "to_gray", "train", "viterbi"]
