"""Tunable Convolutions with Parametric Multi-Loss Optimization (Maggioni et al., CVPR 2023).

One network whose behaviour the user tunes at inference with omega in [0, 1]^p, trained with a loss
whose weights are the same omega (the zoo's tunable.md):
- networks, each `net(x, omega)` with omega [p] (one setting for the batch) or [B, p] (per image):
  `TunableEDSR` (the paper's ResNet), `TunableNAFNet`, `TunableStyleNet`, `TunableSwinIR` (+
  `TunableSwinIR.from_swinir`); `net.bake(omega)` returns the plain twin (`EDSRNet`, `NAFNet`,
  `StyleNet`, the zoo's `SwinIR`) holding the blended weights;
- `ParametricMultiLoss` (eq. 7), `sample_omega`, the experiments' objectives (loss.py);
- `train(experiment, network, ...)`, also `python -m flexops.models.tunable train`.

A network computes every layer's alpha once per forward (`flexops.nn.tunable.Alphas`) and checks
its input and omega once: the layers skip their per-call checks. New architectures reuse core.py
(`Layers`, `TunableNetwork`), one file each.

Not here yet: the RaGAN adversarial term of the x4 SR objective (the shared training loop has one
optimiser, a GAN needs the discriminator's too).

>>> from flexops.models.tunable import TunableEDSR
>>> net = TunableEDSR()                                            # 2,370,642 parameters
>>> y = net(torch.rand(1, 3, 64, 64), torch.tensor([0.5, 0.5]))   # halfway between the objectives
>>> plain = net.bake(torch.tensor([0.5, 0.5]))                     # nn.Conv2d layers: plain(x) == y
"""

from flexops.models.tunable.core import Layers, TunableNetwork
from flexops.models.tunable.edsr import EDSRNet, TunableEDSR
from flexops.models.tunable.loss import ParametricMultiLoss, sample_omega
from flexops.models.tunable.nafnet import NAFNet, TunableNAFNet
from flexops.models.tunable.style import StyleNet, TunableStyleNet
from flexops.models.tunable.swinir import TunableSwinIR
from flexops.models.tunable.train import EXPERIMENTS, TunablePairs, train

__all__ = ["EDSRNet", "EXPERIMENTS", "Layers", "NAFNet", "ParametricMultiLoss", "StyleNet", "TunableEDSR",
           "TunableNAFNet", "TunableNetwork", "TunablePairs", "TunableStyleNet", "TunableSwinIR", "sample_omega",
           "train"]
