"""load: a checkpoint people already have -> the zoo network it fits, hyper-parameters read off its
keys and shapes.

Recognised: official and spandrel-style SwinIR (every upsampler, 1 or 3 channels, any window), NAFNet,
CResMD, the zoo's own training checkpoints (models/train.py), and the zoo's plain EDSR. Release files'
{"params"} / {"params_ema"} wrappers are unwrapped (params_ema first, as the official test scripts);
SwinIR's stored attn_mask and relative_position_index are checked by the zoo's SwinIR and dropped.
What a state_dict cannot tell (SwinIR's img_range) is guessed, said so in the description, and taken
from the keyword overrides.

>>> net = load("001_classicalSR_DF2K_s64w8_SwinIR-M_x2.pth")
>>> print(detect("001_classicalSR_DF2K_s64w8_SwinIR-M_x2.pth"))   # what was found, one line
>>> jpeg = load("006_CAR_DFWB_s126w7_SwinIR-M_jpeg10.pth", img_range=255.0)
"""

import dataclasses
import logging
import math
import os
import re

from flexops.models import registry, swinir, train
from flexops.models.cresmd.network import CResMD
from flexops.models.tunable.edsr import EDSRNet
from flexops.models.tunable.nafnet import NAFNet
from flexops.ops import ArgumentError

log = logging.getLogger("flexops.models")

LOOKED_FOR = ("a flexops zoo checkpoint (keys format, config, model); SwinIR (conv_first, "
              "layers.*.residual_group.blocks.*.attn.relative_position_bias_table); NAFNet (intro, encoders.*, "
              "middle_blks.*, ending); CResMD (conv_first, recon_trunk.*.local_scale, global_scale); the zoo's EDSR "
              "(head, body.*.conv1, tail)")


@dataclasses.dataclass
class Detection:
    """What `detect` found: the network's name, its constructor and settings, and notes on guesses."""

    name: str
    constructor: object
    settings: dict
    notes: tuple = ()

    def __str__(self):
        settings = ", ".join(f"{key}={value!r}" for key, value in self.settings.items())
        return f"{self.name}({settings})" + "".join(f"; {note}" for note in self.notes)


def _count(state_dict, pattern):
    """How many distinct indices `pattern` (a regex with one group of digits) matches in the keys."""
    return len({match.group(1) for key in state_dict if (match := re.fullmatch(pattern, key))})


def _counts(state_dict, prefix):
    """Blocks per level: [count of `prefix`.i.j.* over j, for i = 0, 1, ...]."""
    levels = _count(state_dict, rf"{prefix}\.(\d+)\..*")
    return [_count(state_dict, rf"{prefix}\.{i}\.(\d+)\..*") for i in range(levels)]


def _swinir(sd):
    embed_dim, in_chans = sd["conv_first.weight"].shape[:2]
    depths = [_count(sd, rf"layers\.{i}\.residual_group\.blocks\.(\d+)\..*")
              for i in range(_count(sd, r"layers\.(\d+)\..*"))]
    tables = [sd[f"layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table"] for i in range(len(depths))]
    window_size = (math.isqrt(tables[0].shape[0]) + 1) // 2
    first = "layers.0.residual_group.blocks.0."
    settings = dict(in_chans=in_chans, embed_dim=embed_dim, depths=depths, num_heads=[t.shape[1] for t in tables],
                    window_size=window_size, mlp_ratio=sd[first + "mlp.fc1.weight"].shape[0] / embed_dim,
                    qkv_bias=first + "attn.qkv.bias" in sd, patch_norm="patch_embed.norm.weight" in sd,
                    resi_connection="1conv" if "conv_after_body.weight" in sd else "3conv")
    settings.update(_swinir_tail(sd, embed_dim, in_chans))
    settings["img_size"] = _swinir_img_size(sd, window_size)
    if "absolute_pos_embed" in sd:
        settings["ape"] = True
    jpeg = window_size == 7 and settings["upsampler"] == ""
    settings["img_range"] = 255.0 if jpeg else 1.0
    notes = (f"img_range={settings['img_range']} guessed (255 for window 7 without upsampler: the official JPEG "
             "models), pass img_range= to change it",)
    return Detection("swinir", swinir.SwinIR, settings, notes)


def _swinir_tail(sd, embed_dim, in_chans):
    """upsampler, upscale and num_feat from the tail's layers."""
    if "conv_up1.weight" in sd:
        return dict(upsampler="nearest+conv", upscale=4, num_feat=sd["conv_up1.weight"].shape[0])
    if "conv_before_upsample.0.weight" in sd:
        num_feat = sd["conv_before_upsample.0.weight"].shape[0]
        factors = [2 if sd[f"upsample.{i}.weight"].shape[0] == 4 * num_feat else 3
                   for i in range(0, 2 * _count(sd, r"upsample\.(\d+)\.weight"), 2)]
        return dict(upsampler="pixelshuffle", upscale=math.prod(factors), num_feat=num_feat)
    if "upsample.0.weight" in sd:
        return dict(upsampler="pixelshuffledirect", upscale=math.isqrt(sd["upsample.0.weight"].shape[0] // in_chans))
    return dict(upsampler="", upscale=1)


def _swinir_img_size(sd, window_size):
    """The training patch size: from the stored shift mask's window count or the absolute position
    embedding, else 64 (the official default; it only sets the size of the mask written back)."""
    if "absolute_pos_embed" in sd:
        return math.isqrt(sd["absolute_pos_embed"].shape[1])
    mask = next((value for key, value in sd.items() if key.endswith("attn_mask")), None)
    return 64 if mask is None else math.isqrt(mask.shape[0]) * window_size


def _nafnet(sd):
    width, img_channel = sd["intro.weight"].shape[:2]
    return Detection("nafnet", NAFNet, dict(
        width=width, enc_blk_nums=_counts(sd, "encoders"), middle_blk_num=_count(sd, r"middle_blks\.(\d+)\..*"),
        dec_blk_nums=_counts(sd, "decoders"), img_channel=img_channel))


def _cresmd(sd):
    nf, in_nc = sd["conv_first.weight"].shape[:2]
    return Detection("cresmd", CResMD, dict(in_nc=in_nc, out_nc=in_nc, nf=nf, nb=_count(sd, r"recon_trunk\.(\d+)\..*"),
                                            cond_dim=sd["global_scale.weight"].shape[1]))


def _edsr(sd):
    n_feats, in_chans = sd["head.weight"].shape[:2]
    factors = [math.isqrt(sd[f"upsample.{i}.weight"].shape[0] // n_feats)
               for i in range(_count(sd, r"upsample\.(\d+)\.weight"))]
    return Detection("edsr", EDSRNet, dict(n_resblocks=_count(sd, r"body\.(\d+)\..*"), n_feats=n_feats,
                                           scale=math.prod(factors), in_chans=in_chans),
                     ("res_scale=0.1 assumed (not stored), pass res_scale= to change it",))


# (keys that must all be present, reader): the first whose keys a state_dict has is taken.
KINDS = (
    (("conv_first.weight", "layers.0.residual_group.blocks.0.attn.relative_position_bias_table"), _swinir),
    (("intro.weight", "ending.weight", "middle_blks.0.conv1.weight"), _nafnet),
    (("conv_first.weight", "global_scale.weight", "recon_trunk.0.local_scale.weight"), _cresmd),
    (("head.weight", "tail.weight"), _edsr),
)


def _official_edsr(sd):
    """EDSR-PyTorch's layout (head.0, body.i.body.j, tail.0.*): the zoo's EDSR has neither its body-end
    convolution nor its global skip, so its weights cannot give its outputs here."""
    return "head.0.weight" in sd and "body.0.body.0.weight" in sd


def _read(path_or_state_dict):
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        return train.read_torch_file(path_or_state_dict, "checkpoint")
    if not isinstance(path_or_state_dict, dict):
        raise ArgumentError(f"path_or_state_dict must be a path or a dict of tensors, got "
                            f"{type(path_or_state_dict).__name__}")
    return path_or_state_dict


def _zoo_checkpoint(state):
    return isinstance(state, dict) and state.get("format") == train.CHECKPOINT_FORMAT and "model" in state.get(
        "config", {})


def detect(path_or_state_dict):
    """The zoo network a checkpoint (a path, what torch.load gives, or a state_dict) fits: a Detection
    (str() gives one line). ArgumentError, naming what was looked for, when nothing fits."""
    state = _read(path_or_state_dict)
    if _zoo_checkpoint(state):
        config = state["config"]
        return Detection(config["model"], lambda **kw: registry.create(config["model"], **kw),
                         dict(config.get("network", {})), ("a flexops zoo training checkpoint",))
    sd = swinir.official_state_dict(state)
    for needed, reader in KINDS:
        if all(key in sd for key in needed):
            return reader(sd)
    if _official_edsr(sd):
        raise ArgumentError("an official EDSR-PyTorch checkpoint (head.0, body.*.body.*): the zoo's EDSR is the "
                            "tunable paper's ResNet without EDSR's body-end convolution and global skip, so it "
                            "cannot reproduce this network")
    some = ", ".join(list(sd)[:4]) if isinstance(sd, dict) else type(sd).__name__
    raise ArgumentError(f"the checkpoint is none of the networks load knows (its first keys: {some}); looked for "
                        f"{LOOKED_FOR}")


def load(path_or_state_dict, **overrides):
    """The zoo network for a checkpoint, its weights loaded strictly, in eval mode.

    path_or_state_dict: a file path, what torch.load gives (a state_dict, {"params": ...},
    {"params_ema": ...}, or a zoo training checkpoint). overrides: constructor settings that replace
    the detected ones (e.g. img_range=255.0 for SwinIR's JPEG models). The detection is logged on the
    "flexops.models" logger; `detect` returns it.
    """
    state = _read(path_or_state_dict)
    found = detect(state)
    settings = {**found.settings, **overrides}
    try:
        model = found.constructor(**settings)
    except TypeError as error:
        raise ArgumentError(f"an override does not fit {found.name}: {error}") from None
    weights = state["model"] if _zoo_checkpoint(state) else swinir.official_state_dict(state)
    try:
        model.load_state_dict(dict(weights), strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
        raise ArgumentError(f"the checkpoint looks like {found} but does not fit it: {first}") from None
    log.info("loaded %s", found)
    return model.eval()
