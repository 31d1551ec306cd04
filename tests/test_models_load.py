"""flexops.models.load on checkpoints written by third-party code: spandrel's SwinIR and NAFNet (their
official key names), CResMD's official layout, the zoo's EDSR and its own training checkpoints; the
loaded zoo network gives the same outputs (float64) and the detected hyper-parameters are the built ones."""

import pytest
import torch

from flexops.models import cresmd, load, train
from flexops.models.load import detect
from flexops.models.tunable.edsr import EDSRNet
from flexops.ops import ArgumentError

spandrel = pytest.importorskip("spandrel")
from spandrel.architectures.NAFNet import NAFNet as SpandrelNAFNet  # noqa: E402
from spandrel.architectures.SwinIR import SwinIR as SpandrelSwinIR  # noqa: E402

SWINIR_CONFIGS = [  # tiny versions of the official ones: every upsampler, 1 and 3 channels, window 7 and 8
    dict(upsampler="pixelshuffle", upscale=2, in_chans=3, window_size=8, img_size=16, resi_connection="1conv"),
    dict(upsampler="pixelshuffle", upscale=3, in_chans=3, window_size=8, img_size=16, resi_connection="1conv"),
    dict(upsampler="pixelshuffledirect", upscale=2, in_chans=3, window_size=8, img_size=16, resi_connection="1conv"),
    dict(upsampler="nearest+conv", upscale=4, in_chans=3, window_size=8, img_size=16, resi_connection="3conv"),
    dict(upsampler="", upscale=1, in_chans=1, window_size=8, img_size=16, resi_connection="1conv"),
    dict(upsampler="", upscale=1, in_chans=3, window_size=7, img_size=14, resi_connection="1conv", img_range=255.0),
]


def random_weights(net, seed=0):
    """Every parameter random (official initialisations leave biases zero and tables small)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=generator))
    return net.double().eval()


@pytest.mark.parametrize("config", SWINIR_CONFIGS, ids=lambda c: f"{c['upsampler'] or 'none'}-x{c['upscale']}-"
                                                               f"c{c['in_chans']}-w{c['window_size']}")
@pytest.mark.parametrize("wrapper", [None, "params", "params_ema"])
def test_spandrel_swinir(tmp_path, config, wrapper):
    theirs = random_weights(SpandrelSwinIR(embed_dim=12, depths=[2, 2], num_heads=[2, 3], mlp_ratio=2, **config))
    state = theirs.state_dict()
    path = tmp_path / "swinir.pth"
    torch.save(state if wrapper is None else {wrapper: state}, path)
    ours = load(path).double()
    found = detect(path)
    assert found.name == "swinir"
    for key in ("upsampler", "upscale", "in_chans", "window_size", "img_size", "resi_connection"):
        assert found.settings[key] == config[key], key
    assert found.settings["depths"] == [2, 2] and found.settings["num_heads"] == [2, 3]
    assert found.settings["embed_dim"] == 12 and found.settings["mlp_ratio"] == 2
    assert found.settings["img_range"] == config.get("img_range", 1.0)
    x = torch.rand(1, config["in_chans"], 19, 23, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-10)


def test_img_range_override(tmp_path):
    theirs = SpandrelSwinIR(embed_dim=12, depths=[2], num_heads=[2], window_size=7, img_size=14, img_range=1.0)
    net = load(random_weights(theirs).state_dict(), img_range=1.0).double()
    x = torch.rand(1, 3, 14, 14, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), theirs(x), rtol=0, atol=1e-10)


def test_spandrel_nafnet():
    theirs = random_weights(SpandrelNAFNet(img_channel=3, width=8, middle_blk_num=2, enc_blk_nums=[1, 2],
                                           dec_blk_nums=[2, 1]))
    ours = load({"params": theirs.state_dict()}).double()
    assert detect(theirs.state_dict()).settings == dict(width=8, enc_blk_nums=[1, 2], middle_blk_num=2,
                                                        dec_blk_nums=[2, 1], img_channel=3)
    x = torch.rand(1, 3, 18, 22, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-10)


def test_cresmd_official_layout():
    theirs = random_weights(cresmd.CResMD(nf=8, nb=3, cond_dim=2))
    ours = load(theirs.state_dict()).double()
    assert detect(theirs.state_dict()).settings == dict(in_nc=3, out_nc=3, nf=8, nb=3, cond_dim=2)
    x, cond = torch.rand(1, 3, 16, 16, dtype=torch.float64), torch.tensor([0.3, 0.7], dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, cond), theirs(x, cond), rtol=0, atol=1e-10)


def test_zoo_edsr():
    theirs = random_weights(EDSRNet(n_resblocks=2, n_feats=8, scale=4))
    ours = load(theirs.state_dict()).double()
    assert detect(theirs.state_dict()).settings == dict(n_resblocks=2, n_feats=8, scale=4, in_chans=3)
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-10)


def test_zoo_checkpoint_round_trip(tmp_path):
    net = random_weights(cresmd.CResMD(nf=8, nb=2)).float()
    config = {"model": "cresmd", "network": dict(nf=8, nb=2)}
    train.save_checkpoint(tmp_path / "run.pt", train.run_state(5, config, model=net))
    loaded = load(tmp_path / "run.pt")
    assert detect(tmp_path / "run.pt").name == "cresmd"
    x, cond = torch.rand(1, 3, 16, 16), torch.tensor([0.2, 0.5, 0.0])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, cond), net(x, cond), rtol=0, atol=0)


def test_errors(tmp_path):
    with pytest.raises(ArgumentError, match="looked for .*SwinIR.*NAFNet.*CResMD"):
        load({"backbone.weight": torch.zeros(1)})
    with pytest.raises(ArgumentError, match="EDSR-PyTorch"):
        load({"head.0.weight": torch.zeros(1), "body.0.body.0.weight": torch.zeros(1)})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(tmp_path / "missing.pth")
    with pytest.raises(ArgumentError, match="must be a path or a dict"):
        load(3)
    state = random_weights(cresmd.CResMD(nf=8, nb=2)).state_dict()
    state["conv_last.weight"] = state["conv_last.weight"][:, :4]
    with pytest.raises(ArgumentError, match="does not fit"):
        load(state)
    with pytest.raises(ArgumentError, match="override does not fit"):
        load(cresmd.CResMD(nf=8, nb=2).state_dict(), img_range=255.0)
