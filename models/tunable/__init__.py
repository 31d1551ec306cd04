"""Tunable Convolutions with Parametric Multi-Loss Optimization (Maggioni et al., CVPR 2023).

One network whose behaviour the user tunes at inference with omega in [0, 1]^p, trained with a loss
whose weights are the same omega (the zoo's tunable.md):
- networks, each `net(x, omega)` with omega [p] (one setting for the batch) or [B, p] (per image):
  `TunableEDSR` (the paper's ResNet), `TunableNAFNet`, `TunableStyleNet`, `TunableSwinIR` (+
  `TunableSwinIR.from_swinir`); `net.bake(omega)` returns the plain twin (`EDSRNet`, `NAFNet`,
  `StyleNet`, the zoo's `SwinIR`) holding the blended weights;
- `ParametricMultiLoss` (eq. 7), `sample_omega`, the experiments' objectives (loss.py), the x4 SR
  experiment's RaGAN term and discriminator (`Discriminator`, `RelativisticAdversary`, adversarial.py);
- `train(experiment, network, ...)`, also `python -m flexops.models.tunable train`.

Without autograd, a shared omega given twice in a row runs a baked twin the network keeps (identical
outputs, the plain network's cost; see `TunableNetwork.forward`).

A network computes every layer's alpha once per forward (`flexops.nn.tunable.Alphas`) and checks
its input and omega once: the layers skip their per-call checks. New architectures reuse core.py
(`Layers`, `TunableNetwork`), one file each.

>>> from flexops.models.tunable import TunableEDSR
>>> net = TunableEDSR()                                            # 2,370,642 parameters
>>> y = net(torch.rand(1, 3, 64, 64), torch.tensor([0.5, 0.5]))   # halfway between the objectives
>>> plain = net.bake(torch.tensor([0.5, 0.5]))                     # nn.Conv2d layers: plain(x) == y
"""

from flexops.models.tunable.adversarial import Discriminator, RelativisticAdversary
from flexops.models.tunable.core import Layers, TunableNetwork
from flexops.models.tunable.edsr import EDSRNet, TunableEDSR
from flexops.models.tunable.loss import ParametricMultiLoss, sample_omega
from flexops.models.tunable.nafnet import NAFNet, TunableNAFNet
from flexops.models.tunable.style import StyleNet, TunableStyleNet
from flexops.models.tunable.swinir import TunableSwinIR
from flexops.models.tunable.train import EXPERIMENTS, TunablePairs, train

__all__ = ["Discriminator", "EDSRNet", "EXPERIMENTS", "Layers", "NAFNet", "ParametricMultiLoss",
           "RelativisticAdversary", "StyleNet", "TunableEDSR", "TunableNAFNet", "TunableNetwork", "TunablePairs",
           "TunableStyleNet", "TunableSwinIR", "sample_omega", "train"]
