"""CResMD against an independent implementation written here from the zoo's spec (tasnet.md section 2):
parameter count, state_dict names, outputs on random weights, MACs, initialisation, errors."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flexops.flops import count
from flexops.models import create, list_models
from flexops.models.cresmd import CResMD
from flexops.ops import ArgumentError


class OfficialStyleCResMD(nn.Module):
    """CResMD as the spec describes the official CResMDNet: same module names, plain torch layers."""

    def __init__(self, nf, nb, cond_dim):
        super().__init__()
        self.global_scale = nn.Linear(cond_dim, 3)
        self.conv_first = nn.Conv2d(3, nf, 3, 2, 1)
        blocks = []
        for _ in range(nb):
            block = nn.Module()
            block.conv1, block.conv2 = nn.Conv2d(nf, nf, 3, 1, 1), nn.Conv2d(nf, nf, 3, 1, 1)
            block.local_scale = nn.Linear(cond_dim, nf)
            blocks.append(block)
        self.recon_trunk = nn.Sequential(*blocks)
        self.upconv = nn.Conv2d(nf, 4 * nf, 3, 1, 1)
        self.HRconv = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, 3, 3, 1, 1)

    def forward(self, x, cond):
        fea = self.conv_first(x)
        for block in self.recon_trunk:
            res = block.conv2(F.relu(block.conv1(fea)))
            fea = fea + res * block.local_scale(cond).view(-1, res.shape[1], 1, 1)
        out = F.relu(F.pixel_shuffle(self.upconv(fea), 2))
        out = self.conv_last(F.relu(self.HRconv(out)))
        return x + out * self.global_scale(cond).view(-1, 3, 1, 1)


@pytest.mark.parametrize("cond_dim, params", [(3, 2_559_759), (2, 2_557_708)])
def test_full_size_parameter_count(cond_dim, params):
    with torch.device("meta"):
        net = CResMD(cond_dim=cond_dim)
        official = OfficialStyleCResMD(64, 32, cond_dim)
    assert sum(p.numel() for p in net.parameters()) == params
    assert sum(p.numel() for p in official.parameters()) == params


def test_state_dict_names_and_shapes_are_the_official_ones():
    with torch.device("meta"):
        ours, official = CResMD().state_dict(), OfficialStyleCResMD(64, 32, 3).state_dict()
    assert list(ours) == list(official)
    assert all(ours[k].shape == official[k].shape for k in ours)


def test_official_weights_load_strictly_and_give_the_official_output():
    official = OfficialStyleCResMD(8, 3, 3).double()
    for p in official.parameters():
        nn.init.normal_(p, std=0.3)
    net = CResMD(nf=8, nb=3).double()
    net.load_state_dict(official.state_dict(), strict=True)
    x, cond = torch.rand(2, 3, 12, 10, dtype=torch.float64), torch.rand(2, 3, dtype=torch.float64)
    torch.testing.assert_close(net(x, cond), official(x, cond), rtol=1e-12, atol=1e-12)
    # One cond for the whole batch.
    torch.testing.assert_close(net(x, cond[0]), official(x, cond[:1].expand(2, -1)), rtol=1e-12, atol=1e-12)


def test_zero_condition_is_the_identity_at_initialisation():
    net = CResMD(nf=8, nb=2)
    x = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(net(x, torch.zeros(3)), x)


def test_official_initialisation():
    net = CResMD(nf=16, nb=2)
    convs = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(convs) == 2 * 3 + 5
    assert all(torch.all(m.bias == 0) for m in convs)
    weight = net.recon_trunk[0].conv1.weight  # kaiming normal (fan in 16 * 9) times 0.1
    assert abs(weight.std().item() / (0.1 * (2 / (16 * 9)) ** 0.5) - 1) < 0.1


def test_macs_match_fvcore_and_the_spec():
    net = CResMD(nf=8, nb=2)
    x = torch.rand(1, 3, 16, 24)
    assert count(net, x, torch.rand(1, 3)) == net.macs(16, 24)
    with torch.device("meta"):
        full = CResMD()
    # The spec's fvcore counts (conv only) at CBSD68 and HD; the scale Linears add 6,153 MACs.
    assert full.macs(320, 480) == 102_253_363_200 + 6_153
    assert full.macs(720, 1280) == 665_712 * 720 * 1280 + 6_153


def test_registry():
    assert {"cresmd", "tasnet"} <= set(list_models())
    assert isinstance(create("cresmd", nf=4, nb=1), CResMD)
    with pytest.raises(ValueError, match="no zoo network named 'nope'"):
        create("nope")


def test_bad_inputs_name_the_problem():
    net = CResMD(nf=4, nb=1)
    with pytest.raises(ValueError, match="even"):
        net(torch.rand(1, 3, 9, 8), torch.rand(3))
    with pytest.raises(ValueError, match=r"x must be \[B, 3, H, W\]"):
        net(torch.rand(1, 4, 8, 8), torch.rand(3))
    with pytest.raises(ValueError, match=r"cond must be \[3\] or \[B, 3\]"):
        net(torch.rand(1, 3, 8, 8), torch.rand(2))
    with pytest.raises(ValueError, match="cond has 3 rows but the batch has 2"):
        net(torch.rand(2, 3, 8, 8), torch.rand(3, 3))
    with pytest.raises(ArgumentError, match=r"cond must lie in \[0, 1\] componentwise"):
        net(torch.rand(1, 3, 8, 8), torch.tensor([0.5, -0.1, 0.0]))
    with pytest.raises(ValueError, match="in_nc and out_nc must be equal"):
        CResMD(in_nc=3, out_nc=1)


def test_counting_macs_does_not_pass_on_fvcores_torch_jit_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        count(CResMD(nf=4, nb=1), torch.rand(1, 3, 8, 8), torch.rand(3))
    assert not [w for w in caught if "torch.jit" in str(w.message)], [str(w.message) for w in caught]
