"""IR-NAS: op counts and the DCN at initialisation, mixed ops and genotype rules, the supernet's
weight count (hand count), beta masking, Viterbi against brute force, the derived network against its
closed form, SSIM against an independent implementation, the loss, a short search, the CLI, bad inputs."""

import importlib
import itertools
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flexops.models import create, data, irnas
from flexops.models.irnas import (OP_NAMES, OPS, denoising_pairs, IRNASNet, MixedOp, SuperNet, cell_genotype,
                                  irnas_loss, log_ssim_loss, search, ssim, viterbi)

# ---- ops -----------------------------------------------------------------------------------------


def op_params(name, c, affine=True):
    """Hand count of one op at width c (spec section 1)."""
    bn = 2 * c if affine else 0
    return {"conv": 9 * c * c + bn, "dil": 9 * c * c + bn, "sep": 2 * (9 * c + c * c + bn),
            "def": 9 * c * c + c + (54 * 9 * c + 54) + bn, "skip": 0, "none": 0}[name]


def numel(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("c", [10, 8, 40])
@pytest.mark.parametrize("affine", [True, False])
def test_op_parameter_counts(c, affine):
    for name in OP_NAMES:
        assert numel(OPS[name](c, affine)) == op_params(name, c, affine), name
    assert [numel(OPS[n](10, True)) for n in OP_NAMES] == [920, 420, 920, 5844, 0, 0]


def test_def_op_at_initialisation_is_half_a_conv_plus_bias():
    op = OPS["def"](10, True).eval()
    relu, dcn, bn = op
    assert dcn.offset_groups == 2 and dcn.mask_activation == "sigmoid" and not dcn.bias.any()
    torch.nn.init.normal_(dcn.bias)
    torch.nn.init.normal_(bn.running_mean)
    x = torch.randn(2, 10, 9, 12)
    expected = F.batch_norm(0.5 * F.conv2d(F.relu(x), dcn.weight, padding=1) + dcn.bias.view(1, -1, 1, 1),
                            bn.running_mean, bn.running_var, bn.weight, bn.bias)
    torch.testing.assert_close(op(x), expected, atol=1e-5, rtol=1e-5)


def test_ops_keep_the_shape_and_zero_is_zero():
    x = torch.randn(2, 6, 7, 9)
    for name in OP_NAMES:
        assert OPS[name](6, False)(x).shape == x.shape
    assert not OPS["none"](6)(x).any() and torch.equal(OPS["skip"](6)(x), x)


def test_bad_op_names_and_widths():
    with pytest.raises(ValueError, match="unknown IR-NAS op 'max_pool'"):
        OPS["max_pool"]
    with pytest.raises(ValueError, match="must be even"):
        OPS["def"](7)
    with pytest.raises(ValueError, match="genotype\\[1\\]'s op must be one of"):
        IRNASNet([("conv", 0), ("bogus", 1)] * 5)


# ---- mixed op, cell, genotype --------------------------------------------------------------------


def test_mixed_op_is_the_weighted_sum_of_all_ops():
    mixed = MixedOp(4)
    x = torch.randn(2, 4, 8, 8)
    w = torch.softmax(torch.randn(6), 0)
    expected = sum(w[k] * op(x) for k, op in enumerate(mixed.ops))  # "none" included, as in eq. 2
    torch.testing.assert_close(mixed(x, w), expected)


def test_supernet_op_weights_are_the_softmax_of_alpha():
    net = SuperNet(layers=1, nodes=2, width=2)
    with torch.no_grad():
        net.alpha.normal_()
    assert net.op_weights().shape == (5, 6)
    torch.testing.assert_close(net.op_weights(), net.alpha.exp() / net.alpha.exp().sum(1, keepdim=True))


def test_genotype_keeps_the_top_two_inputs_by_their_best_non_none_op():
    none, conv, dil, deform, skip = (OP_NAMES.index(n) for n in ("none", "conv", "dil", "def", "skip"))
    w = torch.zeros(5, 6)  # 2 nodes: edges 0, 1 (node 0), 2, 3, 4 (node 1)
    w[0, none], w[0, conv] = 0.9, 0.05  # "none" is ignored: edge 0's best is conv at 0.05
    w[1, dil] = 0.3
    w[2, skip], w[3, deform], w[3, conv], w[4, none] = 0.4, 0.6, 0.5, 1.0
    assert cell_genotype(w, 2) == [("dil", 1), ("conv", 0), ("def", 1), ("skip", 0)]
    uniform = torch.full((5, 6), 1 / 6)  # ties: the lower input, the earlier op
    assert cell_genotype(uniform, 2) == [("conv", 0), ("conv", 1), ("conv", 0), ("conv", 1)]
    with pytest.raises(ValueError, match=r"weights must be \[5, 6\]"):
        cell_genotype(torch.zeros(4, 6), 2)


# ---- supernet ------------------------------------------------------------------------------------


def supernet_hand_count(in_chans, layers, nodes, w):
    """Cells (BN not affine) plus stems, routers, upsamplers and head (spec section 3)."""
    widths = [w, 2 * w, 4 * w]
    counts = [min(3, l + 1) for l in range(1, layers + 1)]
    edges = sum(2 + i for i in range(nodes))
    cell = [edges * sum(op_params(n, c, affine=False) for n in OP_NAMES) for c in widths]
    cells = sum(cell[i] for n in counts for i in range(n))
    conv_bn = lambda i, o, k: i * o * k * k + 2 * o  # noqa: E731
    stems = conv_bn(in_chans, 64, 3) + conv_bn(64, nodes * w, 3) + conv_bn(64, w, 3)
    upsamplers = conv_bn(w, 2 * w, 1) + conv_bn(2 * w, 4 * w, 1)
    routers = 0
    for sources, targets in zip([1] + counts[:-1], counts):
        for i in range(sources):
            routers += sum(conv_bn(nodes * widths[i], widths[j], 1) for j in (i - 1, i, i + 1) if 0 <= j < targets)
    head = nodes * sum(widths[:counts[-1]]) * 9 * in_chans + in_chans
    return cells, cells + stems + upsamplers + routers + head


@pytest.mark.parametrize("config, weights, cells, alpha, beta", [
    ((1, 4, 5, 10), 6_471_435, 6_379_880, (20, 6), (9, 3)),  # denoising
    ((3, 3, 4, 10), 3_180_567, None, (14, 6), (6, 3)),  # de-raining
])
def test_supernet_weight_count_at_the_paper_configurations(config, weights, cells, alpha, beta):
    with torch.device("meta"):
        net = SuperNet(*config)
    hand_cells, hand_total = supernet_hand_count(*config)
    assert sum(p.numel() for p in net.weight_parameters()) == hand_total == weights
    assert sum(p.numel() for p in net.cells.parameters()) == hand_cells
    if cells is not None:
        assert hand_cells == cells
    assert net.alpha.shape == alpha and net.beta.shape == beta
    assert {id(p) for p in net.arch_parameters()} == {id(net.alpha), id(net.beta)}
    assert len(net.cells) == sum(min(3, l + 1) for l in range(1, config[1] + 1))  # one cell per (layer, width)


def test_beta_is_a_transition_matrix_with_impossible_moves_masked():
    net = SuperNet(layers=4, nodes=1, width=2)
    with torch.no_grad():
        net.beta.normal_(std=3)
    p = net.transition_probabilities()
    torch.testing.assert_close(p.sum(1), torch.ones(9))
    rows = irnas.beta_rows(4)
    for (layer, source), row in zip(rows, p):
        targets = min(3, layer + 1)
        for move in range(3):
            assert (row[move] == 0) == (not 0 <= source + move - 1 < targets)


def test_supernet_forward_and_gradients_reach_alpha_and_beta():
    net = SuperNet(layers=2, nodes=2, width=2)
    y = net(torch.rand(2, 1, 12, 12))
    assert y.shape == (2, 1, 12, 12) and bool(((y > 0) & (y < 1)).all())
    y.mean().backward()
    assert net.alpha.grad.abs().sum() > 0 and net.beta.grad[~net.impossible].abs().sum() > 0
    assert not net.beta.grad[net.impossible].any()
    with pytest.raises(ValueError, match=r"x must be \[B, 1, H, W\]"):
        net(torch.rand(2, 3, 12, 12))


# ---- Viterbi -------------------------------------------------------------------------------------


def brute_force(p, layers):
    rows = {key: k for k, key in enumerate(irnas.beta_rows(layers))}
    best, best_path = -1.0, None
    for path in itertools.product(range(3), repeat=layers):
        prob, width = 1.0, 0
        for layer, target in enumerate(path, 1):
            move = target - width + 1
            if target >= min(3, layer + 1) or not 0 <= move < 3:
                prob = 0.0
                break
            prob *= p[rows[(layer, width)]][move]
            width = target
        if prob > best:
            best, best_path = prob, list(path)
    return best_path


@pytest.mark.parametrize("layers", [1, 2, 3, 4, 6])
def test_viterbi_equals_brute_force(layers):
    g = torch.Generator().manual_seed(layers)
    net = SuperNet(layers=layers, nodes=1, width=2)
    for _ in range(40):
        with torch.no_grad():
            net.beta.copy_(3 * torch.randn(net.beta.shape, generator=g))
        p = net.transition_probabilities().double()
        assert viterbi(p) == brute_force(p.tolist(), layers)


def test_viterbi_at_uniform_beta_and_on_a_hand_case():
    assert SuperNet(layers=4, nodes=1, width=2).genotype()[1] == [0, 0, 0, 0]
    p = torch.tensor([[0, 0.1, 0.9], [0, 0.5, 0.5], [0.1, 0.2, 0.7]])  # up, then up: 0.9 * 0.7
    assert viterbi(p) == [1, 2]
    with pytest.raises(ValueError, match="no trellis"):
        viterbi(torch.rand(4, 3))
    with pytest.raises(ValueError, match="not logits"):
        viterbi(-torch.rand(3, 3))


# ---- derived network -----------------------------------------------------------------------------


def derived_hand_count(genotype, path, w, nodes, in_chans=1):
    """Cells + 1x1 scalers + stems + ASPP + output conv (spec section 5)."""
    total = 64 * in_chans * 9 + 128 + 64 * 64 * 9 + 128
    channels = [64, 64]
    for level in path:
        c = w * 2 ** level
        total += sum(op_params(name, c) for name, _ in genotype)
        total += channels[0] * c + 2 * c + channels[1] * c + 2 * c
        channels = [channels[1], nodes * c]
    inp = channels[1]
    total += inp * 128 + 256 + 3 * (inp * 9 + 2 * inp + inp * 128 + 256) + 512 * 128 + 256
    return total + 128 * 9 * in_chans + in_chans


@pytest.mark.parametrize("path, expected", [([0, 1, 2, 2], 612_397), ([0, 1, 1, 2], 499_117), ([0, 0, 1, 2], 463_437),
                                            ([1, 2, 2, 2], 765_777)])
def test_derived_network_count_against_the_closed_form(path, expected):
    with torch.device("meta"):
        net = IRNASNet(path=path)
    assert numel(net) == derived_hand_count(irnas.ILLUSTRATIVE_GENOTYPE, path, 10, 5) == expected


def test_derived_network_from_a_random_genotype_and_its_forward():
    g = torch.Generator().manual_seed(0)
    for nodes, path, w in [(3, [1, 1, 0], 6), (4, [0, 1, 2], 4)]:
        genotype = [(OP_NAMES[int(torch.randint(6, (), generator=g))], int(torch.randint(2 + k // 2, (), generator=g)))
                    for k in range(2 * nodes)]
        net = IRNASNet(genotype, path, width=w, nodes=nodes, in_chans=3)
        assert numel(net) == derived_hand_count(genotype, path, w, nodes, in_chans=3)
    y = net(torch.rand(1, 3, 10, 13))
    assert y.shape == (1, 3, 10, 13) and bool(((y > 0) & (y < 1)).all())
    assert isinstance(create("irnas", width=4), IRNASNet)


def test_bad_paths_and_genotypes():
    with pytest.raises(ValueError, match="jumps from width 0 to 2 at layer 2"):
        IRNASNet(path=[0, 2, 2, 2])
    with pytest.raises(ValueError, match="jumps from width 0 to 2 at layer 1"):
        IRNASNet(path=[2, 2])
    with pytest.raises(ValueError, match="10 for 5 nodes, got 8"):
        IRNASNet(irnas.ILLUSTRATIVE_GENOTYPE[:8])
    with pytest.raises(ValueError, match="belongs to node 0, whose inputs are 0 .. 1; got input 2"):
        IRNASNet([("conv", 2)] + list(irnas.ILLUSTRATIVE_GENOTYPE[1:]))


# ---- loss ----------------------------------------------------------------------------------------


def ssim_numpy(x, y):
    """SSIM written out: 11x11 Gaussian (sigma 1.5) weighted local statistics over a zero-padded image."""
    r = np.arange(-5, 6)
    g = np.exp(-r ** 2 / 4.5)
    window = np.outer(g, g) / g.sum() ** 2
    values = []
    for a, b in zip(x.reshape(-1, *x.shape[-2:]), y.reshape(-1, *y.shape[-2:])):
        pa, pb = np.pad(a, 5), np.pad(b, 5)
        h, w = a.shape
        stats = np.zeros((5, h, w))
        for i in range(11):
            for j in range(11):
                sa, sb = pa[i:i + h, j:j + w], pb[i:i + h, j:j + w]
                stats += window[i, j] * np.stack([sa, sb, sa * sa, sb * sb, sa * sb])
        ma, mb, ea2, eb2, eab = stats
        va, vb, cov = ea2 - ma ** 2, eb2 - mb ** 2, eab - ma * mb
        c1, c2 = 0.01 ** 2, 0.03 ** 2
        values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_ssim_against_an_independent_implementation():
    x = torch.rand(2, 3, 17, 23, dtype=torch.float64)
    y = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    assert ssim(x, y).item() == pytest.approx(ssim_numpy(x.numpy(), y.numpy()), rel=1e-10)


def test_loss_is_zero_at_the_target_and_combines_mse_and_log_ssim():
    x = torch.rand(2, 1, 16, 16)
    assert log_ssim_loss(x, x).abs().item() < 1e-6 and irnas_loss(x, x).abs().item() < 1e-6
    y = torch.rand(2, 1, 16, 16)
    expected = F.mse_loss(x, y) + 0.5 * math.log10(1 / ssim(x, y).item())
    assert irnas_loss(x, y).item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="same shape"):
        ssim(x, y[:, :, :8])


# ---- data, search, training, CLI -----------------------------------------------------------------


def small_images(n=4, size=40):
    return [image[:, :size, :size] for image in data.sample_images()[:n]]


def test_gray_denoising_pairs():
    rgb = data.sample_images()[0]
    gray = irnas.to_gray(rgb)
    torch.testing.assert_close(gray[0], 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])
    pairs = denoising_pairs([rgb], 32, sigma=50, seed=3)
    noisy, clean = pairs[5]
    assert noisy.shape == clean.shape == (1, 32, 32)
    assert torch.equal(noisy, pairs[5][0]) and not torch.equal(noisy, pairs[6][0])
    assert 40 < 255 * (noisy - clean).std() < 55  # sigma 50, a little clipping
    with pytest.raises(ValueError, match="smaller than the patch size 64x64"):
        denoising_pairs([torch.rand(3, 20, 80)], 64)
    with pytest.raises(ValueError, match="sigma must be"):
        denoising_pairs([rgb], 32, sigma=-5)


def test_search_runs_end_to_end_and_an_interrupted_search_resumes_to_the_same_state(tmp_path, monkeypatch):
    kwargs = dict(steps=3, warmup=1, patch_size=32, batch_size=2, layers=2, nodes=2, width=2, eval_every=2,
                  progress=False)
    result = search(small_images(), checkpoint=tmp_path / "whole.pt", **kwargs)
    assert result.step in (2, 3) and 0 < result.ssim <= 1 and result.psnr > 0
    net = IRNASNet(result.genotype, result.path, width=2, nodes=2)
    assert net(torch.rand(1, 1, 8, 8)).shape == (1, 1, 8, 8)
    whole = torch.load(tmp_path / "whole.pt", weights_only=True)
    assert whole["step"] == 3 and not torch.equal(whole["model"]["alpha"], torch.ones(5, 6))  # arch steps ran

    module = importlib.import_module("flexops.models.irnas.search")
    read_batch, calls = module._batch, []

    def interrupted_batch(*args):  # Ctrl-C while step 2 reads its first batch (reads: 1 at step 0, 2 per step after)
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return read_batch(*args)

    with monkeypatch.context() as patch:
        patch.setattr(module, "_batch", interrupted_batch)
        with pytest.raises(KeyboardInterrupt):
            search(small_images(), checkpoint=tmp_path / "cut.pt", **kwargs)
    assert torch.load(tmp_path / "cut.pt", weights_only=True)["step"] == 2
    resumed = search(small_images(), checkpoint=tmp_path / "cut.pt", **kwargs)
    cut = torch.load(tmp_path / "cut.pt", weights_only=True)
    assert cut["step"] == 3 and cut["best"] == whole["best"]
    for name, tensor in whole["model"].items():
        torch.testing.assert_close(cut["model"][name], tensor, msg=name)
    assert (resumed.genotype, resumed.path) == (result.genotype, result.path)
    with pytest.raises(ValueError, match="was made with"):
        search(small_images(), checkpoint=tmp_path / "cut.pt", **dict(kwargs, width=4))
    with pytest.raises(ValueError, match="at least 3 images"):
        search(small_images(2), **kwargs)


def run_module(*args, cwd):
    return subprocess.run([sys.executable, "-m", "flexops.models.irnas", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_command_lines(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for k, image in enumerate(small_images()):
        data.save_image(image, folder / f"{k}.png")
    searched = run_module("search", "--data", str(folder), "--steps", "2", "--batch-size", "2", "--patch-size", "32",
                          "--layers", "1", "--nodes", "2", "--width", "2", "--checkpoint", "s.pt", "--no-progress",
                          cwd=tmp_path)
    assert searched.returncode == 0, searched.stderr
    assert "genotype: [(" in searched.stdout and "path: [" in searched.stdout
    trained = run_module("train", "--data", str(folder), "--search", "s.pt", "--steps", "1", "--batch-size", "2",
                         "--patch-size", "32", "--checkpoint", "t.pt", "--no-progress", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    from flexops.models import train as training

    model = training.load_model(tmp_path / "t.pt")
    assert isinstance(model, IRNASNet) and model.width == 2 and model.nodes == 2
    with pytest.raises(SystemExit) as exit_status:  # in this process: one interpreter start less
        importlib.import_module("flexops.models.irnas.__main__").main(
            ["train", "--data", str(folder), "--steps", "1", "--no-progress"])
    assert exit_status.value.code == 2 and "smaller than the patch size 64x64" in capsys.readouterr().err
