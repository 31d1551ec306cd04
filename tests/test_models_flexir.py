"""FlexIR: pointer semantics (hooks), from_swinir equivalence, cost against hand counts and the
paper's Table 3 at full size on the meta device, the sharpness score against a float64 loop
reference, adaptive inference (extremes, monotonicity, crop-mode regions, mask mode), training
pieces and a few training steps, CLI, bad inputs."""

import math

import pytest
import torch

from flexops.models import create
from flexops.models.flexir import (FlexIR, adaptive_macs, charbonnier, cost, pointer_schedule, sharpness,
                                   split_regions, union_regions)
from flexops.models.flexir.__main__ import main
from flexops.models.flexir.distill import ChannelScoring, Distillation, exit_weights
from flexops.models.swinir import SwinIR

TINY = dict(img_size=16, embed_dim=12, depths=[2] * 3, num_heads=[2] * 3, window_size=4, mlp_ratio=2.0, upscale=1)


def tiny(shared_tail=False, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    swinir = SwinIR(drop_path_rate=0.0, **TINY).to(dtype).eval()
    return swinir, FlexIR.from_swinir(swinir, shared_tail=shared_tail).eval()


def ran_modules(net, call):
    """Names of the top-two-level modules (layers.j, branches.j, ...) that ran during call()."""
    seen, handles = [], []
    for name, module in net.named_modules():
        if name.count(".") == 1 or name in ("conv_first", "norm", "conv_after_body", "conv_last"):
            handles.append(module.register_forward_hook(lambda m, i, o, name=name: seen.append(name)))
    with torch.no_grad():
        call()
    for handle in handles:
        handle.remove()
    return seen


def test_pointer_runs_only_its_blocks_and_its_exit():
    _, net = tiny()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    trace = [n for n in ran_modules(net, lambda: net(x, pointer=2)) if n.startswith(("layers", "branches"))]
    assert trace == ["layers.0", "layers.1", "branches.1"]
    trace = [n for n in ran_modules(net, lambda: net(x)) if n.startswith(("layers", "branches"))]
    assert trace == ["layers.0", "layers.1", "layers.2", "branches.2"]


@pytest.mark.parametrize("shared_tail", [False, True])
def test_from_swinir_full_pointer_is_the_swinir(shared_tail):
    swinir, net = tiny(shared_tail)
    x = torch.rand(2, 3, 10, 13, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(net(x, pointer=3), swinir(x))
        # Lower pointers: SwinIR's tail on the features after block P (every branch is its tail), residual form.
        _, x_first, tokens = swinir.head(x)
        tokens = swinir.layers[0](tokens)
        padded = torch.nn.functional.pad(x, (0, 3, 0, 2), "reflect") - swinir.mean.double()
        expected = swinir.finish(swinir.reconstruct(tokens, x_first, padded), 10, 13)
        torch.testing.assert_close(net(x, pointer=1), expected, rtol=0, atol=1e-12)
    if shared_tail:
        assert set(net.state_dict()) == set(swinir.state_dict())
    else:
        assert not any(k.startswith(("norm.", "conv_last.", "conv_after_body.")) for k in net.state_dict())
        assert torch.equal(net.branches[0].conv_last.weight, swinir.conv_last.weight)
        assert net.branches[0].conv_last.weight is not net.branches[1].conv_last.weight


def test_cost_matches_hand_counts():
    net = create("flexir", img_size=16, embed_dim=12, depths=[2, 2], num_heads=[2, 2], window_size=4, mlp_ratio=2.0,
                 upscale=1)
    tokens, c = 16 * 16, 12
    head = (3 * c * 9 + c + 2 * c, tokens * c * 3 * 9 + 4 * tokens * c)  # conv_first, patch_embed LayerNorm
    stb_params = 2 * 2 * c + (c * 3 * c + 3 * c) + (c * c + c) + (c * 2 * c + 2 * c) + (2 * c * c + c)
    stb_macs = (2 * 4 * tokens * c + tokens * 3 * c * c + tokens * c * c + 2 * tokens * 2 * c * c
                + tokens * 2 * (3 * 16 - 1))  # softmax: a row per token and head, 3 N - 1 each
    conv = (c * c * 9 + c, tokens * c * c * 9)
    rstb = (2 * stb_params + conv[0], 2 * stb_macs + conv[1])
    branch = (2 * c + conv[0] + 3 * c * 9 + 3, 4 * tokens * c + conv[1] + tokens * 3 * c * 9)
    for pointer in (1, 2):
        assert cost(net, (1, 3, 16, 16), pointer) == (head[0] + pointer * rstb[0] + branch[0],
                                                       head[1] + pointer * rstb[1] + branch[1])
    assert adaptive_macs(net, (1, 3, 16, 16), [1, 2]) == 2 * head[1] + 3 * (rstb[1] + branch[1])
    with pytest.raises(ValueError, match=r"pointer must be an int in \[1, 2\]"):
        cost(net, (1, 3, 16, 16), 3)
    with pytest.raises(ValueError, match="input_shape"):
        cost(net, (1, 1, 16, 16), 1)


def test_cost_reproduces_table_3_rows():
    with torch.device("meta"):
        net = FlexIR(img_size=128, window_size=8, depths=[6] * 6, embed_dim=180, num_heads=[6] * 6, mlp_ratio=2,
                     upscale=1)
    assert cost(net, (1, 3, 128, 128), 1) == (2_161_263, 35_472_605_184)
    assert cost(net, (1, 3, 128, 128), 6) == (11_455_563, 188_033_531_904)
    assert sum(p.numel() for p in net.parameters()) == 12_989_178


def reference_sharpness(img, beta=0.61):
    """Eqs. 6-8 written with loops over pixels, float64."""
    img = img.double()
    y = 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2] if img.shape[0] == 3 else img[0]
    h, w = y.shape
    g = torch.zeros(h, w, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            a, b = min(i, h - 2), min(j, w - 2)  # replicate the last row / column
            g[i, j] = math.sqrt((y[a, b] - y[a + 1, b + 1]) ** 2 + (y[a, b + 1] - y[a + 1, b]) ** 2)
    border = int(min(h, w) / 16 + 0.5)
    centre = g[border // 2:h - (border - border // 2), border // 2:w - (border - border // 2)]
    mg = centre.max().item()
    if mg == 0:
        return 0.0
    vg = (mg - centre.min().item()) / (g.sum().item() / (h * w))
    return mg**beta * vg ** (1 - beta)


def test_sharpness():
    torch.manual_seed(0)
    images = torch.rand(3, 3, 23, 40)
    scores = sharpness(images)
    assert scores.dtype == torch.float64 and scores.shape == (3,)
    for image, score in zip(images, scores):
        assert score.item() == pytest.approx(reference_sharpness(image), rel=1e-12)
    gray = torch.rand(1, 20, 20)
    assert sharpness(gray).item() == pytest.approx(reference_sharpness(gray), rel=1e-12)
    assert sharpness(torch.full((3, 16, 16), 0.3)).item() == 0
    torch.testing.assert_close(sharpness(images * 0.5 + 0.2), 0.5**0.61 * scores)  # VG scale-free, MG^beta
    flat, edge = torch.zeros(1, 32, 32), torch.zeros(1, 32, 32)
    edge[:, :, 16:] = 1
    assert sharpness(edge) > sharpness(flat + 0.1 * torch.rand(1, 32, 32))
    with pytest.raises(ValueError, match="C = 1 or 3"):
        sharpness(torch.rand(2, 8, 8))
    with pytest.raises(ValueError, match="beta"):
        sharpness(gray, beta=2)


def test_split_union_and_crop_mode_regions():
    _, net = tiny()
    x = torch.rand(1, 3, 17, 20, dtype=torch.float64)
    parts = split_regions(x, 4)
    assert [tuple(p.shape[-2:]) for p in parts] == [(8, 10), (8, 10), (9, 10), (9, 10)]
    assert torch.equal(union_regions(parts, 4), x)
    out, exits = net.adaptive(x, threshold=1.0)
    with torch.no_grad():  # each region restored as its own image at its exit
        expected = [net(p, pointer=int(e)) for p, e in zip(parts, exits[0])]
    torch.testing.assert_close(out, union_regions(expected, 4), rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", ["crop", "mask"])
def test_adaptive_extremes_and_monotonicity(mode):
    _, net = tiny(seed=1)
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    out, exits = net.adaptive(x, threshold=math.inf, mode=mode)
    assert exits.tolist() == [[3] * 4] * 2
    if mode == "mask":  # one pass over the whole image: no seams
        with torch.no_grad():
            torch.testing.assert_close(out, net(x, pointer=3), rtol=0, atol=1e-12)
    out, exits = net.adaptive(x, threshold=-math.inf, ref="input", mode=mode, max_pointer=2)
    assert exits.tolist() == [[1] * 4] * 2
    if mode == "mask":
        with torch.no_grad():
            torch.testing.assert_close(out, net(x, pointer=1), rtol=0, atol=1e-12)
    for ref, thresholds in (("first", (0.9, 1.0, 1.02, 1.2)), ("absolute", (0.0, 1.0, 4.0))):
        sweep = [net.adaptive(x, threshold=threshold, ref=ref, mode=mode)[1] for threshold in thresholds]
        for lower, higher in zip(sweep, sweep[1:]):
            assert bool((higher >= lower).all())
        assert not torch.equal(sweep[0], sweep[-1])  # the sweep does move exits


def test_mask_mode_freezes_exited_regions():
    """A region that exits at 1 gives exit 1's output of the whole-image pass there, however long the
    others run; the running regions' outputs come from the deeper exits."""
    _, net = tiny(seed=2)
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        p1 = net(x, pointer=1)
    # An absolute threshold between the regions' exit-1 scores: some exit at 1, the others go on.
    threshold = sharpness(torch.cat(split_regions(p1))).median().item()
    out, exits = net.adaptive(x, threshold=threshold, ref="absolute", mode="mask")
    assert exits.min() == 1 and exits.max() > 1
    for region, (part, e) in enumerate(zip(split_regions(out), exits[0])):
        if e == 1:
            torch.testing.assert_close(part, split_regions(p1)[region], rtol=0, atol=1e-12)


def test_training_pieces():
    assert charbonnier(torch.zeros(4), torch.zeros(4)).item() == pytest.approx(1e-3)
    assert [pointer_schedule(s, 60, 6) for s in (0, 9, 10, 25, 59)] == [1, 1, 2, 3, 6]
    assert exit_weights(3) == [1 / 6, 2 / 6, 3 / 6]
    phi = ChannelScoring(32)(torch.randn(2, 32, 5, 5))
    assert phi.shape == (2, 32, 1, 1) and bool(((phi > 0) & (phi < 1)).all())
    swinir, net = tiny(dtype=torch.float32)
    distill = Distillation(net.train(), swinir)
    loss, logs = distill(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8), depth=2)
    loss.backward()
    assert logs["d"] == 2 and set(logs) == {"Lc1", "Lc2", "d"}
    assert net.layers[1].conv.weight.grad is not None and net.branches[1].conv_last.weight.grad is not None
    assert net.layers[2].conv.weight.grad is None and net.branches[2].conv_last.weight.grad is None  # not active
    assert distill.scorers[2].theta[0].weight.grad is None
    assert all(p.grad is None for p in swinir.parameters()) and not swinir.training


def test_training_steps_and_cli(tmp_path, capsys):
    from flexops.models.flexir import train

    images = [torch.rand(3, 24, 24)]
    network = dict(img_size=8, embed_dim=12, depths=[1, 1], num_heads=[2, 2], window_size=4)
    net = train(images=images, steps=2, patch_size=8, batch_size=1, network=network, progress=False,
                checkpoint=tmp_path / "flexir.pt")
    assert isinstance(net, FlexIR) and not net.training and (tmp_path / "flexir.pt").exists()
    with pytest.raises(SystemExit):
        main(["train", "--steps", "1", "--blocks", "0", "--no-progress"])
    assert "depths and num_heads" in capsys.readouterr().err


def test_bad_inputs():
    _, net = tiny()
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    for pointer in (0, 4, 2.0, True):
        with pytest.raises(ValueError, match=r"pointer must be an int in \[1, 3\]"):
            net(x, pointer=pointer)
    with pytest.raises(ValueError, match="threshold must be a real number"):
        net.adaptive(x, threshold=float("nan"))
    with pytest.raises(ValueError, match="regions must be a square number"):
        net.adaptive(x, regions=3)
    with pytest.raises(ValueError, match="at least window_size = 4 pixels per side"):
        net.adaptive(x, regions=25)
    with pytest.raises(ValueError, match=r"x must be \[B, 3, H, W\] \(an image batch\); got \[1, 1, 16, 16\]"):
        net.adaptive(x[:, :1])
    with pytest.raises(ValueError, match=r"x must be \[B, 3, H, W\] \(an image batch\); got \[1, 1, 16, 16\]"):
        net(x[:, :1])
    with pytest.raises(ValueError, match="ref must be one of"):
        net.adaptive(x, ref="last")
    with pytest.raises(ValueError, match="mode must be one of"):
        net.adaptive(x, mode="tiles")
    with pytest.raises(ValueError, match=r"max_pointer must be an int in \[1, 3\]"):
        net.adaptive(x, max_pointer=7)
    with pytest.raises(ValueError, match="swinir must be"):
        FlexIR.from_swinir(net.layers[0])
