"""The tests: behaviour a user relies on, on small generated data, in seconds each.

Run with ``./run.sh test`` (or ``python -m pytest -q test_all.py``). Nothing here needs a GPU or a
download; speed and quality figures live in bench.py, never in a timed test.
"""
import copy
import math
import os
import pickle
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import models
import slimmable
from sampler import (GaussianProcess, JoslimSampler, RandomSampler, UniformSampler,
                     area_under_front, expected_improvement, normal_cdf, pareto_front)

torch.set_num_threads(2)

ALL_NETWORKS = list(models.NETWORKS)


def small_model(name, num_classes=10, **options):
    """A network at a small input resolution (the cost is counted at that resolution)."""
    if name not in models.CIFAR_NETWORKS:
        options.setdefault("input_size", 64)
    return models.get_model(name, num_classes, **options)


def random_widths(model, generator, lower=0.3):
    return [lower + (1 - lower) * generator.random() for _ in model.width_groups]


# ---------------------------------------------------------------------------------------------
# slimmable.py: layers


def test_slim_conv_equals_sliced_torch_conv():
    torch.manual_seed(0)
    slot_in, slot_out = slimmable.ChannelSlot(0, 8), slimmable.ChannelSlot(1, 12)
    conv = slimmable.SlimConv2d(8, 12, 3, 2, 1, in_slot=slot_in, out_slot=slot_out)
    conv.active_out = 7
    reference = nn.Conv2d(5, 7, 3, 2, 1, bias=False)
    reference.weight.data.copy_(conv.weight[:7, :5])
    x = torch.randn(2, 5, 9, 9)
    torch.testing.assert_close(conv(x), reference(x))


def test_slim_depthwise_conv_follows_its_input():
    torch.manual_seed(0)
    conv = slimmable.SlimConv2d(10, 10, 5, 1, 2, groups=10, bias=True)
    reference = nn.Conv2d(6, 6, 5, 1, 2, groups=6, bias=True)
    reference.weight.data.copy_(conv.weight[:6])
    reference.bias.data.copy_(conv.bias[:6])
    x = torch.randn(2, 6, 8, 8)
    torch.testing.assert_close(conv(x), reference(x))


def test_slim_linear_equals_sliced_torch_linear():
    torch.manual_seed(0)
    linear = slimmable.SlimLinear(16, 9)
    linear.active_out = 4
    reference = nn.Linear(11, 4)
    reference.weight.data.copy_(linear.weight[:4, :11])
    reference.bias.data.copy_(linear.bias[:4])
    x = torch.randn(3, 11)
    torch.testing.assert_close(linear(x), reference(x))


def test_slim_batchnorm_shares_a_sliced_bn():
    torch.manual_seed(0)
    bn = slimmable.SlimBatchNorm2d(12)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-1, 1)
    reference = nn.BatchNorm2d(5)
    reference.weight.data.copy_(bn.weight[:5])
    reference.bias.data.copy_(bn.bias[:5])
    x = torch.randn(4, 5, 6, 6) * 3 + 1
    torch.testing.assert_close(bn(x), reference(x))  # training: batch statistics
    torch.testing.assert_close(bn.running_mean[:5], reference.running_mean)
    torch.testing.assert_close(bn.running_var[:5], reference.running_var)
    assert torch.all(bn.running_mean[5:] == 0)  # the rest of the shared buffer is untouched
    bn.eval(), reference.eval()
    torch.testing.assert_close(bn(x), reference(x))


def test_set_widths_rejects_bad_configurations():
    net = models.get_model("slim_resnet20", 10)
    with pytest.raises(ValueError, match="12 width multipliers"):
        slimmable.set_widths(net, [0.5] * 11)
    bad = [0.5] * 12
    bad[3] = 1.5
    with pytest.raises(ValueError, match=r"'layer1\.2\.inner'.*1\.5"):
        slimmable.set_widths(net, bad)
    with pytest.raises(ValueError, match="layer1.residual"):
        slimmable.set_widths(net, 0.0)
    with pytest.raises(ValueError, match="nan"):
        slimmable.set_widths(net, float("nan"))


def test_rounding_rules():
    # divisor 1: round half up, at least 1; divisor 8: torchvision's _make_divisible, clamped.
    assert slimmable.round_channels([0.5, 0.01, 0.42], 16, 1).tolist() == [8, 1, 7]
    assert slimmable.round_channels([0.42, 0.5, 0.56, 1.0], 64, 8).tolist() == [32, 32, 40, 64]
    assert slimmable.round_channels([0.95, 1.0], 36, 8).tolist() == [32, 36]  # at most full


# ---------------------------------------------------------------------------------------------
# models.py


def test_unknown_network_lists_valid_names():
    with pytest.raises(ValueError, match="slim_resnet20.*slim_mobilenetv3_large"):
        models.get_model("resnet1000", 10)


def test_width_group_counts_and_full_costs():
    expected = {  # (groups, MACs, params) at full width: the README table
        "slim_resnet20": (12, 40_551_040, 269_722),
        "slim_resnet56": (30, 125_485_696, 853_018),
        "slim_resnet18": (12, 1_814_073_344, 11_689_512),
        "slim_mobilenetv2": (24, 300_774_272, 3_504_872),
        "slim_mobilenetv3_large": (20, 216_589_760, 5_483_032),
    }
    for name, (groups, mac_count, param_count) in expected.items():
        net = models.get_model(name, 10 if name in models.CIFAR_NETWORKS else 1000)
        assert len(net.width_groups) == groups
        assert slimmable.macs(net) == mac_count
        assert slimmable.params(net) == param_count


@pytest.mark.parametrize("name,factory", [
    ("slim_resnet18", "resnet18"),
    ("slim_mobilenetv2", "mobilenet_v2"),
    ("slim_mobilenetv3_large", "mobilenet_v3_large"),
])
def test_full_width_matches_torchvision(name, factory):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    reference = getattr(torchvision.models, factory)(num_classes=1000).eval()
    for m in reference.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    net = models.get_model(name, 1000)
    net.load_state_dict(reference.state_dict(), strict=True)
    net.eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference(x), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Export, MACs and params


def _randomize_bn(net):
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


@pytest.mark.parametrize("name", ALL_NETWORKS)
def test_export_equals_slimmable_model(name):
    torch.manual_seed(1)
    generator = random.Random(name)
    net = small_model(name).eval()
    _randomize_bn(net)
    size = net.input_size
    x = torch.randn(2, 3, size, size)
    for widths in [1.0, 0.42, random_widths(net, generator), random_widths(net, generator)]:
        slimmable.set_widths(net, widths)
        static = slimmable.export(net, widths)
        assert not any(isinstance(m, slimmable.SLIM_LAYERS) for m in static.modules())
        with torch.no_grad():
            diff = (static(x) - net(x)).abs().max().item()
        assert diff <= 1e-5, (widths, diff)
        assert sum(p.numel() for p in static.parameters()) == slimmable.params(net, widths)
        with FlopCounterMode(display=False) as counter:
            static(x[:1])
        assert counter.get_total_flops() == 2 * slimmable.macs(net, widths)
    # The state_dict plus the configuration rebuild the exported model.
    rebuilt = slimmable.export(small_model(name), widths).eval()
    rebuilt.load_state_dict(static.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), static(x))


def test_vectorized_costs_equal_one_by_one():
    net = models.get_model("slim_resnet56", 100)
    generator = torch.Generator().manual_seed(0)
    configs = 0.42 + 0.58 * torch.rand(50, len(net.width_groups), generator=generator,
                                       dtype=torch.float64)
    batch = slimmable.macs(net, configs.numpy())
    assert batch.shape == (50,)
    assert [int(v) for v in batch] == [slimmable.macs(net, row.tolist()) for row in configs]
    assert torch.equal(slimmable.params(net, configs),
                       torch.tensor([slimmable.params(net, row.tolist()) for row in configs]))
    # Monotone: raising any one multiplier never lowers the cost.
    higher = configs.clone()
    higher[:, 5] = 1.0
    assert (slimmable.macs(net, higher) >= slimmable.macs(net, configs)).all()


def test_channel_config_round_trip():
    net = models.get_model("slim_mobilenetv2", 1000)
    widths = random_widths(net, random.Random(3))
    channels = slimmable.group_channels(net, widths)
    again = slimmable.group_channels(net, slimmable.channels_to_widths(net, channels))
    assert again == channels
    assert slimmable.macs(net, slimmable.channels_to_widths(net, channels)) == slimmable.macs(
        net, widths)


def test_calibrate_bn_is_an_exact_average():
    torch.manual_seed(0)
    net = models.get_model("slim_resnet20", 10)
    slimmable.set_widths(net, 0.5)
    batches = [torch.randn(8, 3, 32, 32) * (1 + i) + i for i in range(3)]
    net.eval()
    assert slimmable.calibrate_bn(net, batches) == 3
    assert not net.training and net.bn1.momentum == 0.1
    c = slimmable.group_channels(net, 0.5)["layer1.residual"]
    with torch.no_grad():
        outputs = [nn.functional.conv2d(x, net.conv1.weight[:c], padding=1) for x in batches]
    mean = torch.stack([o.mean(dim=(0, 2, 3)) for o in outputs]).mean(0)
    var = torch.stack([o.transpose(0, 1).reshape(c, -1).var(dim=1) for o in outputs]).mean(0)
    torch.testing.assert_close(net.bn1.running_mean[:c], mean)
    torch.testing.assert_close(net.bn1.running_var[:c], var)


# ---------------------------------------------------------------------------------------------
# sampler.py

LOWER = 0.42


def chain_cost_fn(full_channels, pixels):
    """A synthetic network cost: a chain of convolutions, layer i (c_i -> c_{i+1}) on `pixels[i]`
    positions, plus a per-layer term; channels are rounded like a real network's,
    c_i = max(1, round(x_i C_i)). Normalized so the full network costs 1.0."""
    full_channels, pixels = np.asarray(full_channels, float), np.asarray(pixels, float)

    def macs(x):
        channels = np.maximum(1.0, np.round(np.asarray(x, float) * full_channels))
        return (channels[:, :-1] * channels[:, 1:]) @ pixels + channels @ np.full(len(full_channels), 30.0)

    full = macs(np.ones((1, len(full_channels))))[0]
    return lambda x: macs(x) / full


NUM_DIMS = 8
COST = chain_cost_fn([16, 32, 32, 64, 64, 128, 128, 256], np.full(7, 9.0))
IMPORTANCE = np.array([3.0, 0.3, 2.0, 0.2, 1.5, 0.1, 1.0, 0.05])


def true_loss(configs):
    """A smooth loss with heterogeneous per-layer importance, so non-uniform widths dominate."""
    return np.exp(-4.0 * np.asarray(configs)) @ IMPORTANCE / IMPORTANCE.sum()


def run_windows(sampler, windows, noise_seed=0, per_window=2):
    """Imitate the trainer: re-score the whole history, then propose the next window's widths."""
    noise = np.random.default_rng(noise_seed)
    proposals = []
    for _ in range(windows):
        history = sampler.history_configs()
        sampler.observe(true_loss(history) + 0.002 * noise.standard_normal(len(history)))
        proposals.append(sampler.propose(per_window))
    return np.vstack(proposals)


# ------------------------------------------------------------------ normal distribution and EI

def test_normal_cdf_matches_math_erf_including_tails():
    z = np.concatenate([np.linspace(-38, 38, 4001), [0.0, 1e-8, -1e-8, 2.5 * math.sqrt(2), -2.5 * math.sqrt(2)]])
    reference = np.array([0.5 * math.erfc(-v / math.sqrt(2.0)) for v in z])
    assert np.abs(normal_cdf(z) - reference).max() < 1e-14
    tail = (z < 0) & (reference > 1e-300)           # relative accuracy down to the subnormals
    assert np.max(np.abs(normal_cdf(z[tail]) / reference[tail] - 1.0)) < 1e-11


def test_expected_improvement_matches_closed_form():
    rng = np.random.default_rng(0)
    mean, std = rng.normal(size=500), rng.uniform(0.01, 3.0, size=500)
    best = 0.3
    z = (best - mean) / std
    cdf = np.array([0.5 * (1.0 + math.erf(v / math.sqrt(2.0))) for v in z])
    pdf = np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    reference = (best - mean) * cdf + std * pdf
    assert np.allclose(expected_improvement(mean, std, best), reference, rtol=1e-9, atol=1e-13)


def test_expected_improvement_nonnegative_and_finite_at_zero_std():
    mean = np.array([0.0, 1.0, -1.0, 0.0, 50.0, -50.0])
    std = np.array([0.0, 0.0, 0.0, 1e-300, 1e-3, 1e-3])
    ei = expected_improvement(mean, std, 0.0)
    assert np.all(np.isfinite(ei)) and np.all(ei >= 0)
    assert ei[0] == 0.0 and ei[1] == 0.0 and ei[2] == 1.0
    assert ei[4] == 0.0 and ei[5] == pytest.approx(50.0)
    far = expected_improvement(np.linspace(0, 30, 50), 1.0, 0.0)   # deep in the tail: decreasing, >= 0
    assert np.all(far >= 0) and np.all(np.diff(far) <= 0)


# ------------------------------------------------------------------ Gaussian process

def matern52_textbook(A, B, lengthscales, signal):
    r = np.sqrt((((A[:, None, :] - B[None, :, :]) / lengthscales) ** 2).sum(-1))
    return signal * (1 + math.sqrt(5) * r + 5 * r ** 2 / 3) * np.exp(-math.sqrt(5) * r)


def random_regression(n, num_dims=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(size=(n, num_dims))
    return X, np.sin(3 * X).sum(1) + 0.1 * rng.standard_normal(n)


@pytest.mark.parametrize("n", [30, 150])               # 150 spans several 64-row Cholesky blocks
def test_gp_posterior_matches_textbook_algorithm(n):
    X, y = random_regression(n)
    test_points = np.random.default_rng(1).uniform(size=(40, 4))
    lengthscales, signal, noise = np.array([0.3, 0.5, 0.8, 1.2]), 1.7, 0.05
    gp = GaussianProcess(lengthscales, signal, noise).fit(X, y, optimize=False)
    # Rasmussen & Williams, Algorithm 2.1.
    L = np.linalg.cholesky(matern52_textbook(X, X, lengthscales, signal) + noise * np.eye(n))
    alpha = np.linalg.solve(L.T, np.linalg.solve(L, y))
    cross = matern52_textbook(X, test_points, lengthscales, signal)
    v = np.linalg.solve(L, cross)
    mean, std = gp.predict(test_points)
    assert np.allclose(mean, cross.T @ alpha, atol=1e-9)
    assert np.allclose(std ** 2, signal - (v * v).sum(0), atol=1e-9)
    lml = -0.5 * y @ alpha - np.log(np.diag(L)).sum() - 0.5 * n * math.log(2 * math.pi)
    assert gp.log_marginal_likelihood() == pytest.approx(lml, abs=1e-8)


def test_adding_observations_equals_refitting_on_all_points():
    X, y = random_regression(100)
    gp = GaussianProcess(np.full(4, 0.5), 1.0, 0.01).fit(X[:70], y[:70], optimize=False)
    gp.add_observations(X[70:], y[70:])
    direct = GaussianProcess(np.full(4, 0.5), 1.0, 0.01).fit(X, y, optimize=False)
    test_points = np.random.default_rng(2).uniform(size=(20, 4))
    for grown, reference in zip(gp.predict(test_points), direct.predict(test_points)):
        assert np.allclose(grown, reference, atol=1e-9)


def test_lml_gradient_matches_finite_differences():
    X, y = random_regression(40, num_dims=5)
    gp = GaussianProcess([0.7, 0.4, 1.1, 2.0, 0.9], 1.3, 0.05).fit(X, y, optimize=False)
    value, grad = gp.log_marginal_likelihood(return_grad=True)
    assert value == pytest.approx(gp.log_marginal_likelihood(), abs=1e-9)
    base = gp.log_params.copy()
    for j in range(len(base)):
        step = np.zeros_like(base)
        step[j] = 1e-5
        values = []
        for sign in (1, -1):
            probe = GaussianProcess(np.ones(5))
            probe.log_params = base + sign * step
            values.append(probe.fit(X, y, optimize=False).log_marginal_likelihood())
        assert grad[j] == pytest.approx((values[0] - values[1]) / 2e-5, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("start", [(0.1, 5.0, 2.0), (1.0, 1.0, 0.1), (3.0, 0.05, 1e-3)])
def test_fit_never_lowers_the_log_marginal_likelihood(start):
    X, y = random_regression(60)
    lengthscale, signal, noise = start
    gp = GaussianProcess(np.full(4, lengthscale), signal, noise).fit(X, y, optimize=False)
    before = gp.log_marginal_likelihood()
    for iterations in (1, 5, 40):
        gp.fit(X, y, iterations=iterations)
        after = gp.log_marginal_likelihood()
        assert after >= before - 1e-9
        before = after
    assert after > GaussianProcess(np.full(4, lengthscale), signal, noise).fit(X, y, optimize=False).log_marginal_likelihood()


def test_duplicate_inputs_are_handled_by_jitter():
    X = np.repeat(np.random.default_rng(0).uniform(size=(10, 3)), 3, axis=0)
    gp = GaussianProcess(np.full(3, 0.5), 1.0, 1e-14).fit(X, np.arange(30.0) % 7, optimize=False)
    mean, std = gp.predict(X[:5])
    assert np.all(np.isfinite(mean)) and np.all(np.isfinite(std))


# ------------------------------------------------------------------ samplers

def test_baselines_propose_in_the_box():
    uniform = UniformSampler(NUM_DIMS, LOWER, seed=0).propose(50)
    assert uniform.shape == (50, NUM_DIMS) and np.all(uniform == uniform[:, :1])
    random = RandomSampler(NUM_DIMS, LOWER, seed=0).propose(50)
    for configs in (uniform, random):
        assert configs.min() >= LOWER and configs.max() <= 1.0
    assert random.std(axis=1).min() > 0
    sampler = RandomSampler(NUM_DIMS, LOWER)
    assert sampler.history_configs().shape == (0, NUM_DIMS)
    sampler.observe(np.zeros(0))
    with pytest.raises(ValueError):
        sampler.observe(np.zeros(3))


@pytest.mark.parametrize("acquisition", ["ei", "ucb"])
def test_joslim_schedule_box_and_target_cost(acquisition):
    sampler = JoslimSampler(NUM_DIMS, LOWER, COST, prior_points=6, acquisition=acquisition,
                            num_candidates=400, seed=3)
    first = sampler.propose(4)                        # prior phase: one multiplier for all layers
    assert np.all(first == first[:, :1]) and np.all(np.isnan(sampler.last_targets))
    sampler.observe(true_loss(sampler.history_configs()))
    second = sampler.propose(3)                       # two uniform, then the full network
    assert np.all(second[2] == 1.0)
    for _ in range(6):
        sampler.observe(true_loss(sampler.history_configs()))
        proposals = sampler.propose(3)
        assert proposals.min() >= LOWER and proposals.max() <= 1.0
        assert np.allclose(sampler.last_costs, COST(proposals), rtol=0, atol=1e-12)
        assert np.all(sampler.last_targets >= COST(np.full((1, NUM_DIMS), LOWER))[0])
        assert np.abs(sampler.last_costs - sampler.last_targets).max() <= 0.01
        assert len(np.unique(proposals, axis=0)) == 3             # distinct within a window
    assert len(sampler.history_configs()) == 7 + 6 * 3
    with pytest.raises(ValueError):
        sampler.observe(np.zeros(2))


def test_joslim_refuses_to_guess_without_observations():
    sampler = JoslimSampler(NUM_DIMS, LOWER, COST, prior_points=2)
    sampler.propose(3)
    with pytest.raises(RuntimeError):
        sampler.propose(1)


def make_samplers():
    return [UniformSampler(NUM_DIMS, LOWER, seed=5), RandomSampler(NUM_DIMS, LOWER, seed=5),
            JoslimSampler(NUM_DIMS, LOWER, COST, prior_points=6, num_candidates=300, seed=5),
            JoslimSampler(NUM_DIMS, LOWER, COST, prior_points=6, num_candidates=300, seed=5, acquisition="ucb")]


@pytest.mark.parametrize("index", range(4))
@pytest.mark.parametrize("snapshot_after", ["observe", "propose"])
def test_state_dict_round_trip_reproduces_next_proposals(index, snapshot_after):
    sampler = make_samplers()[index]
    run_windows(sampler, 5)                               # past the prior phase for the Joslim ones
    if snapshot_after == "observe":
        sampler.observe(true_loss(sampler.history_configs()))
    state = sampler.state_dict()
    restored_by_pickle, restored_by_copy = make_samplers()[index], make_samplers()[index]
    restored_by_pickle.load_state_dict(pickle.loads(pickle.dumps(state)))
    restored_by_copy.load_state_dict(copy.deepcopy(state))
    expected = [sampler.propose(2)] + [run_windows(sampler, 1, noise_seed=9)]
    for restored in (restored_by_pickle, restored_by_copy):
        got = [restored.propose(2)] + [run_windows(restored, 1, noise_seed=9)]
        for a, b in zip(expected, got):
            assert np.array_equal(a, b)


def test_joslim_finds_a_better_front_than_the_baselines():
    """Same budget of 80 proposals; areas under the front of the true, noiseless loss. The cheap
    baselines are averaged over five seeds so the margin does not hinge on one lucky draw."""
    lowest_cost = COST(np.full((1, NUM_DIMS), LOWER))[0]

    def area(sampler, seed=0):
        proposals = run_windows(sampler, 40, noise_seed=seed)
        return area_under_front(COST(proposals), true_loss(proposals), lowest_cost, 1.0)

    uniform = np.mean([area(UniformSampler(NUM_DIMS, LOWER, seed), seed) for seed in range(5)])
    random = np.mean([area(RandomSampler(NUM_DIMS, LOWER, seed), seed) for seed in range(5)])
    joslim = area(JoslimSampler(NUM_DIMS, LOWER, COST, seed=0))
    assert joslim < 0.9 * min(uniform, random), (joslim, uniform, random)
    tchebyshev_ucb = area(JoslimSampler(NUM_DIMS, LOWER, COST, seed=0, acquisition="ucb"))
    assert tchebyshev_ucb < 0.9 * uniform, (tchebyshev_ucb, uniform)


# ------------------------------------------------------------------ Pareto helpers

COSTS = [0.5, 0.2, 0.2, 0.8, 0.5, 1.0, 0.2]
LOSSES = [0.3, 0.6, 0.6, 0.1, 0.4, 0.1, 0.7]


def test_pareto_front_hand_example():
    # (0.2, 0.6) twice: the first is kept; (0.2, 0.7), (0.5, 0.4), (1.0, 0.1) are dominated.
    assert pareto_front(COSTS, LOSSES).tolist() == [1, 0, 3]
    assert pareto_front([0.3, 0.1], [np.nan, 0.5]).tolist() == [1]


def test_area_under_front_hand_example():
    # Step curve: 0.6 up to cost 0.5 (extended flat below the cheapest point), 0.3 up to 0.8, then 0.1.
    assert area_under_front(COSTS, LOSSES, 0.1, 1.0) == pytest.approx((0.6 * 0.4 + 0.3 * 0.3 + 0.1 * 0.2) / 0.9)
    assert area_under_front(COSTS, LOSSES, 0.2, 0.9) == pytest.approx((0.6 * 0.3 + 0.3 * 0.3 + 0.1 * 0.1) / 0.7)
    assert area_under_front(COSTS, LOSSES, 0.2, 0.6) == pytest.approx((0.6 * 0.3 + 0.3 * 0.1) / 0.4)
    assert area_under_front([0.5], [0.2], 0.0, 1.0) == pytest.approx(0.2)
    assert pareto_front([], []).tolist() == []
    with pytest.raises(ValueError):
        area_under_front([], [], 0.0, 1.0)


def test_max_scored_bounds_rescoring_to_the_front_and_new_proposals():
    sampler = JoslimSampler(NUM_DIMS, LOWER, COST, prior_points=4, seed=0, max_scored=10)
    run_windows(sampler, 12)  # 24 configurations
    assert len(sampler.configs) == 24
    chosen = sampler.history_configs()
    assert len(chosen) == 10
    # The two newest proposals were never scored: they are always re-scored.
    newest = sampler.configs[-2:]
    assert all(any(np.array_equal(row, c) for c in chosen) for row in newest)
    sampler.observe(true_loss(chosen))
    assert np.isfinite(sampler.losses).sum() == len(chosen)
    proposal = sampler.propose(2)
    assert proposal.shape == (2, NUM_DIMS)


# ---------------------------------------------------------------------------------------------
# train.py

import train  # noqa: E402  (the trainer's tests come after the layers')

REPO = os.path.dirname(os.path.abspath(__file__))
TINY_DATA = ["--synthetic_train", "320", "--synthetic_test", "64", "--val_size", "64",
             "--workers", "0"]
TINY_RUN = ["--network", "slim_resnet20", "--batch_size", "32", "--epochs", "2",
            "--print_freq", "5", "--tau", "3", "--prior_points", "2", "--threads", "1"] + TINY_DATA


def with_flag(args, flag, value):
    """``args`` with ``flag`` set to ``value`` (replaced if present)."""
    args = list(args)
    if flag in args:
        args[args.index(flag) + 1] = value
        return args
    return args + [flag, value]


def run_script(script, *args, cwd, env=None, timeout=300):
    """Run one of the project's scripts as a user would; returns the CompletedProcess."""
    environment = dict(os.environ, PYTHONPATH=REPO, **(env or {}))
    return subprocess.run([sys.executable, os.path.join(REPO, script), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=environment)


def load_run(directory, name):
    return torch.load(os.path.join(directory, "runs", name, "checkpoint.pt"), weights_only=False)


@pytest.mark.parametrize("method", ["joslim", "slim", "random"])
def test_train_one_short_run_per_method(method, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert train.main(["--name", method, "--method", method] + TINY_RUN) == 0
    checkpoint = load_run(tmp_path, method)
    assert checkpoint["finished"] and checkpoint["step"] == 2 * 8  # (320 - 64) // 32 per epoch
    log = (tmp_path / "runs" / method / "log.txt").read_text()
    assert "loss full" in log and "img/s" in log and "done:" in log
    if method == "joslim":
        history = checkpoint["sampler"]["configs"]
        assert len(history) == 2 * 6  # 2 proposals per window, a window every 3 of 16 steps
        assert np_all_finite(checkpoint["sampler"]["losses"][:-2])
    # Rerunning a finished run changes nothing and says so.
    assert train.main(["--name", method, "--method", method] + TINY_RUN) == 0
    assert "already finished" in (tmp_path / "runs" / method / "log.txt").read_text()


def np_all_finite(values):
    return bool(torch.isfinite(torch.as_tensor(values)).all())


def test_train_fixed_configurations(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    net = models.get_model("slim_resnet20", 10)
    paths = []
    for i, widths in enumerate([0.5, 0.75]):
        paths.append(str(tmp_path / f"config{i}.json"))
        slimmable.save_config(paths[-1], net, widths)
    assert train.main(["--name", "fixed", "--method", "fixed", "--channel_config", *paths]
                      + TINY_RUN) == 0
    checkpoint = load_run(tmp_path, "fixed")
    assert checkpoint["fixed_configs"] == [[0.5] * 12, [0.75] * 12]


def test_resume_reproduces_an_uninterrupted_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert train.main(["--name", "whole"] + TINY_RUN) == 0
    # Pause mid-epoch, inside a Joslim window, then rerun the same command twice.
    assert train.main(["--name", "parts", "--pause_after", "7"] + TINY_RUN) == 0
    assert not load_run(tmp_path, "parts")["finished"]
    assert train.main(["--name", "parts", "--pause_after", "6"] + TINY_RUN) == 0
    assert train.main(["--name", "parts"] + TINY_RUN) == 0
    whole, parts = load_run(tmp_path, "whole"), load_run(tmp_path, "parts")
    assert parts["finished"] and parts["step"] == whole["step"]
    for key, value in whole["model"].items():
        torch.testing.assert_close(parts["model"][key], value, msg=key)
    assert (whole["sampler"]["configs"] == parts["sampler"]["configs"]).all()


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint.pt")
    train.save_checkpoint(path, {"step": 1})

    def crash_midway(obj, target):
        with open(target, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise KeyboardInterrupt  # killed while writing

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        train.save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert torch.load(path, weights_only=False) == {"step": 1}


def test_train_refuses_another_runs_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert train.main(["--name", "run"] + with_flag(TINY_RUN, "--epochs", "1")) == 0
    before = (tmp_path / "runs" / "run" / "checkpoint.pt").read_bytes()
    result = run_script("train.py", "--name", "run", "--method", "slim",
                        *with_flag(TINY_RUN, "--epochs", "1"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--restart" in result.stderr
    assert (tmp_path / "runs" / "run" / "checkpoint.pt").read_bytes() == before


@pytest.mark.parametrize("args,message", [
    (["--epochs", "0"], "--epochs"),
    (["--method", "fixed"], "--channel_config"),
    (["--network", "resnet1000"], "resnet1000"),
    (["--dataset", "CIFAR10", "--datapath", "/nonexistent"], "/nonexistent"),
    (["--method", "fixed", "--channel_config", "/nonexistent.json"], "/nonexistent.json"),
])
def test_train_user_errors_exit_2_with_one_line(args, message, tmp_path):
    result = run_script("train.py", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_torchrun_two_processes_agree(tmp_path):
    environment = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               "--rdzv_backend=c10d", "--rdzv_endpoint=localhost:0",
               os.path.join(REPO, "train.py"), "--name", "ddp"] + with_flag(TINY_RUN, "--epochs", "1")
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env=environment)
    assert result.returncode == 0, result.stdout + result.stderr
    log = (tmp_path / "runs" / "ddp" / "log.txt").read_text()
    assert "over 2 process(es)" in log
    assert "all 2 ranks hold identical weights and trained the same configurations" in log
