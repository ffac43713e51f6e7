"""The tests: behaviour a user relies on, on small generated data, in seconds each.

Run with ``./run.sh test`` (or ``python -m pytest -q test_all.py``). Nothing here needs a GPU or a
download; speed and quality figures live in bench.py, never in a timed test.
"""
import random

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import models
import slimmable

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
