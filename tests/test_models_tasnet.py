"""TASNet: gates, the EMA and sharing rules, the regularisers on hand-computed cases, the deploy form
against an independent dense masked implementation, its MAC count, memory bounding, and bad inputs."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import flexops
from flexops.flops import count
from flexops.models import data
from flexops.models.cresmd import CResMD
from flexops.models.tasnet import TASNet, TASNetDeploy, agreement_regularizer, flops_regularizer, gate, search
from flexops.ops import ArgumentError


def random_cresmd(nf=8, nb=2):
    net = CResMD(nf=nf, nb=nb)
    for p in net.parameters():  # far from the 0.1-scaled init, so every layer matters
        nn.init.normal_(p, std=0.3)
    return net


def dense_masked_reference(net, x, task, masks, shared, task_mean):
    """One task through CResMD with channels zeroed: conv n reads map n-1 with its off channels zeroed
    and zeroes its own off channels (upconv: per shuffled channel); shared blocks scale with t-bar."""
    keep = [None] + [m.float()[None, :, None, None] for m in masks] + [None]

    def conv(n, layer, input):
        if keep[n - 1] is not None:
            input = input * (keep[n - 1] if input.shape[1] == keep[n - 1].shape[1] else 1)
        out = layer(input)
        if keep[n] is not None:
            out = out * keep[n].repeat_interleave(out.shape[1] // keep[n].shape[1], 1)
        return out

    fea = conv(1, net.conv_first, x)
    n = 2
    for b, block in enumerate(net.recon_trunk):
        scale = block.local_scale(task_mean if 2 * b + 3 <= shared else task)
        res = conv(n + 1, block.conv2, F.relu(conv(n, block.conv1, fea)))
        fea = fea + res * scale.view(1, -1, 1, 1)
        n += 2
    out = F.relu(F.pixel_shuffle(conv(n, net.upconv, fea), 2))
    out = conv(n + 2, net.conv_last, F.relu(conv(n + 1, net.HRconv, out)))
    return x + out * net.global_scale(task).view(1, -1, 1, 1)


# ---- gates, EMA, sharing -------------------------------------------------------------------------


def test_gate_value_is_a_step_and_gradient_is_the_sigmoids():
    z = torch.tensor([-2.0, -0.1, 0.0, 0.3, 5.0], dtype=torch.float64, requires_grad=True)
    g = gate(z)
    assert g.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    g.sum().backward()
    s = torch.sigmoid(z.detach())
    torch.testing.assert_close(z.grad, s * (1 - s))


def test_task_agnostic_importance_is_an_ema_of_the_batch_mean():
    model = TASNet(nf=4, nb=1, momentum=0.9)
    x = torch.rand(3, 3, 8, 8)
    tasks = [torch.rand(3, 3) for _ in range(3)]
    expected, expected_mean = None, None
    for t in tasks:
        z = model.controller(t).mean(0).detach()
        expected = z if expected is None else 0.9 * expected + 0.1 * z
        expected_mean = t.mean(0) if expected_mean is None else 0.9 * expected_mean + 0.1 * t.mean(0)
        model(x, t)
    torch.testing.assert_close(model.z_agnostic, expected)
    torch.testing.assert_close(model.task_mean, expected_mean)
    frozen = model.z_agnostic.clone()
    model.eval()
    model(x, tasks[0])
    assert torch.equal(model.z_agnostic, frozen)


def test_sharing_is_the_cumulative_product_of_agreement():
    model = TASNet(nf=4, nb=1, gamma=0.5)  # 5 maps
    g_a = torch.ones(5, 4)
    g_s = torch.ones(2, 5, 4)
    g_s[:, 1, :3] = 0  # map 2: tasks keep 1 of 4 shared channels: eta = 0
    g_s[0, 3, :] = 0  # map 4: mean kept 2 of 4, not > 0.5 * 4: eta = 0
    assert model.agreement(g_s, g_a).tolist() == [True, False, False, False, False]
    g_s[:, 1] = 1  # map 2 agrees again; map 3 agrees but map 4 does not, and map 5's eta = 1 is not re-shared
    assert model.agreement(g_s, g_a).tolist() == [True, True, True, False, False]
    assert not TASNet(nf=4, nb=1, share=False).agreement(g_s, g_a).any()  # TSNet


# ---- regularisers --------------------------------------------------------------------------------


def test_flops_regularizer_against_cresmd_macs():
    net = CResMD(nf=4, nb=2)
    costs = flexops.models.tasnet.cost.pair_costs(net, 8, 12)
    conv_macs = net.macs(8, 12) - (net.nb * net.nf + 3) * net.cond_dim
    on_s, on_a = torch.ones(5, net.num_maps, 4), torch.ones(net.num_maps, 4)
    assert flops_regularizer(costs, on_s, on_a, torch.zeros(net.num_maps), net) == 2 * 5 * conv_macs
    assert flops_regularizer(costs, on_s, on_a, torch.ones(net.num_maps), net) == 2 * conv_macs


def test_flops_regularizer_hand_case():
    net = CResMD(nf=2, nb=1)  # maps: conv_first, conv1, conv2, upconv, HRconv (+ conv_last)
    costs = flexops.models.tasnet.cost.pair_costs(net, 4, 4)  # half: 9 * 4, full: 9 * 16
    assert costs.tolist() == [36, 36, 36, 144, 144, 144]
    g_a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    g_s = torch.tensor([[[1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    phi = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0])
    # Shared: conv_first 3 x 1, conv1 1 x 2. Task-specific (eq. 9 reads g^s on both sides): conv2 1 x 1,
    # upconv 1 x 1, HRconv 1 x 1, conv_last 1 x 3.
    expected = 2 * (36 * 3 * 1 + 36 * 1 * 2 + 36 * 1 * 1 + 144 * 1 + 144 * 1 + 144 * 3)
    assert flops_regularizer(costs, g_s, g_a, phi, net) == expected


def test_agreement_regularizer_hand_case():
    g_a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    g_s = torch.tensor([[[1.0, 1.0], [0.0, 1.0], [1.0, 1.0]], [[1.0, 0.0], [1.0, 1.0], [1.0, 0.0]]])
    # |g_s - g_a| summed over tasks and channels per map: 1, 1, 3; weights phi_{n-1} = 1, 1, 0.
    assert agreement_regularizer(g_s, g_a, torch.tensor([1.0, 0.0, 0.0])) == 2
    assert agreement_regularizer(g_a.expand(2, -1, -1), g_a, torch.ones(3)) == 0


def test_search_forward_returns_normalised_regularisers_and_gradients():
    model = TASNet(nf=4, nb=1)
    out = model(torch.rand(4, 3, 8, 8), torch.rand(4, 3))
    assert out.image.shape == (4, 3, 8, 8)
    assert out.flops.item() == pytest.approx(1 / 4)  # all gates on and all maps shared at the start
    assert out.agreement.item() == pytest.approx(0, abs=1e-6)
    (out.image.sum() + out.flops + out.agreement).backward()
    assert all(p.grad is not None for p in model.parameters())


# ---- deploy form ---------------------------------------------------------------------------------


def test_full_width_unshared_deploy_is_cresmd_task_by_task():
    net = random_cresmd()
    deploy = TASNetDeploy.from_widths(net, 0, 8, 8)
    x, tasks = torch.rand(1, 3, 12, 16), torch.rand(5, 3)
    out = deploy(x, tasks)
    for m in range(5):
        torch.testing.assert_close(out[m : m + 1], net(x, tasks[m]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_shared", [0, 3, 4, 7])
def test_deploy_equals_a_dense_masked_reference_and_each_task_alone(n_shared):
    net = random_cresmd()
    deploy = TASNetDeploy.from_widths(net, n_shared, 5, 3, seed=1)
    x, tasks = torch.rand(1, 3, 10, 14), data.CRESMD_27_TASKS[::4]
    out = deploy(x, tasks)
    masks = deploy.masks(tasks)
    assert masks.shape == (len(tasks), net.num_maps, 8)
    assert (masks[:, :n_shared].sum(-1) == 5).all() and (masks[:, n_shared:].sum(-1) == 3).all()
    assert (masks[:, :n_shared] == masks[:1, :n_shared]).all()
    for m in range(len(tasks)):
        expected = dense_masked_reference(net, x, tasks[m : m + 1], masks[m], n_shared, deploy.task_mean[None])
        torch.testing.assert_close(out[m : m + 1], expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out[m : m + 1], deploy(x, tasks[m : m + 1]), rtol=1e-6, atol=1e-6)


def test_task_specific_layers_are_one_masked_conv2d_call_for_all_tasks(monkeypatch):
    import flexops.models.tasnet.deploy as deploy_module

    calls = []
    original = deploy_module.masked_conv2d

    def recording(input, weight, *args):
        out = original(input, weight, *args)
        calls.append((input.shape[0], out.shape[0]))
        return out

    monkeypatch.setattr(deploy_module, "masked_conv2d", recording)
    net = random_cresmd()
    deploy = TASNetDeploy.from_widths(net, 4, 5, 3)
    deploy(torch.rand(1, 3, 8, 8), torch.rand(6, 3))
    # 8 convolutions: 4 shared ones on the single map, the first task-specific one broadcasts it.
    assert calls == [(1, 1)] * 4 + [(1, 6)] + [(6, 6)] * 3


def test_searched_model_deploys_to_the_same_outputs():
    model = TASNet(nf=8, nb=2)
    for p in model.supernet.parameters():
        nn.init.normal_(p, std=0.3)
    for head in model.controller.heads:
        nn.init.normal_(head[2].weight, std=1.0)
        nn.init.normal_(head[2].bias, std=0.5)
    x, tasks = torch.rand(1, 3, 8, 12), torch.rand(4, 3)
    model(x.expand(4, -1, -1, -1), tasks)  # one search step sets z^a and t-bar
    model.shared.copy_(torch.arange(model.num_maps) < 4)  # a shared prefix of 4 maps
    model.eval()
    deploy = model.deploy()
    assert deploy.n_shared == 4
    torch.testing.assert_close(deploy(x, tasks), model(x.expand(4, -1, -1, -1), tasks).image, rtol=1e-5, atol=1e-5)


def test_deploy_macs_formula_equals_fvcore():
    deploy = TASNetDeploy.from_widths(random_cresmd(), 3, 5, 3)
    x, tasks = torch.rand(1, 3, 12, 16), torch.rand(4, 3)
    assert count(deploy, x, tasks) == deploy.macs(12, 16, tasks)
    everything_shared = TASNetDeploy.from_widths(random_cresmd(), 7, 5, 3)
    assert count(everything_shared, x, tasks) == everything_shared.macs(12, 16, tasks)


def test_paper_configuration_costs():
    with torch.device("meta"):
        cresmd = CResMD()
    cresmd = cresmd.to_empty(device="cpu")  # macs needs only the controller's masks, not trained weights
    tasks = data.CRESMD_27_TASKS
    per_inference = 27 * cresmd.macs(720, 1280)
    paper = TASNetDeploy.from_widths(cresmd, 42, 32, 18)
    assert paper.macs(720, 1280, tasks) / per_inference == pytest.approx(0.0408, abs=5e-5)  # paper: 4.02 %
    shared = TASNetDeploy.from_widths(cresmd, cresmd.num_maps, 64, 64)  # Table 4's 99 % row: 1 / 27
    assert shared.macs(720, 1280, tasks) / per_inference == pytest.approx(1 / 27, rel=1e-6)


def test_tiles_and_task_chunks_give_the_untiled_result():
    deploy = TASNetDeploy.from_widths(random_cresmd(nb=1), 2, 5, 3)
    x, tasks = torch.rand(1, 3, 96, 80), torch.rand(5, 3)
    whole = deploy(x, tasks)
    assert deploy.plan(96, 80, 5) == (None, 5)
    torch.testing.assert_close(deploy(x, tasks, tile=8), whole, rtol=1e-5, atol=1e-5)
    assert deploy.plan(96, 80, 5, max_memory=1_000_000) == (64, 1)  # the smallest tile, one task at a time
    torch.testing.assert_close(deploy(x, tasks, max_memory=1_000_000), whole, rtol=1e-5, atol=1e-5)


def test_deploy_bad_inputs():
    deploy = TASNetDeploy.from_widths(random_cresmd(), 2, 4, 4)
    with pytest.raises(ArgumentError, match=r"tasks must be \[3\] or \[M, 3\]"):
        deploy(torch.rand(1, 3, 8, 8), torch.rand(4, 2))
    with pytest.raises(ArgumentError, match=r"tasks must lie in \[0, 1\] componentwise .*got \[\[2.0, 0.0, 0.0\]\]"):
        deploy(torch.rand(1, 3, 8, 8), torch.tensor([[2.0, 0, 0]]))
    with pytest.raises(ValueError, match="x must be one image"):
        deploy(torch.rand(2, 3, 8, 8), torch.rand(4, 3))
    with pytest.raises(ValueError, match="even"):
        deploy(torch.rand(1, 3, 8, 7), torch.rand(4, 3))
    with pytest.raises(ValueError, match="n_shared must be in"):
        TASNetDeploy.from_widths(random_cresmd(), 8, 4, 4)
    with pytest.raises(ValueError, match="ts_width must be in"):
        TASNetDeploy.from_widths(random_cresmd(), 2, 4, 9)


# ---- search --------------------------------------------------------------------------------------


def test_search_runs_end_to_end_on_the_sample_photos(tmp_path):
    model = search(steps=3, patch_size=32, batch_size=4, nf=8, nb=2, checkpoint=tmp_path / "s.pt", progress=False)
    assert isinstance(model, TASNet) and not model.training
    deploy = model.deploy()
    out = deploy(torch.rand(1, 3, 16, 16), data.CRESMD_27_TASKS[:3])
    assert out.shape == (3, 3, 16, 16) and torch.isfinite(out).all()
    assert (tmp_path / "s.pt").is_file()
