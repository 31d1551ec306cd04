"""The flexops model zoo: networks of the published methods, built on flexops layers.

`create(name, **kwargs)` builds a network by name, `list_models()` lists the names. Methods:
- `cresmd`: CResMD (He et al., ECCV 2020), the controllable supernet TASNet searches in.
- `tasnet`: TASNet (Kim et al., ICCV 2021): the search form `TASNet`, `search(...)`, and the deploy
  form `TASNetDeploy`, which runs M task vectors on one image through `flexops.ops.masked_conv2d`.
- `irnas`: IR-NAS (Zhang et al.): the ops with DCNv2, `SuperNet`, `viterbi`, the derived `IRNASNet`, `search(...)`.
- `tunable`: Tunable Convolutions (Maggioni et al., CVPR 2023): `TunableEDSR`, `TunableNAFNet`,
  `TunableStyleNet` (`net(x, omega)`, `net.bake(omega)`), the parametric multi-loss, `train(...)`.
Shared by every method: `data` (images, degradations, task vectors), `train` (the training loop
with progress, checkpoints and torchrun support).
"""

from flexops.models import cresmd, tasnet
from flexops.models import irnas
from flexops.models import tunable
from flexops.models.registry import create, list_models, register

__all__ = ["create", "cresmd", "irnas", "list_models", "register", "tasnet", "tunable"]
