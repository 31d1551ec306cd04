"""torch.fx traces the zoo's networks that have no data-dependent control flow: their input checks
let fx's Proxies through, and the traced graph computes what the network computes."""

import pytest
import torch

from flexops.models import create

SMALL = {
    "cresmd": dict(nf=4, nb=1),
    "tasnet": dict(nf=4, nb=1),
    "irnas": dict(width=4, in_chans=1),
    "irnas_supernet": dict(layers=2, nodes=2, width=4, in_chans=1),
    "swinir": dict(img_size=16, embed_dim=12, depths=(2,), num_heads=(2,), window_size=4, upscale=1),
    "flexir": dict(img_size=16, embed_dim=12, depths=(2, 2), num_heads=(2, 2), window_size=4, upscale=1),
    "tunable_edsr": dict(n_resblocks=1, n_feats=4),
    "tunable_nafnet": dict(width=4, enc_blk_nums=(1,), middle_blk_num=1, dec_blk_nums=(1,)),
    "tunable_stylenet": dict(num_params=2, num_channels=4, num_blocks=(1, 1, 1)),
    "tunable_swinir": dict(img_size=16, window_size=4, depths=[2], embed_dim=12, num_heads=[2], mlp_ratio=2),
}
TUNABLE = ("tunable_edsr", "tunable_nafnet", "tunable_stylenet", "tunable_swinir")
# SwinIR's and FlexIR's options that are no tensors are fixed for the trace.
OPTIONS = {"swinir": {"tile": None, "tile_overlap": 32, "max_memory": 2**32}, "flexir": {"pointer": None}}
# Networks that choose their maps' memory layout per call (NAFNet runs channels-last on CPU except
# for a setting per image; a traced graph keeps the layout as written): float32 sums in another
# order, equal to a few units in the last place rather than bit for bit.
LAYOUT_PER_CALL = {"tunable_nafnet"}


def inputs(name):
    channels = SMALL[name].get("in_chans", 3)
    image = torch.rand(2, channels, 14, 18) if name in OPTIONS else torch.rand(2, channels, 16, 16)
    if name in TUNABLE:  # a setting per image, then one for the batch: the same graph serves both
        return [(image, torch.rand(2, 2)), (image, torch.rand(2))]
    return [(image, torch.rand(2, 3))] if name in ("cresmd", "tasnet") else [(image,)]


@pytest.mark.parametrize("name", sorted(SMALL))
def test_the_network_traces_and_the_graph_computes_the_same(name):
    net = create(name, **SMALL[name]).eval()
    graph = torch.fx.symbolic_trace(net, concrete_args=OPTIONS.get(name))
    for args in inputs(name):
        with torch.no_grad():
            expected, traced = net(*args), graph(*args)
        if name == "tasnet":
            expected, traced = expected.image, traced.image
        tolerance = 1e-5 if name in LAYOUT_PER_CALL else 0
        torch.testing.assert_close(traced, expected, rtol=tolerance, atol=tolerance / 10)

