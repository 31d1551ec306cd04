"""The adversarial term of the x4 SR experiment: a relativistic average GAN (RaGAN, as ESRGAN) with a
VGG-style discriminator, trained beside the tunable network by the zoo's training loop.

The paper gives L_gan = 0.01 L_rec + L_vgg + 0.005 L_adv with L_adv "relativistic" and a
discriminator "similar to ESRGAN's ... 4 scales ... a pooling operator before the final fully-connected
layer" (arbitrary resolution), no exact layers. Readings chosen (docs/zoo/tunable.md, section 2):
- the discriminator: ESRGAN's VGG-style stack (3x3 conv, then 4x4 stride-2 conv, BatchNorm and
  LeakyReLU 0.2 per stage) with four stride-2 stages (the "4 scales"), global average pooling, then
  Linear(512, 100), LeakyReLU, Linear(100, 1);
- its loss is not weighted by omega (the multi-loss weights the generator's objectives); real and
  fake images go through it as one batch, so BatchNorm normalises them together;
- the gradients flow through both batch means of the relativistic logits (the textbook RaGAN;
  ESRGAN's code detaches the other side's mean);
- Adam, learning rate 1e-4, betas (0.9, 0.999), one discriminator step after every network step.
"""

import torch
import torch.nn.functional as F
from torch import nn

from flexops.nn.dense import Conv2d, Linear


class Discriminator(nn.Module):
    """ESRGAN-style discriminator for images of any size: [B, 3, H, W] in [0, 1] -> [B] logits.

    Args:
        in_chans: image channels. width: channels of the first stage (doubled per stage up to 8x).

    >>> Discriminator()(torch.rand(4, 3, 96, 96)).shape
    torch.Size([4])
    """

    def __init__(self, in_chans=3, width=64):
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width]
        layers = [Conv2d(in_chans, width, 3, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        previous = width
        for i, channels in enumerate(widths):
            if i > 0:  # the first stage keeps the first conv's width
                layers += [Conv2d(previous, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                           nn.LeakyReLU(0.2, inplace=True)]
            layers += [Conv2d(channels, channels, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(channels),
                       nn.LeakyReLU(0.2, inplace=True)]
            previous = channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(Linear(previous, 100), nn.LeakyReLU(0.2, inplace=True), Linear(100, 1))

    def forward(self, x):
        if x.dim() != 4 or x.shape[-1] < 16 or x.shape[-2] < 16:
            raise ValueError(f"x must be [B, C, H, W] with H, W >= 16 (four stride-2 stages); got {list(x.shape)}")
        return self.classifier(self.features(x).mean((2, 3))).squeeze(1)


def relativistic_logits(real, fake):
    """RaGAN's logits: each real image against the mean fake one and each fake against the mean real."""
    return real - fake.mean(), fake - real.mean()


class RelativisticAdversary:
    """The RaGAN term and its discriminator, a companion of `flexops.models.train.train`.

    `generator_loss(fake, real)` gives the network's adversarial loss per image and remembers the
    pair; the loop then calls `after_step()`, which takes the discriminator's step on that pair.
    `state_dict` / `load_state_dict` put the discriminator and its optimiser in the run's checkpoint.

    Args:
        discriminator: default `Discriminator()`. lr, betas: its Adam's settings.
    """

    def __init__(self, discriminator=None, lr=1e-4, betas=(0.9, 0.999)):
        self.discriminator = Discriminator() if discriminator is None else discriminator
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=betas)
        self._runner = self.discriminator  # the DDP wrapper under torchrun (see `to`)
        self._pair = None

    def to(self, device, distributed=False):
        """Moves the discriminator to the rank's device; `distributed`: its gradients are averaged
        over the ranks (DistributedDataParallel), as the network's are."""
        self.discriminator.to(device).train()
        if distributed:
            self._runner = nn.parallel.DistributedDataParallel(self.discriminator)
        return self

    def generator_loss(self, fake, real):
        """[B]: the network's RaGAN loss per image (fakes should read as more real than the reals)."""
        self.discriminator.requires_grad_(False)  # this term trains the network, not the discriminator
        try:
            logits = self.discriminator(torch.cat([real, fake]))
        finally:
            self.discriminator.requires_grad_(True)
        real_logits, fake_logits = logits.split([real.shape[0], fake.shape[0]])
        as_real, as_fake = relativistic_logits(real_logits.detach(), fake_logits)
        self._pair = (fake.detach(), real)
        return 0.5 * (F.binary_cross_entropy_with_logits(as_real, torch.zeros_like(as_real), reduction="none")
                      + F.binary_cross_entropy_with_logits(as_fake, torch.ones_like(as_fake), reduction="none"))

    def discriminator_loss(self, fake, real):
        """The discriminator's RaGAN loss on a batch (reals should read as more real than the fakes)."""
        logits = self._runner(torch.cat([real, fake]))
        as_real, as_fake = relativistic_logits(*logits.split([real.shape[0], fake.shape[0]]))
        return 0.5 * (F.binary_cross_entropy_with_logits(as_real, torch.ones_like(as_real))
                      + F.binary_cross_entropy_with_logits(as_fake, torch.zeros_like(as_fake)))

    def after_step(self):
        """The discriminator's step on the pair the last generator_loss saw; returns its loss as
        {"L_D": value} for the progress bar ({} when no pair was seen)."""
        if self._pair is None:
            return {}
        fake, real = self._pair
        self._pair = None
        loss = self.discriminator_loss(fake, real)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"L_D": loss.item()}

    def state_dict(self):
        return {"discriminator": self.discriminator.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])
