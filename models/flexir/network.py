"""FlexIR's network: SwinIR whose residual groups are B-RSTBs (RSTB + exit branch), with a pointer.

FlexIR(..., shared_tail=False) takes SwinIR's constructor arguments. Exit branch j is SwinIR's
reconstruction tail (norm, conv_after_body, upsampler modules, conv_last) applied to the output of
RSTB j: `branches.{j}.*` (6 separate branches, the spec's default reading of Fig. 2b), or with
shared_tail=True the single tail under SwinIR's own names (the reading that explains Table 3's
"Adaptive* 11.46M"). forward(x, pointer=P) runs the head, RSTB 1..P and exit branch P only.
"""

import copy

from torch import nn

from flexops.models import checks
from flexops.models.registry import register
from flexops.models.swinir import Reconstruction, SwinIR, official_state_dict

TAIL_MODULES = ("norm", "conv_after_body", "conv_before_upsample", "upsample", "conv_up1", "conv_up2", "conv_hr",
                "conv_last", "lrelu")


class ExitBranch(Reconstruction, nn.Module):
    """One exit: SwinIR's tail with its names (norm, conv_after_body, ..., conv_last)."""

    def __init__(self, embed_dim, num_out_ch, upscale, upsampler, resi_connection, norm_layer, num_feat=64):
        super().__init__()
        self.build_tail(embed_dim, num_out_ch, upscale, upsampler, resi_connection, norm_layer, num_feat)

    def forward(self, tokens, x_first, x):
        return self.reconstruct(tokens, x_first, x)


@register("flexir")
class FlexIR(SwinIR):
    """FlexIR(**SwinIR arguments, shared_tail=False).

    Args:
        *args, **kwargs: SwinIR's constructor arguments (flexops.models.swinir.SwinIR).
        shared_tail: False (the paper's): one exit branch per B-RSTB, each SwinIR's tail (norm,
            conv_after_body, the reconstruction); True: one tail shared by every exit, with SwinIR's names.

    FlexIR's configuration (paper section 4.1): img_size 128, window_size 8, depths [6] * 6,
    embed_dim 180, num_heads [6] * 6, mlp_ratio 2, upsampler "", upscale 1 (colour denoising); the
    JPEG models use in_chans 1, window_size 7, img_size 126, img_range 255.

    forward(x [B, C, H, W], pointer=None) -> [B, C, H * s, W * s]: head, RSTB 1..pointer, exit branch
    `pointer` (default: all blocks; then, with a SwinIR's weights, the output is that SwinIR's).

    >>> net = FlexIR(img_size=16, embed_dim=12, depths=[2] * 6, num_heads=[2] * 6, window_size=4,
    ...              mlp_ratio=2, upscale=1)
    >>> y = net(torch.rand(1, 3, 16, 16), pointer=3)
    >>> out, exits = net.adaptive(torch.rand(1, 3, 32, 32), threshold=1.1)   # see flexir.inference
    """

    def __init__(self, *args, shared_tail=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.shared_tail = shared_tail
        if not shared_tail:
            for name in TAIL_MODULES:  # SwinIR's tail gives way to the branches
                if hasattr(self, name):
                    delattr(self, name)
            config = self.config
            template = ExitBranch(self.embed_dim, self.in_chans, self.upscale, self.upsampler,
                                  config["resi_connection"], config["norm_layer"], config["num_feat"])
            # Each branch starts as its own copy of one initialised tail (as from_swinir does).
            self.branches = nn.ModuleList([copy.deepcopy(template) for _ in self.layers])

    @property
    def num_blocks(self):
        return len(self.layers)

    def branch(self, index):
        """Exit branch of B-RSTB index + 1 (0-based index): a module with `reconstruct`."""
        return self if self.shared_tail else self.branches[index]

    def exit(self, index, tokens, x_first, x):
        """Exit branch index + 1 on the deep features (called as a module when it is one, so hooks see it)."""
        if self.shared_tail:
            return self.reconstruct(tokens, x_first, x)
        return self.branches[index](tokens, x_first, x)

    def check_pointer(self, pointer, name="pointer"):
        """pointer, an int in [1, num_blocks] (None: the last block)."""
        return checks.pointer(pointer, self.num_blocks, name)

    def forward(self, x, pointer=None):
        pointer = self.check_pointer(pointer)
        checks.image_batch(x, self.in_chans)
        height, width = x.shape[-2:]
        x, x_first, tokens = self.head(x)
        for layer in self.layers[:pointer]:
            tokens = layer(tokens)
        return self.finish(self.exit(pointer - 1, tokens, x_first, x), height, width)

    def exits(self, x, depth=None):
        """Training view: the outputs of exits 1..depth and the deep features after RSTB 1..depth.

        Returns (outputs, features): lists of [B, C, H * s, W * s] and [B, embed_dim, H', W'] (H', W'
        padded to the window)."""
        depth = self.check_pointer(depth, "depth")
        checks.image_batch(x, self.in_chans)
        height, width = x.shape[-2:]
        x, x_first, tokens = self.head(x)
        outputs, features = [], []
        for j in range(depth):
            tokens = self.layers[j](tokens)
            features.append(tokens.permute(0, 3, 1, 2))
            outputs.append(self.finish(self.exit(j, tokens, x_first, x), height, width))
        return outputs, features

    def adaptive(self, x, threshold=1.1, ref="first", regions=4, max_pointer=None, mode="crop"):
        """Algorithm 2, adaptive inference: see flexops.models.flexir.inference.adaptive."""
        from flexops.models.flexir.inference import adaptive

        return adaptive(self, x, threshold, ref, regions, max_pointer, mode)

    @classmethod
    def from_swinir(cls, swinir, shared_tail=False):
        """A FlexIR with a (trained) SwinIR's weights: the trunk as is, every exit branch a copy of its
        tail. With pointer = all blocks it computes what the SwinIR computes."""
        if not isinstance(swinir, SwinIR):
            raise ValueError(f"swinir must be a flexops.models.swinir.SwinIR, got {type(swinir).__name__}")
        parameter = next(swinir.parameters())
        model = cls(**swinir.config, shared_tail=shared_tail).to(parameter.device, parameter.dtype)
        model.load_swinir_state_dict(swinir.state_dict())
        return model.train(swinir.training)

    def load_swinir_state_dict(self, state_dict):
        """Loads a SwinIR state_dict (official checkpoints too, wrapped or not) strictly: the tail's
        entries go to every exit branch."""
        state_dict = dict(official_state_dict(state_dict))
        if not self.shared_tail:
            tail = {key: state_dict.pop(key) for key in list(state_dict) if key.split(".")[0] in TAIL_MODULES}
            for j in range(self.num_blocks):
                state_dict.update({f"branches.{j}.{key}": value for key, value in tail.items()})
        self.load_state_dict(state_dict, strict=True)
        return self
