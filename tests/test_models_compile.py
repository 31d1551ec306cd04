"""torch.compile(fullgraph=True) captures every zoo network whole (no graph break: no `.item()`, no
branch on a tensor's values in forward) and the compiled network computes what the eager one does.

Backend "aot_eager": Dynamo's capture (where graph breaks arise) and AOT autograd over the ops' fake
kernels, without Inductor's C++ code generation, which on a 2-core machine takes 30-150 s per network.
The tunable networks are called again with a new omega: the same graph serves it (no recompile), as it
serves a user moving a slider. bf16 cases run once flexops' CPU ops take bfloat16.
"""

import pytest
import torch

from flexops import backends
from flexops.models import create, data
from flexops.models.cresmd import CResMD
from flexops.models.tasnet.deploy import TASNetDeploy
from flexops.models.tunable import TunableEDSR, TunableNAFNet, TunableStyleNet, TunableSwinIR


def _tasnet_deploy():
    return TASNetDeploy.from_widths(CResMD(nf=4, nb=1), n_shared=2, ta_width=3, ts_width=2)


# The smallest configurations: compile time grows with the number of layers.
NETWORKS = {
    "swinir": lambda: create("swinir", img_size=16, embed_dim=12, depths=(2,), num_heads=(2,), window_size=4,
                             upscale=1),
    "flexir": lambda: create("flexir", img_size=16, embed_dim=12, depths=(2, 2), num_heads=(2, 2), window_size=4,
                             upscale=1),
    "cresmd": lambda: CResMD(nf=4, nb=1),
    "tasnet_deploy": _tasnet_deploy,
    "irnas": lambda: create("irnas", width=4, in_chans=3),
    "tunable_edsr": lambda: TunableEDSR(n_resblocks=1, n_feats=4),
    "tunable_nafnet": lambda: TunableNAFNet(width=4, enc_blk_nums=(1,), middle_blk_num=1, dec_blk_nums=(1,)),
    "tunable_stylenet": lambda: TunableStyleNet(num_params=2, num_channels=4, num_blocks=(1, 1, 1)),
    "tunable_swinir": lambda: TunableSwinIR(img_size=16, window_size=4, depths=[2], embed_dim=12, num_heads=[2],
                                            mlp_ratio=2),
}
TUNABLE = {"tunable_edsr", "tunable_nafnet", "tunable_stylenet", "tunable_swinir"}

BF16 = pytest.param(torch.bfloat16, marks=pytest.mark.skipif(
    torch.bfloat16 not in backends.DTYPES["cpu"], reason="flexops' CPU ops do not take bfloat16 in this build"))


def arguments(name, dtype):
    """The network's inputs: an image batch of 2, and its tasks (one per image) or a shared omega."""
    x = torch.rand(2, 3, 16, 16, dtype=dtype)
    if name == "cresmd":
        return (x, torch.rand(2, 3, dtype=dtype))
    if name == "tasnet_deploy":  # one image, restored at three tasks
        return (x[:1], data.CRESMD_27_TASKS[:3].to(dtype))
    if name in TUNABLE:
        return (x, torch.tensor([0.3, 0.7]))
    return (x,)


@pytest.mark.parametrize("dtype", [torch.float32, BF16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_the_whole_network_compiles_and_matches_eager(name, dtype):
    torch._dynamo.reset()
    net = NETWORKS[name]().eval().to(dtype)
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    args = arguments(name, dtype)
    with torch.no_grad():
        torch.testing.assert_close(compiled(*args), net(*args))
        if name in TUNABLE:
            # A new setting (a user moving a slider): the same graph blends anew, without a recompile.
            omega = torch.tensor([0.2, 0.8])
            with torch._dynamo.config.patch(error_on_recompile=True):
                again = compiled(args[0], omega)
            torch.testing.assert_close(again, net(args[0], omega))
