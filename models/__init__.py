"""The flexops model zoo: networks of the published methods, built on flexops layers.

`create(name, **kwargs)` builds a network by name, `list_models()` lists the names. Methods:
- `cresmd`: CResMD (He et al., ECCV 2020), the controllable supernet TASNet searches in.
- `swinir`: SwinIR (Liang et al., ICCVW 2021) on the fused window attention; official checkpoints
  load (`swinir.load_official`) and its state_dicts load into the official code.
- `flexir`: FlexIR: SwinIR with an exit branch per residual group, a pointer, adaptive per-region
  early exit (`FlexIR.adaptive`), the paper's cost counting (`flexir.cost`) and its training.
- `tasnet`: TASNet (Kim et al., ICCV 2021): the search form `TASNet`, `search(...)`, and the deploy
  form `TASNetDeploy`, which runs M task vectors on one image through `flexops.ops.masked_conv2d`.
- `irnas`: IR-NAS (Zhang et al.): the ops with DCNv2, `SuperNet`, `viterbi`, the derived `IRNASNet`, `search(...)`.
- `tunable`: Tunable Convolutions (Maggioni et al., CVPR 2023): `TunableEDSR`, `TunableNAFNet`,
  `TunableStyleNet` (`net(x, omega)`, `net.bake(omega)`), the parametric multi-loss, `train(...)`.
Shared by every method: `data` (images, degradations, task vectors, patch datasets), `train` (the
training loop with progress, checkpoints and torchrun support), `checks` (input checks), `cli` (the
command lines). docs/design.md, "Where things live", maps each method to its files.
"""

from flexops.models import cresmd, flexir, irnas, swinir, tasnet, tunable
from flexops.models.registry import create, list_models, register
from flexops.models.load import detect, load

__all__ = ["create", "cresmd", "flexir", "irnas", "list_models", "register", "swinir", "tasnet", "tunable"]
