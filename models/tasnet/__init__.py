"""TASNet (Kim et al., "Searching for Controllable Image Restoration Networks", ICCV 2021).

Package: network.py (the search form), controller.py (its heads), deploy.py (the deploy form),
search.py (the search), __main__.py (the command line); the cost counting is CResMD's chain cost,
`flexops.models.cresmd.cost` (also reachable as `tasnet.cost`).

- `TASNet`: the search form (gated CResMD supernet + controller, eqs. 3-10); `search(...)` runs it.
- `TASNetDeploy`: the deploy form, M task vectors on one image with the shared part run once and every
  task-specific layer one `flexops.ops.masked_conv2d` call; `TASNet.deploy()` or
  `TASNetDeploy.from_widths(cresmd, n_shared, ta_width, ts_width)`.

    python -m flexops.models.tasnet search --steps 1000 --checkpoint tasnet.pt
    python -m flexops.models.tasnet restore --checkpoint tasnet.pt --image photo.png --out restored/

>>> from flexops.models import cresmd, data, tasnet
>>> deploy = tasnet.TASNetDeploy.from_widths(cresmd.CResMD(), 42, 32, 18)
>>> outputs = deploy(torch.rand(1, 3, 320, 480), data.CRESMD_27_TASKS)     # [27, 3, 320, 480]
"""

from flexops.models.cresmd import cost
from flexops.models.tasnet.controller import Controller
from flexops.models.tasnet.deploy import TASNetDeploy
from flexops.models.tasnet.network import SearchOutput, TASNet, agreement_regularizer, flops_regularizer, gate
from flexops.models.tasnet.search import search, search_loss

__all__ = ["Controller", "SearchOutput", "TASNet", "TASNetDeploy", "agreement_regularizer", "flops_regularizer",
           "gate", "search", "search_loss"]
