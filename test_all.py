"""The tests: behaviour a user relies on, on small generated data, in seconds each.

Run with ``./run.sh test`` (or ``python -m pytest -q test_all.py``). Nothing here needs a GPU or a
download; speed and quality figures live in bench.py, never in a timed test.
"""
import argparse
import ast
import contextlib
import copy
import glob
import io
import json
import math
import os
import pickle
import platform
import random
import runpy
import shlex
import shutil
import subprocess
import sys
import textwrap
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

try:
    import lmdb
except ImportError:  # optional, as in data.py: the LMDB tests skip where it is missing
    lmdb = None

import data
import evaluate
import models
import runs
import search
import slimmable
import train
from sampler import (GaussianProcess, JoslimSampler, RandomSampler, UniformSampler,
                     area_under_front, expected_improvement, normal_cdf, pareto_front)

needs_lmdb = pytest.mark.skipif(lmdb is None, reason="the lmdb package is not installed")

# One thread per pytest-xdist worker (./run.sh test runs two), two when run alone.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)

# Shared constants and the tiny generated data every script test trains on.
REPO = os.path.dirname(os.path.abspath(__file__))
ALL_NETWORKS = list(models.NETWORKS)


def with_flag(args, flag, value):
    """``args`` with ``flag`` set to ``value`` (replaced if present)."""
    args = list(args)
    if flag in args:
        args[args.index(flag) + 1] = value
        return args
    return args + [flag, value]


def with_flags(args, **values):
    """``args`` with every ``--flag value`` of ``values`` set (``with_flag`` each)."""
    for flag, value in values.items():
        args = with_flag(args, f"--{flag}", str(value))
    return args


TINY_DATA = ["--synthetic_train", "96", "--synthetic_test", "32", "--val_size", "32",
             "--workers", "0"]
# 8 steps of 8 images an epoch; 4 training-curve points a run: the default 16 would evaluate two
# networks after every step
TINY_RUN = ["--network", "slim_resnet20", "--batch_size", "8", "--epochs", "2",
            "--print_freq", "5", "--tau", "3", "--prior_points", "2", "--threads", "1",
            "--curve_points", "4"] + TINY_DATA
# evaluate.py's tests: 4 classes; search.py's: a larger held-out split for its candidates
EVAL_TINY_DATA = with_flags(TINY_DATA, synthetic_train=176, synthetic_test=96, val_size=48,
                            synthetic_classes=4)
SEARCH_DATA = with_flags(TINY_DATA, synthetic_train=250, synthetic_test=100, val_size=100)


def run_main(module, *argv, cwd=None):
    """``python MODULE.py ARGV`` run as ``module.main(argv)`` in this process (a process would
    pay seconds of CPU to import torch): a CompletedProcess with the exit status (argparse's exits
    included) and what it printed, the warnings a fresh Python would show on stderr (those printed
    at import or by native code straight to file descriptor 2 are not seen). For a script's
    behaviour, not its process: signals, locks between processes and torchrun keep processes."""
    out, err, previous, threads = io.StringIO(), io.StringIO(), os.getcwd(), torch.get_num_threads()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()  # Python's default filters, not pytest's
        warnings.simplefilter("default")
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning,
                         ResourceWarning):
            warnings.simplefilter("ignore", category)
        try:
            os.chdir(cwd or previous)
            status = module.main(list(argv))
        except SystemExit as leaving:
            status = leaving.code
            if isinstance(status, str):  # sys.exit("message"): printed, status 1, as Python does
                err.write(status + "\n")
                status = 1
        finally:
            os.chdir(previous)
            torch.set_num_threads(threads)  # --threads holds for the command, not the test run
    err.write("".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno)
                      for w in caught))
    return subprocess.CompletedProcess([f"{module.__name__}.py", *argv], status or 0,
                                       out.getvalue(), err.getvalue())  # None: sys.exit(None)


def small_model(name, num_classes=10, **options):
    """A network at a small input resolution (the cost is counted at that resolution)."""
    if name not in models.CIFAR_NETWORKS:
        options.setdefault("input_size", 64)
    return models.get_model(name, num_classes, **options)


def random_widths(model, generator, lower=0.3):
    return [lower + (1 - lower) * generator.random() for _ in model.width_groups]


# ---------------------------------------------------------------------------------------------
# slimmable.py: layers


class TestSlimmableLayers:
    """slimmable.py: the layers, width groups and rounding."""

    def test_slim_conv_equals_sliced_torch_conv(self):
        torch.manual_seed(0)
        slot_in, slot_out = slimmable.ChannelSlot(0, 8), slimmable.ChannelSlot(1, 12)
        conv = slimmable.SlimConv2d(8, 12, 3, 2, 1, in_slot=slot_in, out_slot=slot_out)
        conv.active_out = 7
        reference = nn.Conv2d(5, 7, 3, 2, 1, bias=False)
        reference.weight.data.copy_(conv.weight[:7, :5])
        x = torch.randn(2, 5, 9, 9)
        torch.testing.assert_close(conv(x), reference(x))

    def test_slim_bn_reading_a_concatenation_updates_only_its_kept_channels(self):
        """A BN after a concatenation (DenseNet) uses the channels ``in_index`` and writes their
        running statistics back into the shared buffers; the others stay as they were."""
        torch.manual_seed(0)
        bn = slimmable.SlimBatchNorm2d(6)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.in_index = torch.tensor([0, 1, 4])
        x = torch.randn(4, 3, 5, 5) * 2 + 1
        reference = nn.BatchNorm2d(3)
        reference.weight.data.copy_(bn.weight.data[bn.in_index])
        torch.testing.assert_close(bn.train()(x), reference.train()(x))
        torch.testing.assert_close(bn.running_mean[bn.in_index], reference.running_mean)
        torch.testing.assert_close(bn.running_var[bn.in_index], reference.running_var)
        assert bn.running_mean[[2, 3, 5]].eq(0).all() and bn.running_var[[2, 3, 5]].eq(1).all()
        assert int(bn.num_batches_tracked) == 1

    def test_slim_depthwise_conv_follows_its_input(self):
        torch.manual_seed(0)
        conv = slimmable.SlimConv2d(10, 10, 5, 1, 2, groups=10, bias=True)
        reference = nn.Conv2d(6, 6, 5, 1, 2, groups=6, bias=True)
        reference.weight.data.copy_(conv.weight[:6])
        reference.bias.data.copy_(conv.bias[:6])
        x = torch.randn(2, 6, 8, 8)
        torch.testing.assert_close(conv(x), reference(x))

    def test_slim_linear_equals_sliced_torch_linear(self):
        torch.manual_seed(0)
        linear = slimmable.SlimLinear(16, 9)
        linear.active_out = 4
        reference = nn.Linear(11, 4)
        reference.weight.data.copy_(linear.weight[:4, :11])
        reference.bias.data.copy_(linear.bias[:4])
        x = torch.randn(3, 11)
        torch.testing.assert_close(linear(x), reference(x))

    def test_slim_batchnorm_shares_a_sliced_bn(self):
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

    def test_set_widths_rejects_bad_configurations(self):
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
        two = [[0.5] * 12, [1.0] * 12]  # N configurations where one is wanted: not the first
        for one_only in (slimmable.set_widths, slimmable.group_channels, slimmable.config_record):
            with pytest.raises(ValueError, match=r"one configuration of 12 .* shape \(2, 12\)"):
                one_only(net, two)
        assert slimmable.macs(net, two).tolist() == [slimmable.macs(net, 0.5), slimmable.macs(net)]
        for number in (np.float32(0.5), torch.tensor(0.5), np.float64(0.5)):  # any scalar
            assert slimmable.macs(net, number) == slimmable.macs(net, 0.5)

    def test_rounding_rules(self):
        # divisor 1: round half up, at least 1; divisor 8: torchvision's _make_divisible, clamped.
        assert slimmable.round_channels([0.5, 0.01, 0.42], 16, 1).tolist() == [8, 1, 7]
        assert slimmable.round_channels([0.42, 0.5, 0.56, 1.0], 64, 8).tolist() == [32, 32, 40, 64]
        assert slimmable.round_channels([0.95, 1.0], 36, 8).tolist() == [32, 36]  # at most full
        with pytest.raises(ValueError, match="full 26 channels round to 24 under divisor 8"):
            slimmable.add_group([], "squeeze", 26, divisor=8)  # full width out of reach
        with pytest.raises(ValueError, match="whole groups of 4 channels.*multiple of 4, not 1"):
            slimmable.SlimConv2d(64, 64, 3, groups=16, in_slot=slimmable.add_group([], "g", 64))
        # every slot at once (set_widths, the costs): each column as if rounded alone
        multipliers = torch.rand(50, 4, dtype=torch.float64) * 0.99 + 0.01
        full, divisor = torch.tensor([16, 64, 36, 26]), torch.tensor([1, 8, 8, 2])
        columns = [slimmable.round_channels(multipliers[:, k], int(full[k]), int(divisor[k]))
                   for k in range(4)]
        assert torch.equal(slimmable.round_channels(multipliers, full, divisor),
                           torch.stack(columns, dim=1))


class TestCopiedAlone:
    """The files people copy into their projects work alone: each runs its docstring's example
    in a folder holding nothing else of this project."""

    @pytest.mark.parametrize("files,first_line", [
        (["slimmable.py"], "import torch, torch.nn as nn, slimmable"),
        (["sampler.py"], "import numpy as np"), (["data.py"], "import argparse, data")])
    def test_each_file_runs_its_own_example(self, tmp_path, files, first_line):
        for file in files:
            shutil.copy(os.path.join(REPO, file), tmp_path)
        docstring = ast.get_docstring(ast.parse(Path(REPO, files[0]).read_text()))
        example = textwrap.dedent(docstring[docstring.index("    " + first_line):])
        result = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, text=True,
                                capture_output=True, timeout=120,
                                env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""})
        assert result.returncode == 0, result.stderr
        if files == ["slimmable.py"]:  # the figures its comment gives
            assert result.stdout.splitlines()[0] == "221264 322"

    def test_models_writes_the_autoslim_configs_into_a_new_folder(self, tmp_path, monkeypatch,
                                                                  capsys):
        monkeypatch.chdir(tmp_path)  # no configs/ folder here
        for argv, status in ((["write-configs"], None), (["--help"], 2)):
            monkeypatch.setattr(sys, "argv", ["models.py", *argv])
            with pytest.raises(SystemExit) if status else contextlib.nullcontext() as leaving:
                runpy.run_path(os.path.join(REPO, "models.py"), run_name="__main__")
            assert status is None or leaving.value.code == status
        assert sorted(os.listdir("configs")) == [
            f"autoslim_mbv2_{label}.json" for label in ("220M", "320M", "530M")]
        assert capsys.readouterr().err.startswith("usage: python models.py")


# ---------------------------------------------------------------------------------------------
# models.py


class TestModels:
    """models.py: the networks, their width groups and torchvision's names."""

    def test_unknown_network_lists_valid_names(self):
        with pytest.raises(ValueError, match="slim_resnet20.*slim_mobilenetv3_large"):
            models.get_model("resnet1000", 10)
        for count in (0, -1, 2.5):
            with pytest.raises(ValueError, match="num_classes must be a whole number >= 1"):
                models.get_model("slim_resnet20", count)

    def test_width_group_counts_and_full_costs(self):
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
    def test_full_width_matches_torchvision(self, name, factory):
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

    @pytest.mark.parametrize("width_mult", [0.35, 0.5, 0.75, 1.5])
    def test_mobilenetv2_narrows_every_stage_at_any_width_mult(self, width_mult):
        # Under width_mult < 1 neighbouring stages can round to one channel count (16 and 16 at
        # 0.5); each is still a group of its own, and only the last 1x1 conv has a fixed width.
        net = models.get_model("slim_mobilenetv2", 10, width_mult=width_mult, input_size=32)
        assert len(net.width_groups) == 24
        fixed = [name for name, layer in slimmable.slim_layers(net)
                 if isinstance(layer, slimmable.SlimConv2d) and layer.out_slot is None]
        assert fixed == ["features.18.0"]


# ---------------------------------------------------------------------------------------------
# Export, MACs and params


def _randomize_bn(net):
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


def measured_memory(static, size, in_channels=3):
    """Peak activation memory (elements) of one batch-1 forward of an exported model, seen by
    hooks on the real tensors: at every conv, linear and pooling layer, the elements of its
    input, its output and the tensors held for later (a residual block's input; a projection
    block's main path while its shortcut conv runs; an SE block's input), each storage once.
    Returns the per-layer list, in execution order (its maximum is the peak)."""
    held, per_layer = [], []  # held: (owning block, tensor)

    def on_layer(m, inputs, output):
        tensors = [inputs[0], output] + [t for _, t in held]
        per_layer.append(sum({t.untyped_storage().data_ptr(): t.numel() for t in tensors}.values()))

    def hold(block):
        return lambda m, inputs, output=None: held.append((block, inputs[0] if output is None
                                                           else output))

    def release(block, inputs, output):
        held[:] = [(b, t) for b, t in held if b is not block]

    from torchvision.models import mobilenetv2, mobilenetv3, resnet
    from torchvision.ops import SqueezeExcitation
    hooks = []
    for m in static.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.AdaptiveAvgPool2d)):
            hooks.append(m.register_forward_hook(on_layer))
        keeps_input = isinstance(m, (models.BasicBlock, resnet.BasicBlock, SqueezeExcitation)) or \
            (isinstance(m, (mobilenetv2.InvertedResidual, mobilenetv3.InvertedResidual))
             and m.use_res_connect)
        if keeps_input:
            hooks += [m.register_forward_pre_hook(hold(m)), m.register_forward_hook(release)]
        if isinstance(m, resnet.BasicBlock) and m.downsample is not None:
            hooks.append(m.bn2.register_forward_hook(lambda _, i, o, block=m: held.append((block, o))))
    with torch.no_grad():
        static.eval()(torch.randn(1, in_channels, size, size))
    for hook in hooks:
        hook.remove()
    return per_layer


def mmcv_style_count(model, size):
    """mmcv's counting rules (slimmable.mmcv_flops' docstring), applied by forward hooks to a
    model's plain modules: an independent check of the analytic count."""
    total = [0]

    def hook(m, inputs, output):
        x = inputs[0]
        if isinstance(m, nn.Conv2d):
            per_position = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
            total[0] += output.numel() * per_position + (output.numel() if m.bias is not None else 0)
        elif isinstance(m, nn.Linear):
            total[0] += x.numel() * m.out_features
        elif isinstance(m, nn.BatchNorm2d):
            total[0] += x.numel() * (2 if m.affine else 1)
        elif isinstance(m, (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU)):
            total[0] += output.numel()
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            total[0] += x.numel()

    hooks = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    for handle in hooks:
        handle.remove()
    return total[0]


AUTOSLIM_PUBLISHED = {  # file: (MACs = the paper's, params = mmrazor's, mmcv FLOPs in G = mmrazor's)
    "autoslim_mbv2_530M.json": (504_934_400, 6_495_992, 0.53),
    "autoslim_mbv2_320M.json": (305_072_416, 5_767_288, 0.32),
    "autoslim_mbv2_220M.json": (206_767_048, 4_125_104, 0.22),
}


class TestCosts:
    """slimmable.py: export, MACs, params, mmcv FLOPs, memory, channel configs, BN calibration."""

    @pytest.mark.parametrize("name", ALL_NETWORKS)
    def test_export_equals_slimmable_model(self, name):
        torch.manual_seed(1)
        generator = random.Random(name)
        net = small_model(name).eval()
        _randomize_bn(net)
        size = net.input_size
        x = torch.randn(2, 3, size, size)
        for widths in [1.0, 0.42, random_widths(net, generator)]:
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
            # The exported model is counted as it is (plain layers at their fixed widths).
            assert slimmable.macs(static) == slimmable.macs(net, widths)
            assert slimmable.params(static) == slimmable.params(net, widths)
        # The state_dict plus the configuration rebuild the exported model.
        rebuilt = slimmable.export(small_model(name), widths).eval()
        rebuilt.load_state_dict(static.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(rebuilt(x), static(x))

    @pytest.mark.parametrize("name", ALL_NETWORKS)
    def test_grey_networks_count_and_export_exactly(self, name):
        """A 1-channel network (Fashion-MNIST's 28x28 grey images for the CIFAR ResNets): MACs
        exact against FlopCounterMode, params against the exported model, export equal."""
        torch.manual_seed(2)
        size = 28 if name in models.CIFAR_NETWORKS else 64
        net = models.get_model(name, 10, input_size=size, in_channels=1).eval()
        _randomize_bn(net)
        x = torch.randn(2, 1, size, size)
        for widths in [1.0, 0.42, random_widths(net, random.Random(name))]:
            slimmable.set_widths(net, widths)
            static = slimmable.export(net, widths)
            with torch.no_grad():
                assert (static(x) - net(x)).abs().max().item() <= 1e-5
            assert sum(p.numel() for p in static.parameters()) == slimmable.params(net, widths)
            with FlopCounterMode(display=False) as counter:
                static(x[:1])
            assert counter.get_total_flops() == 2 * slimmable.macs(net, widths)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_export_keeps_the_dtype(self, dtype):
        net = models.get_model("slim_resnet20", 10).to(dtype).eval()
        static = slimmable.export(net, 0.5)
        assert {p.dtype for p in static.parameters()} == {dtype}
        x = torch.randn(2, 3, 32, 32, dtype=dtype)
        slimmable.set_widths(net, 0.5)
        with torch.no_grad():
            torch.testing.assert_close(static(x), net(x))

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
    def test_costs_of_a_model_in_another_dtype(self, dtype):
        # The probe image takes the model's dtype: the costs are those of the float32 model.
        net = models.get_model("slim_mobilenetv3_large", 10, input_size=64)
        widths = random_widths(net, random.Random(5))
        expected = [slimmable.cost(net, widths, kind) for kind in slimmable.COSTS]
        net = models.get_model("slim_mobilenetv3_large", 10, input_size=64).to(dtype)
        assert [slimmable.cost(net, widths, kind) for kind in slimmable.COSTS] == expected

    def test_costs_follow_the_models_input_shape(self):
        net = models.get_model("slim_resnet18", 1000)
        at_224 = slimmable.macs(net, 0.5)
        net.input_size = 160  # the cached cost terms are rebuilt for the new resolution
        built_at_160 = models.get_model("slim_resnet18", 1000, input_size=160)
        assert slimmable.macs(net, 0.5) == slimmable.macs(built_at_160, 0.5) == 246_630_400
        assert at_224 == 483_149_824

    def test_vectorized_costs_equal_one_by_one(self):
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

    @pytest.mark.parametrize("name", ALL_NETWORKS)
    def test_memory_equals_the_peak_measured_on_the_exported_model(self, name):
        """slimmable.memory, computed analytically, equals the peak seen by hooks on the real
        tensors of the exported model, at the smallest, the full and random configurations."""
        net = small_model(name)
        generator = random.Random(name)
        configs = [1.0, 0.42, 0.05] + [random_widths(net, generator, lower=0.05) for _ in range(2)]
        for widths in configs:
            static = slimmable.export(net, widths)
            measured = measured_memory(static, net.input_size)
            # Every layer, not only the one at the peak: the held tensors count where they are held.
            assert slimmable.memory_by_layer(net, widths)[0].tolist() == measured, widths
            assert slimmable.memory(net, widths) == max(measured)
            assert slimmable.memory(static) == slimmable.memory(net, widths)  # counted as it is
        grey = models.get_model(name, 10, input_size=28, in_channels=1)
        widths = random_widths(grey, generator)
        assert slimmable.memory(grey, widths) == max(measured_memory(slimmable.export(grey, widths),
                                                                     28, 1))

    def test_memory_hand_examples_and_registration(self):
        # ResNet-20 at 32x32, full width: a block's second conv holds 16 channels in, 16 out and the
        # block's 16-channel input for the skip, at 32x32.
        assert slimmable.memory(models.get_model("slim_resnet20", 10)) == 3 * 16 * 32 * 32
        # MobileNetV2 at 224: the stride-2 depthwise conv of features.2, 96x112x112 in, 96x56x56 out.
        net = models.get_model("slim_mobilenetv2", 1000)
        assert slimmable.memory(net) == 96 * 112 * 112 + 96 * 56 * 56 == 1_505_280
        assert slimmable.cost(net, 0.5, "memory") == slimmable.memory(net, 0.5)
        assert slimmable.COSTS["memory"] is slimmable.memory

    def test_vectorized_memory_equals_one_by_one(self):
        net = small_model("slim_mobilenetv3_large")
        generator = torch.Generator().manual_seed(0)
        configs = 0.05 + 0.95 * torch.rand(40, len(net.width_groups), generator=generator,
                                           dtype=torch.float64)
        one_by_one = [slimmable.memory(net, row.tolist()) for row in configs]
        batch = slimmable.memory(net, configs.numpy())
        assert isinstance(batch, np.ndarray) and batch.shape == (40,)
        assert batch.tolist() == one_by_one
        assert torch.equal(slimmable.memory(net, configs), torch.tensor(one_by_one))
        assert isinstance(slimmable.memory(net, configs[0].tolist()), int)
        # Monotone: raising any one multiplier never lowers the peak.
        for column in range(configs.shape[1]):
            higher = configs.clone()
            higher[:, column] = 1.0
            assert (slimmable.memory(net, higher) >= slimmable.memory(net, configs)).all()

    @pytest.mark.parametrize("name", ALL_NETWORKS)
    def test_mmcv_flops_equal_a_hook_count_of_the_exported_model(self, name):
        """The analytic mmcv-style count equals mmcv's rules applied module by module to the
        exported (plain torch) model, at several widths; vectorized equals one by one."""
        net = small_model(name)
        generator = random.Random(name)
        configs = [1.0, 0.42, random_widths(net, generator), random_widths(net, generator)]
        for widths in configs:
            static = slimmable.export(net, widths)
            expected = mmcv_style_count(static, net.input_size)
            assert slimmable.mmcv_flops(net, widths) == expected == slimmable.mmcv_flops(static)
            assert slimmable.cost(net, widths, "mmcv_flops") == expected
            assert expected > slimmable.macs(net, widths)
        matrix = slimmable.width_matrix(net, configs[2:])
        assert slimmable.mmcv_flops(net, matrix).tolist() == \
            [slimmable.mmcv_flops(net, row.tolist()) for row in matrix]

    def test_the_shipped_autoslim_configs_reproduce_the_published_counts(self, tmp_path):
        net = models.get_model("slim_mobilenetv2", 1000, width_mult=1.5)
        folder = os.path.join(REPO, "configs")
        assert sorted(os.listdir(folder)) == sorted(AUTOSLIM_PUBLISHED)
        for file, (mac_count, param_count, giga_mmcv) in AUTOSLIM_PUBLISHED.items():
            widths, record = slimmable.load_config(os.path.join(folder, file), net)
            assert slimmable.macs(net, widths) == record["macs"] == mac_count
            assert slimmable.params(net, widths) == record["params"] == param_count
            assert round(slimmable.mmcv_flops(net, widths) / 1e9, 2) == giga_mmcv
            assert record["mmcv_flops"] == slimmable.mmcv_flops(net, widths)
            assert "slimmable_networks" in record["source"] and "mmrazor" in record["source"]
            # the published flat list, mapped onto our groups, is what the file holds
            label = file.split("_")[-1][:-len(".json")]
            assert record["channels"] == models.channels_from_flat_list(
                net, models.AUTOSLIM_MOBILENETV2[label])
            # a supernet trained down to 2/12 (the README's AutoSlim recipe) can run it, one
            # trained down to Joslim's 0.42 cannot (the 320M and 220M networks have stem 8 of 48)
            lowest = slimmable.group_channels(net, 0.1667)
            assert all(record["channels"][g] >= c for g, c in lowest.items())
        assert record["channels"]["stem"] < slimmable.group_channels(net, 0.42)["stem"]
        # the files are exactly what models.write_autoslim_configs writes
        for path in models.write_autoslim_configs(str(tmp_path)):
            with open(path) as written, open(os.path.join(folder, os.path.basename(path))) as shipped:
                assert json.load(written) == json.load(shipped)
        with pytest.raises(ValueError, match="group 'stage2.out' already has 24"):
            flat = list(models.AUTOSLIM_MOBILENETV2["530M"])
            flat[5] = 16  # block 2's output, tied to block 1's by the residual
            models.channels_from_flat_list(net, flat)
        with pytest.raises(ValueError, match="fixed at 1920"):
            models.channels_from_flat_list(net, models.AUTOSLIM_MOBILENETV2["530M"][:34] + [1280, 1000])

    def test_channel_configs_reproduce_their_channels_or_are_refused(self, tmp_path):
        wide = models.get_model("slim_mobilenetv2", 10, width_mult=1.5)
        path = str(tmp_path / "c.json")
        record = slimmable.save_config(path, wide, 0.7)
        assert (record["network"], record["width_mult"], record["num_classes"]) == \
            ("slim_mobilenetv2", 1.5, 10)
        widths, _ = slimmable.load_config(path, wide)
        assert slimmable.group_channels(wide, widths) == record["channels"]
        assert slimmable.macs(wide, widths) == record["macs"]
        with pytest.raises(ValueError, match="width_mult 1.5, this model has 1.0"):
            slimmable.load_config(path, models.get_model("slim_mobilenetv2", 10))

        def refused(content, *fragments):
            bad = tmp_path / "bad.json"
            bad.write_text(json.dumps(content))
            with pytest.raises(ValueError) as error:
                slimmable.load_config(str(bad), wide)
            assert "\n" not in str(error.value)
            for fragment in fragments:
                assert fragment in str(error.value), str(error.value)

        def edited(group, count):
            changed = json.loads(json.dumps(record))
            changed["channels"][group] = count
            return changed

        refused(edited("stem", 20), "'stem' has 20 channels", "nearest possible: 16 or 24")
        refused(edited("stem", 400), "'stem' has 400", "nearest possible: 48")
        refused(edited("stem", "8"), "'stem' has '8'")
        refused([1, 2], "not a JSON object")
        refused({"widths": "abc"}, "'widths' must be a list of 24 numbers")
        refused({"widths": [1.5] * 24}, "must be in (0, 1]")
        refused({"channels": {"stem": 8, "nonsense": 3}}, "unknown groups nonsense",
                "missing groups stage1.out")
        refused(edited("stem", 16.5), "'stem' has 16.5", "nearest possible: 16 or 24")
        refused(edited("stem", 10 ** 400), "'stem' has 1000", "nearest possible: 48")  # no float
        with pytest.raises(TypeError):  # JSON holds no NumPy integer: refused before writing
            slimmable.save_config(path, wide, 0.5, step=np.int64(3))
        assert slimmable.load_config(path, wide)[1] == record  # the file written before is whole
        disagreeing = edited("stem", 16)  # the widths still give the stem 32 channels
        refused(disagreeing, "'channels' and 'widths' disagree", "'stem': 16 and 32")

    def test_channel_configs_take_whole_floats_and_agreeing_widths(self, tmp_path):
        net = models.get_model("slim_resnet20", 10)
        path = tmp_path / "c.json"
        record = slimmable.config_record(net, 0.5)
        path.write_text(json.dumps({"channels": {g: float(c) for g, c in record["channels"].items()}}))
        widths, _ = slimmable.load_config(str(path), net)  # "channels": {"layer1.residual": 8.0, ...}
        assert slimmable.group_channels(net, widths) == record["channels"]
        path.write_text(json.dumps({"channels": record["channels"], "widths": [0.505] * 12}))
        assert slimmable.group_channels(net, slimmable.load_config(str(path), net)[0]) == \
            record["channels"]  # other multipliers, the same channels: they agree

    def test_channel_config_round_trip(self):
        net = models.get_model("slim_mobilenetv2", 1000)
        widths = random_widths(net, random.Random(3))
        channels = slimmable.group_channels(net, widths)
        again = slimmable.group_channels(net, slimmable.channels_to_widths(net, channels))
        assert again == channels
        assert slimmable.macs(net, slimmable.channels_to_widths(net, channels)) == slimmable.macs(
            net, widths)

    @pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
    def test_keep_freed_memory_reuses_big_blocks_and_yields_to_the_user(self):
        # 20 "steps" that each allocate and free two 64 MiB tensors: with glibc's defaults every
        # step maps them afresh (32,768 page faults); kept, the heap settles within a few steps.
        code = ("import resource, torch, runs\n"
                "applied = runs.keep_freed_memory()\n"
                "faults = []\n"
                "for _ in range(20):\n"
                "    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
                "    x = torch.ones(16 << 20); y = x * 2; del x, y\n"
                "    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
                "print(applied, sum(count > 0 for count in faults[10:]))\n")

        def run(**env):
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=True, cwd=REPO, env={**os.environ, **env}).stdout.split()
            return out[0] == "True", int(out[1])
        applied, faulting_steps = run()
        # glibc's defaults fault in each of the last 10 steps; kept, at most a stray few do (the
        # kernel may still reclaim a page now and then on a busy machine)
        assert applied and faulting_steps <= 3, faulting_steps
        applied, _ = run(MALLOC_MMAP_MAX_="65536")  # the user's setting wins
        assert not applied

    def test_a_config_nested_too_deep_is_refused_in_one_line(self, tmp_path, monkeypatch, capsys):
        """A configuration file of 100,000 nested lists (json.load's RecursionError) ends
        train.py in one line and status 2, as any unreadable configuration does."""
        path = tmp_path / "deep.json"
        path.write_text("[" * 100_000 + "]" * 100_000)
        with pytest.raises(ValueError, match="cannot read channel config"):
            slimmable.load_config(str(path), models.get_model("slim_resnet20", 10))
        monkeypatch.chdir(tmp_path)
        assert train.main(["--method", "fixed", "--channel_config", str(path)] + TINY_RUN) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and "cannot read channel config" in error[0], error

    def test_calibrate_bn_is_an_exact_average(self):
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
        with pytest.raises(ValueError, match="at least one batch"):
            slimmable.calibrate_bn(net, iter([]))
        torch.testing.assert_close(net.bn1.running_mean[:c], mean)  # untouched by the refusal


# ---------------------------------------------------------------------------------------------
# data.py



def parse_data_args(*argv):
    return data.add_data_args(argparse.ArgumentParser()).parse_args(list(argv))


def run_data_clis(*argvs, processes=False):
    """`python data.py ARGV` for each ARGV: ``run_main`` each in turn, or with ``processes``
    real processes at once (where the process is what is tested); CompletedProcess results in
    order."""
    if not processes:
        return [run_main(data, *argv, cwd=REPO) for argv in argvs]
    started = [subprocess.Popen([sys.executable, os.path.join(REPO, "data.py"), *argv], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for argv in argvs]
    outputs = [process.communicate(timeout=300) for process in started]
    return [subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
            for process, (stdout, stderr) in zip(started, outputs)]


def run_data_cli(*argv):
    return run_data_clis(argv)[0]


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def write_cifar100(folder, num_train=60, num_test=20, seed=0):
    """A real-format cifar-100-python folder; returns the raw arrays written."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder)
    arrays = {}
    for split, count in (("train", num_train), ("test", num_test)):
        images = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        labels = rng.integers(0, 100, count).tolist()
        with open(os.path.join(folder, split), "wb") as f:
            pickle.dump({b"data": images, b"fine_labels": labels, b"coarse_labels": labels}, f)
        arrays[split] = (images.reshape(-1, 3, 32, 32), np.array(labels))
    with open(os.path.join(folder, "meta"), "wb") as f:
        pickle.dump({b"fine_label_names": [b"c%d" % i for i in range(100)]}, f)
    return arrays


class MakesFolder:
    """A pickle that creates the folder ``path`` when a plain ``pickle.load`` reads it."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def write_idx(path, array, compress):
    """One file in the IDX format of MNIST (big-endian: magic 0x0000080N for N uint8 dims,
    then the N sizes), gzipped when ``compress``."""
    import gzip
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    opener = gzip.open if compress else open
    with opener(str(path) + (".gz" if compress else ""), "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def write_mnist_folder(folder, num_train=40, num_test=12, compress=True, seed=0):
    """The four standard files of an MNIST-format data set; returns the arrays written."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    arrays = {}
    for split, count in (("train", num_train), ("t10k", num_test)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, count).astype(np.uint8)
        write_idx(os.path.join(folder, f"{split}-images-idx3-ubyte"), images, compress)
        write_idx(os.path.join(folder, f"{split}-labels-idx1-ubyte"), labels, compress)
        arrays[split] = (images, labels.astype(np.int64))
    return arrays


def make_image_folder(root, classes=("cat", "dog", "emu"), per_class=4, seed=0):
    """JPEGs of various sizes in class sub-folders; returns [(path, label)] in sorted order."""
    rng = np.random.default_rng(seed)
    samples = []
    for label, name in enumerate(sorted(classes)):
        os.makedirs(os.path.join(root, name))
        for i in range(per_class):
            height, width = rng.integers(40, 300, 2)
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            path = os.path.join(root, name, f"img{i}.jpg")
            Image.fromarray(pixels).save(path, quality=90)
            samples.append((path, label))
    return samples


@pytest.fixture(scope="module")
def imagenet_lmdb(tmp_path_factory):
    """train.lmdb / val.lmdb made by the command line converter from generated JPEG folders."""
    if lmdb is None:
        pytest.skip("the lmdb package is not installed")
    root = tmp_path_factory.mktemp("imagenet")
    sources = {split: make_image_folder(str(root / "src" / split), seed=seed)
               for seed, split in enumerate(("train", "val"))}
    os.makedirs(root / "lmdb")
    for result in run_data_clis(*[("to-lmdb", str(root / "src" / split),
                                   str(root / "lmdb" / f"{split}.lmdb")) for split in sources]):
        assert result.returncode == 0, result.stderr
        assert "12/12 images" in result.stdout
    return root / "lmdb", sources


class TestData:
    """data.py: datasets, splits, transforms, loaders, the LMDB converter."""

    def test_first_batches_counts_and_images(self):
        images = torch.utils.data.TensorDataset(torch.arange(16.0), torch.arange(16))
        loader = torch.utils.data.DataLoader(images, batch_size=4)
        sizes = lambda **asked: [len(batch[0]) for batch in data.first_batches(loader, **asked)]
        assert sizes(count=2) == [4, 4] and sizes(images=6) == [4, 2] and sizes() == [4] * 4
        assert sizes(count=0) == [] and sizes(images=0) == []  # none asked: none given

    def test_cifar100_folder_reads_back_with_held_out_split(self, tmp_path):
        arrays = write_cifar100(tmp_path / "cifar-100-python")
        args = parse_data_args("--dataset", "cifar100", "--datapath", str(tmp_path), "--val_size",
                               "10", "--workers", "0", "--no-pin_memory")
        loaders = data.get_loaders(args, batch_size=16, eval_batch_size=7)
        assert (loaders.dataset, loaders.num_classes, loaders.input_size) == ("CIFAR100", 100, 32)
        mean = torch.tensor(data.CIFAR_MEAN_STD["CIFAR100"][0]).view(1, 3, 1, 1)
        std = torch.tensor(data.CIFAR_MEAN_STD["CIFAR100"][1]).view(1, 3, 1, 1)

        images, labels = zip(*loaders.test)
        raw_images, raw_labels = arrays["test"]
        expected = (torch.from_numpy(raw_images).float() / 255 - mean) / std  # ToTensor + Normalize
        torch.testing.assert_close(torch.cat(images), expected, rtol=0, atol=1e-5)
        assert torch.cat(labels).tolist() == raw_labels.tolist()

        raw_train = [bytes(image) for image in arrays["train"][0].reshape(60, -1)]
        train_keys = {bytes(image) for image in loaders.train.dataset.images.numpy().reshape(50, -1)}
        val_keys = [bytes(image) for image in loaders.val.dataset.images.numpy().reshape(10, -1)]
        assert len(val_keys) == 10 and not train_keys & set(val_keys)
        assert train_keys | set(val_keys) == set(raw_train)
        val_images, val_labels = (torch.cat(part) for part in zip(*loaders.val))
        val_rows = [raw_train.index(key) for key in val_keys]  # validation uses eval transforms
        torch.testing.assert_close(val_images, (torch.from_numpy(arrays["train"][0][val_rows]).float()
                                                / 255 - mean) / std, rtol=0, atol=1e-5)
        assert val_labels.tolist() == arrays["train"][1][val_rows].tolist()
        assert [len(batch[1]) for batch in loaders.train] == [16, 16, 16]  # drop_last

        # --datapath may also name the folder itself; the held-out split is the same every time.
        again = data.get_loaders(parse_data_args("--dataset", "CIFAR100", "--datapath",
                                                 str(tmp_path / "cifar-100-python"), "--val_size",
                                                 "10", "--workers", "0"), batch_size=16)
        assert torch.equal(again.val.dataset.images, loaders.val.dataset.images)

    def test_cifar_pickles_are_read_without_running_code(self, tmp_path):
        """Arrays and lists pickled with any protocol read back; a batch that names any other
        callable is refused in one line naming the file, and the callable never runs."""
        folder = tmp_path / "cifar-10-batches-py"
        os.makedirs(folder)
        rng = np.random.default_rng(0)
        files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        written = {}
        for protocol, file in zip([2, 3, 4, 5, 2, 5], files):
            images = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
            with open(folder / file, "wb") as f:
                pickle.dump({b"data": images, b"labels": [1, 2, 3, 4]}, f, protocol=protocol)
            written[file] = images.reshape(-1, 3, 32, 32)
        train_images, train_labels, test_images, _ = data.read_cifar(str(tmp_path), "CIFAR10")
        assert np.array_equal(train_images, np.concatenate([written[file] for file in files[:5]]))
        assert np.array_equal(test_images, written["test_batch"]) and train_labels.dtype == np.int64

        marker = tmp_path / "code_ran"
        with open(folder / "data_batch_1", "wb") as f:
            pickle.dump({b"data": MakesFolder(str(marker)), b"labels": [0]}, f, protocol=2)
        with pytest.raises(data.DataError) as caught:
            data.read_cifar(str(tmp_path), "CIFAR10")
        message = str(caught.value)
        assert "\n" not in message and "data_batch_1" in message and "refused" in message, message
        assert not marker.exists()
        with open(folder / "data_batch_1", "rb") as f:  # the payload is live: a plain load runs it
            pickle.load(f)
        assert marker.exists()

    @pytest.mark.parametrize("name,compress,nested", [("FashionMNIST", True, False),
                                                      ("FashionMNIST", False, False),
                                                      ("MNIST", True, True)])
    def test_idx_files_read_back_through_the_loaders(self, tmp_path, name, compress, nested):
        folder = tmp_path / name / "raw" if nested else tmp_path  # torchvision's layout, or flat
        arrays = write_mnist_folder(folder, compress=compress)
        args = parse_data_args("--dataset", name.lower(), "--datapath", str(tmp_path), "--val_size",
                               "8", "--workers", "0", "--no-pin_memory")
        loaders = data.get_loaders(args, batch_size=4)
        assert (loaders.num_classes, loaders.input_size, loaders.in_channels) == (10, 28, 1)
        mean, std = data.IDX_MEAN_STD[name]
        train_indices, val_indices = data.held_out_split(40, 8)

        def pixels(loader):  # undo the normalization: the uint8 pixels and the labels, in order
            images, labels = zip(*[(x, y) for x, y in loader])
            images = torch.cat(images) * (std[0] * 255) + mean[0] * 255
            return images.round().to(torch.uint8).squeeze(1).numpy(), torch.cat(labels).numpy()

        images, labels = pixels(loaders.test)
        assert np.array_equal(images, arrays["t10k"][0]) and np.array_equal(labels, arrays["t10k"][1])
        images, labels = pixels(loaders.val)
        assert np.array_equal(images, arrays["train"][0][val_indices])
        assert np.array_equal(labels, arrays["train"][1][val_indices])
        train_set = loaders.train.dataset
        assert np.array_equal(train_set.images.squeeze(1).numpy(), arrays["train"][0][train_indices])
        assert (train_set.padding, train_set.flip) == (2, name == "FashionMNIST")
        subset_args = argparse.Namespace(**{**vars(args), "train_size": 10})
        subset = data.get_loaders(subset_args, batch_size=4).train.dataset
        assert len(subset) == 10 and set(subset.labels.tolist()) <= set(arrays["train"][1].tolist())

    def test_missing_or_malformed_idx_files_are_one_line(self, tmp_path):
        folder = tmp_path / "fmnist"
        write_mnist_folder(folder)
        os.remove(folder / "t10k-labels-idx1-ubyte.gz")
        broken = tmp_path / "broken"
        write_mnist_folder(broken)
        (broken / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b not really gzip")
        missing, malformed, mnist = run_data_clis(
            ("info", "--dataset", "fashionmnist", "--datapath", str(folder)),
            ("info", "--dataset", "FashionMNIST", "--datapath", str(broken)),
            ("info", "--dataset", "MNIST", "--datapath", str(tmp_path / "nowhere")))
        files = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte")
        assert_one_line_error(missing, "missing t10k-labels-idx1-ubyte", str(folder),
                              "apt-get install dataset-fashion-mnist", *files)
        assert_one_line_error(malformed, "train-images-idx3-ubyte.gz is not an IDX image file",
                              *files)
        assert_one_line_error(mnist, "no MNIST at", "download=True", *files)

    def test_training_augmentation_is_a_padded_crop_with_flip(self):
        images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
        dataset = data.InMemoryImages(images, torch.arange(4), (0, 0, 0), (1 / 255,) * 3, True)
        torch.manual_seed(0)
        for index in [0, 1, 2, 3] * 5:
            augmented, label = dataset[index]
            padded = torch.nn.functional.pad(images[index], (4, 4, 4, 4)).float()
            crops = [crop for top in range(9) for left in range(9)
                     for crop in [padded[:, top:top + 32, left:left + 32]]]
            assert label == index
            assert any(torch.equal(augmented, c) or torch.equal(augmented, c.flip(-1)) for c in crops)

    def test_lmdb_converter_round_trip_through_workers(self, imagenet_lmdb):
        lmdb_dir, sources = imagenet_lmdb
        assert not [name for name in os.listdir(lmdb_dir) if ".tmp-" in name]
        args = parse_data_args("--dataset", "ImageNet", "--datapath", str(lmdb_dir), "--val_size",
                               "3", "--workers", "2", "--no-pin_memory")
        loaders = data.get_loaders(args, batch_size=4, eval_batch_size=5)
        assert (loaders.dataset, loaders.num_classes, loaders.input_size) == ("ImageNet", 3, 224)
        assert loaders.train.dataset.classes == ["cat", "dog", "emu"]
        evaluation = data.imagenet_transform(train=False)
        images, labels = (torch.cat(part) for part in zip(*loaders.test))  # test = val.lmdb, in order
        expected = torch.stack([evaluation(Image.open(path).convert("RGB")) for path, _ in sources["val"]])
        torch.testing.assert_close(images, expected, rtol=0, atol=1e-6)
        assert labels.tolist() == [label for _, label in sources["val"]]

        train_records, val_records = loaders.train.dataset.indices, loaders.val.dataset.indices
        assert len(val_records) == 3 and not set(train_records) & set(val_records)
        assert sorted([*train_records, *val_records]) == list(range(12))
        val_images, val_labels = (torch.cat(part) for part in zip(*loaders.val))
        source = [sources["train"][record] for record in val_records]
        torch.testing.assert_close(val_images, torch.stack(
            [evaluation(Image.open(path).convert("RGB")) for path, _ in source]), rtol=0, atol=1e-6)
        assert val_labels.tolist() == [label for _, label in source]
        batches = list(loaders.train)
        assert len(batches) == 2 and batches[0][0].shape == (4, 3, 224, 224)

        with lmdb.open(str(lmdb_dir / "train.lmdb"), readonly=True, lock=False) as env:
            with env.begin() as txn:
                assert txn.get(b"__len__") == b"12"
                record = txn.get(b"00000005")
        with open(sources["train"][5][0], "rb") as f:  # the encoded bytes, not decoded pixels
            assert record[data.RECORD_HEADER.size:] == f.read()

    def test_train_and_val_splits_share_one_database_in_one_process(self, imagenet_lmdb, tmp_path):
        """--workers 0: the train and val splits both read train.lmdb in the main process, which
        py-lmdb would refuse to open twice; --image_size sets both crops."""
        lmdb_dir, _ = imagenet_lmdb
        shutil.copytree(lmdb_dir, tmp_path / "db")  # this process keeps it open: a private copy
        args = parse_data_args("--dataset", "ImageNet", "--datapath", str(tmp_path / "db"),
                               "--val_size", "3", "--workers", "0", "--image_size", "20")
        loaders = data.get_loaders(args, batch_size=4)
        assert loaders.input_size == 20 and next(iter(loaders.train))[0].shape == (4, 3, 20, 20)
        assert next(iter(loaders.val))[0].shape == (3, 3, 20, 20)
        assert data.get_loaders(args, batch_size=4).num_classes == 3  # headers read again

    def test_slim_dataaug_train_transform_shape_and_lighting(self):
        image = Image.fromarray(np.full((300, 260, 3), 128, np.uint8))
        transform = data.imagenet_transform(train=True, scale_ratio=0.25, slim_dataaug=True)
        assert transform(image).shape == (3, 224, 224)
        torch.manual_seed(0)
        shifted = data.PCALighting(0.1)(torch.zeros(3, 4, 4))
        assert shifted.abs().sum() > 0 and torch.equal(shifted[:, 0, 0], shifted[:, 3, 2])
        assert torch.equal(data.PCALighting(0.0)(torch.ones(3, 2, 2)), torch.ones(3, 2, 2))

    def test_corrupt_lmdb_record_is_one_clear_error(self, imagenet_lmdb, tmp_path):
        lmdb_dir, _ = imagenet_lmdb
        broken = tmp_path / "broken"
        os.makedirs(broken)
        for name in ("train.lmdb", "val.lmdb"):
            os.makedirs(broken / name)
            for file in ("data.mdb", "lock.mdb"):
                with open(lmdb_dir / name / file, "rb") as src, open(broken / name / file, "wb") as dst:
                    dst.write(src.read())
        with lmdb.open(str(broken / "val.lmdb")) as env, env.begin(write=True) as txn:
            txn.put(b"00000007", b"garbage bytes, not an image record")
        assert_one_line_error(run_data_cli("check", "--dataset", "imagenet", "--datapath", str(broken)),
                              "val.lmdb: record 7")
        args = parse_data_args("--dataset", "ImageNet", "--datapath", str(broken), "--workers", "2",
                               "--val_size", "2", "--no-pin_memory")
        with pytest.raises(data.DataError) as caught:  # raised in a worker, same type in the caller
            list(data.get_loaders(args, batch_size=4).test)
        assert "record 7" in str(caught.value) and "\n" not in str(caught.value)

    def test_truncated_lmdb_and_bad_converter_targets_are_one_line(self, imagenet_lmdb, tmp_path):
        lmdb_dir, _ = imagenet_lmdb
        images = str(lmdb_dir.parent / "src" / "train")
        broken = tmp_path / "db"
        shutil.copytree(lmdb_dir, broken)
        data_file = broken / "train.lmdb" / "data.mdb"
        os.truncate(data_file, os.path.getsize(data_file) // 2)
        check, info = run_data_clis(  # processes: a SIGBUS would end this one
            ("check", "--dataset", "imagenet", "--datapath", str(broken)),
            ("info", "--dataset", "imagenet", "--datapath", str(broken)), processes=True)
        missing_parent, zero = run_data_clis(
            ("to-lmdb", images, str(tmp_path / "nowhere" / "x.lmdb")),
            ("to-lmdb", images, str(tmp_path / "x.lmdb"), "--records_per_commit", "0"))
        for result in (check, info):  # not a SIGBUS (exit 135)
            assert_one_line_error(result, "train.lmdb is truncated")
        assert_one_line_error(missing_parent, "does not exist")
        assert_one_line_error(zero, "argument --records_per_commit: '0'")

    def test_a_training_set_smaller_than_a_batch_stops_only_who_trains(self, tmp_path, monkeypatch, capsys):
        """86 training images and batches of 128: train.py refuses in one line; testing exported
        subnets (evaluate.py --subnet), which draws no training batch, works."""
        monkeypatch.chdir(tmp_path)
        small = ["--synthetic_train", "150", "--val_size", "64", "--synthetic_test", "64",
                 "--workers", "0", "--threads", "1"]
        assert train.main(["--name", "small", "--batch_size", "128", *small]) == 2
        assert "smaller than one batch of 128" in capsys.readouterr().err
        config = str(tmp_path / "half.json")
        slimmable.save_config(config, models.get_model("slim_resnet20", 10), 0.5)
        assert train.main(["--name", "small", "--method", "fixed", "--channel_config", config,
                           "--epochs", "1", "--batch_size", "32", "--restart", *small]) == 0
        assert evaluate.main(["--name", "small", "--export", "subnets", "--threads", "1"]) == 0
        subnets = sorted(glob.glob(str(tmp_path / "subnets" / "*.pt")))
        assert len(subnets) == 1
        capsys.readouterr()
        assert evaluate.main(["--subnet", *subnets, "--threads", "1"]) == 0, capsys.readouterr().err

    @needs_lmdb
    def test_converter_failure_leaves_no_database(self, tmp_path, capsys):
        make_image_folder(str(tmp_path / "src"), per_class=2)
        with open(tmp_path / "src" / "dog" / "broken.jpg", "wb") as f:
            f.write(b"this is not a jpeg")
        assert data.main(["to-lmdb", str(tmp_path / "src"), str(tmp_path / "train.lmdb")]) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and error[0].startswith("error: ") and "broken.jpg" in error[0]
        assert os.listdir(tmp_path) == ["src"]  # neither train.lmdb nor its temporary folder

        os.remove(tmp_path / "src" / "dog" / "broken.jpg")
        os.makedirs(tmp_path / "train.lmdb")
        assert data.main(["to-lmdb", str(tmp_path / "src"), str(tmp_path / "train.lmdb")]) == 2
        assert "already exists" in capsys.readouterr().err
        assert os.listdir(tmp_path / "train.lmdb") == []

    @needs_lmdb
    def test_incomplete_lmdb_is_rejected(self, tmp_path):
        with lmdb.open(str(tmp_path / "train.lmdb")) as env, env.begin(write=True) as txn:
            txn.put(b"00000000", b"\0" * 16)  # records but no __len__: an unfinished conversion
        with pytest.raises(data.DataError, match="incomplete"):
            data.LMDBImageFolder(str(tmp_path / "train.lmdb"), transform=None)

    def test_synthetic_set_is_deterministic_and_balanced(self):
        images, labels = data.make_synthetic_images(300, num_classes=10, seed=3)
        again_images, again_labels = data.make_synthetic_images(300, num_classes=10, seed=3)
        assert images.dtype == np.uint8 and images.shape == (300, 3, 32, 32)
        assert images.tobytes() == again_images.tobytes() and np.array_equal(labels, again_labels)
        assert np.bincount(labels).tolist() == [30] * 10
        assert images.tobytes() != data.make_synthetic_images(300, num_classes=10, seed=4)[0].tobytes()
        assert images.tobytes() != data.make_synthetic_images(300, num_classes=10, seed=3, split=1)[0].tobytes()
        assert 60 < images.mean() < 200 and images.std() > 20  # not blank, not saturated

    def test_synthetic_loaders_follow_the_size_flags(self):
        args = parse_data_args("--synthetic_train", "400", "--synthetic_test", "120",
                               "--synthetic_classes", "4", "--val_size", "40", "--workers", "0")
        loaders = data.get_loaders(args, batch_size=32)
        assert (loaders.dataset, loaders.num_classes, loaders.input_size) == ("synthetic", 4, 32)
        assert [len(loader.dataset) for loader in loaders[:3]] == [360, 40, 120]
        images, _ = next(iter(loaders.val))
        assert abs(images.mean().item()) < 0.3 and 0.7 < images.std().item() < 1.3  # own mean/std
        assert parse_data_args().dataset == "synthetic" and parse_data_args().val_size is None
        assert data.get_loaders(parse_data_args("--synthetic_train", "100", "--val_size", "0",
                                                "--workers", "0"), batch_size=10).val is None

    def test_user_errors_are_one_line_with_exit_status_2(self, tmp_path):
        missing_cifar, unknown, missing_lmdb = run_data_clis(
            ("info", "--dataset", "cifar10", "--datapath", str(tmp_path / "nowhere")),
            ("info", "--dataset", "svhn"),
            ("info", "--dataset", "imagenet", "--datapath", str(tmp_path)))
        assert_one_line_error(missing_cifar, "cifar-10-batches-py")
        assert_one_line_error(unknown, "invalid choice: 'svhn'")
        assert_one_line_error(missing_lmdb, "train.lmdb")
        os.makedirs(tmp_path / "cifar-10-batches-py")
        with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
            f.write(b"\x80\x04truncated")
        with pytest.raises(data.DataError, match="data_batch_1"):
            data.read_cifar(str(tmp_path), "CIFAR10")
        with pytest.raises(data.DataError, match="val_size"):
            data.get_loaders(parse_data_args("--synthetic_train", "50", "--val_size", "50"), 10)

    def test_distributed_training_sampler_and_unpadded_shards(self, tmp_path):
        torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/store",
                                             rank=0, world_size=1)
        try:
            args = parse_data_args("--synthetic_train", "200", "--synthetic_test", "50",
                                   "--val_size", "20", "--workers", "0")
            loaders = data.get_loaders(args, batch_size=16)
            assert isinstance(loaders.train.sampler, torch.utils.data.DistributedSampler)
            data.set_epoch(loaders, 3)
            assert loaders.train.sampler.epoch == 3
            assert sum(len(labels) for _, labels in loaders.test) == 50
        finally:
            torch.distributed.destroy_process_group()


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


# ------------------------------------------------------------------ Gaussian process

def matern52_textbook(A, B, lengthscales, signal):
    r = np.sqrt((((A[:, None, :] - B[None, :, :]) / lengthscales) ** 2).sum(-1))
    return signal * (1 + math.sqrt(5) * r + 5 * r ** 2 / 3) * np.exp(-math.sqrt(5) * r)


def random_regression(n, num_dims=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(size=(n, num_dims))
    return X, np.sin(3 * X).sum(1) + 0.1 * rng.standard_normal(n)


# ------------------------------------------------------------------ samplers


def make_samplers():
    return [UniformSampler(NUM_DIMS, LOWER, seed=5), RandomSampler(NUM_DIMS, LOWER, seed=5),
            JoslimSampler(NUM_DIMS, LOWER, COST, prior_points=6, num_candidates=300, seed=5),
            JoslimSampler(NUM_DIMS, LOWER, COST, prior_points=6, num_candidates=300, seed=5, acquisition="ucb")]


# ------------------------------------------------------------------ Pareto helpers

COSTS = [0.5, 0.2, 0.2, 0.8, 0.5, 1.0, 0.2]
LOSSES = [0.3, 0.6, 0.6, 0.1, 0.4, 0.1, 0.7]


class TestSampler:
    """sampler.py: the normal distribution, EI, the Gaussian process, the samplers, Pareto helpers."""

    def test_normal_cdf_matches_math_erf_including_tails(self):
        z = np.concatenate([np.linspace(-38, 38, 4001), [0.0, 1e-8, -1e-8, 2.5 * math.sqrt(2), -2.5 * math.sqrt(2)]])
        reference = np.array([0.5 * math.erfc(-v / math.sqrt(2.0)) for v in z])
        assert np.abs(normal_cdf(z) - reference).max() < 1e-14
        tail = (z < 0) & (reference > 1e-300)           # relative accuracy down to the subnormals
        assert np.max(np.abs(normal_cdf(z[tail]) / reference[tail] - 1.0)) < 1e-11

    def test_expected_improvement_matches_closed_form(self):
        rng = np.random.default_rng(0)
        mean, std = rng.normal(size=500), rng.uniform(0.01, 3.0, size=500)
        best = 0.3
        z = (best - mean) / std
        cdf = np.array([0.5 * (1.0 + math.erf(v / math.sqrt(2.0))) for v in z])
        pdf = np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
        reference = (best - mean) * cdf + std * pdf
        assert np.allclose(expected_improvement(mean, std, best), reference, rtol=1e-9, atol=1e-13)

    def test_expected_improvement_nonnegative_and_finite_at_zero_std(self):
        mean = np.array([0.0, 1.0, -1.0, 0.0, 50.0, -50.0])
        std = np.array([0.0, 0.0, 0.0, 1e-300, 1e-3, 1e-3])
        ei = expected_improvement(mean, std, 0.0)
        assert np.all(np.isfinite(ei)) and np.all(ei >= 0)
        assert ei[0] == 0.0 and ei[1] == 0.0 and ei[2] == 1.0
        assert ei[4] == 0.0 and ei[5] == pytest.approx(50.0)
        far = expected_improvement(np.linspace(0, 30, 50), 1.0, 0.0)   # deep in the tail: decreasing, >= 0
        assert np.all(far >= 0) and np.all(np.diff(far) <= 0)

    @pytest.mark.parametrize("n", [30, 150])               # 150 spans several 64-row Cholesky blocks
    def test_gp_posterior_matches_textbook_algorithm(self, n):
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

    def test_adding_observations_equals_refitting_on_all_points(self):
        X, y = random_regression(100)
        gp = GaussianProcess(np.full(4, 0.5), 1.0, 0.01).fit(X[:70], y[:70], optimize=False)
        gp.add_observations(X[70:], y[70:])
        direct = GaussianProcess(np.full(4, 0.5), 1.0, 0.01).fit(X, y, optimize=False)
        test_points = np.random.default_rng(2).uniform(size=(20, 4))
        for grown, reference in zip(gp.predict(test_points), direct.predict(test_points)):
            assert np.allclose(grown, reference, atol=1e-9)

    def test_lml_gradient_matches_finite_differences(self):
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
    def test_fit_never_lowers_the_log_marginal_likelihood(self, start):
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

    def test_duplicate_inputs_are_handled_by_jitter(self):
        X = np.repeat(np.random.default_rng(0).uniform(size=(10, 3)), 3, axis=0)
        gp = GaussianProcess(np.full(3, 0.5), 1.0, 1e-14).fit(X, np.arange(30.0) % 7, optimize=False)
        mean, std = gp.predict(X[:5])
        assert np.all(np.isfinite(mean)) and np.all(np.isfinite(std))

    def test_baselines_propose_in_the_box(self):
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
    def test_joslim_schedule_box_and_target_cost(self, acquisition):
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

    def test_joslim_refuses_to_guess_without_observations(self):
        sampler = JoslimSampler(NUM_DIMS, LOWER, COST, prior_points=2)
        sampler.propose(3)
        with pytest.raises(RuntimeError):
            sampler.propose(1)

    @pytest.mark.parametrize("index", range(4))
    @pytest.mark.parametrize("snapshot_after", ["observe", "propose"])
    def test_state_dict_round_trip_reproduces_next_proposals(self, index, snapshot_after):
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

    def test_joslim_finds_a_better_front_than_the_baselines(self):
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

    def test_pareto_front_hand_example(self):
        # (0.2, 0.6) twice: the first is kept; (0.2, 0.7), (0.5, 0.4), (1.0, 0.1) are dominated.
        assert pareto_front(COSTS, LOSSES).tolist() == [1, 0, 3]
        assert pareto_front([0.3, 0.1], [np.nan, 0.5]).tolist() == [1]

    def test_area_under_front_hand_example(self):
        # Step curve: 0.6 up to cost 0.5 (extended flat below the cheapest point), 0.3 up to 0.8, then 0.1.
        assert area_under_front(COSTS, LOSSES, 0.1, 1.0) == pytest.approx((0.6 * 0.4 + 0.3 * 0.3 + 0.1 * 0.2) / 0.9)
        assert area_under_front(COSTS, LOSSES, 0.2, 0.9) == pytest.approx((0.6 * 0.3 + 0.3 * 0.3 + 0.1 * 0.1) / 0.7)
        assert area_under_front(COSTS, LOSSES, 0.2, 0.6) == pytest.approx((0.6 * 0.3 + 0.3 * 0.1) / 0.4)
        assert area_under_front([0.5], [0.2], 0.0, 1.0) == pytest.approx(0.2)
        assert pareto_front([], []).tolist() == []
        with pytest.raises(ValueError):
            area_under_front([], [], 0.0, 1.0)
        with pytest.raises(ValueError, match="lower < upper"):  # an empty interval has no mean
            area_under_front(COSTS, LOSSES, 1.0, 1.0)

    def test_samplers_refuse_a_smallest_multiplier_outside_0_1(self):
        for lower in (-0.5, 0.0, 1.0, float("nan")):  # a negative multiplier is no width
            for sampler in (UniformSampler, RandomSampler):
                with pytest.raises(ValueError, match="lower must be in"):
                    sampler(NUM_DIMS, lower)
            with pytest.raises(ValueError, match="lower must be in"):
                JoslimSampler(NUM_DIMS, lower, COST)

    def test_max_scored_bounds_rescoring_to_the_front_and_new_proposals(self):
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


def run_script(script, *args, cwd, env=None, timeout=300):
    """Run one of the project's scripts as a user would; returns the CompletedProcess."""
    environment = dict(os.environ, PYTHONPATH=REPO, **(env or {}))
    return subprocess.run([sys.executable, os.path.join(REPO, script), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=environment)


def load_run(directory, name):
    """A run's checkpoint, read as any user may read a shared one: weights_only, no allowlist."""
    return torch.load(os.path.join(directory, "runs", name, "checkpoint.pt"), weights_only=True)


def np_all_finite(values):
    return bool(torch.isfinite(torch.as_tensor(values)).all())


def train_in_new_folder(tmp_path_factory, name, flags):
    """A new folder holding runs/NAME, trained by ``train.main`` with ``flags``."""
    folder = tmp_path_factory.mktemp(name)
    trained = run_main(train, "--name", name, *flags, cwd=folder)
    assert trained.returncode == 0, trained.stderr
    return folder


@pytest.fixture(scope="module")
def tiny_whole_run(tmp_path_factory):
    """The folder holding runs/whole: one uninterrupted TINY_RUN, trained once for the tests."""
    return train_in_new_folder(tmp_path_factory, "whole", TINY_RUN)


TINY_EPOCH = with_flag(TINY_RUN, "--epochs", "1")


@pytest.fixture(scope="module")
def tiny_epoch_run(tmp_path_factory):
    """The folder holding runs/epoch: one finished 1-epoch TINY_RUN (8 steps), trained once for
    the tests that need any finished run on disk (``copy_run`` gives each its own copy)."""
    return train_in_new_folder(tmp_path_factory, "epoch", TINY_EPOCH)


def copy_run(folder, name, destination, new_name):
    """Copy runs/NAME of ``folder`` to runs/NEW_NAME of ``destination`` (--name is a session
    flag: the copy continues under its new name as the original would)."""
    shutil.copytree(Path(folder, "runs", name), Path(destination, "runs", new_name))


def assert_same_weights(first, second):
    for key, value in first["model"].items():
        torch.testing.assert_close(second["model"][key], value, rtol=0, atol=0, msg=key)


def signal_name(signum):
    import signal
    return signal.Signals(signum).name


class RunsCode:
    """A pickle that would create the file code_ran when loaded with weights_only=False."""

    def __reduce__(self):
        return (os.mkdir, ("code_ran",))


def sigint_as_in_a_terminal():
    """``preexec_fn`` of a child that is sent Ctrl-C: a suite started in the background (``&``)
    passes SIGINT on ignored, and Python then never raises KeyboardInterrupt in the child."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_when(argv, cwd, marker, signum=2, env=None):
    """Run ``argv`` in ``cwd`` (the project on PYTHONPATH unless ``env`` is given), send
    ``signum`` (2: SIGINT, Ctrl-C) once a line holding ``marker`` is printed, and return
    ``(exit status, stderr)``."""
    process = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env or dict(os.environ, PYTHONPATH=REPO),
                               preexec_fn=sigint_as_in_a_terminal)
    for line in process.stdout:
        if marker in line:
            process.send_signal(signum)
            break
    process.stdout.read()
    return process.wait(timeout=300), process.stderr.read()


@pytest.fixture(scope="module")
def signalled_run(tmp_path_factory):
    """One TINY_RUN stopped twice, by Ctrl-C (SIGINT) at step 5 and then by SIGTERM 3 steps after
    it resumed, then rerun to the end: ``(folder, {signal: (exit status, checkpoint, log) of that
    stop}, the last rerun's CompletedProcess)``."""
    folder, flags = tmp_path_factory.mktemp("signals"), TINY_RUN + ["--print_freq", "1"]
    argv = [sys.executable, os.path.join(REPO, "train.py"), "--name", "parts", *flags]
    stops, at_step = {}, 5
    for signum in (2, 15):  # each once a few steps are done: mid-run
        status = interrupt_when(argv, folder, f" step {at_step}/", signum)[0]
        stops[signum] = (status, load_run(folder, "parts"),
                         (folder / "runs" / "parts" / "log.txt").read_text())
        at_step = stops[signum][1]["step"] + 3
    return folder, stops, run_main(train, "--name", "parts", *flags, cwd=folder)


class TestTrain:
    """train.py: the methods, their costs, distillation, fixed configurations, two processes."""

    @pytest.mark.parametrize("method", ["joslim", "slim", "random"])
    def test_train_one_short_run_per_method(self, method, tmp_path, monkeypatch, tiny_epoch_run):
        monkeypatch.chdir(tmp_path)
        if method == "joslim":  # TINY_EPOCH's default method: the module's run, trained once
            copy_run(tiny_epoch_run, "epoch", tmp_path, method)
        else:
            assert train.main(["--name", method, "--method", method] + TINY_EPOCH) == 0
        checkpoint = load_run(tmp_path, method)
        assert checkpoint["finished"] and checkpoint["step"] == 8  # (96 - 32) // 8 per epoch
        log = (tmp_path / "runs" / method / "log.txt").read_text()
        assert "loss full" in log and "img/s" in log and "done:" in log
        if method == "joslim":
            history = checkpoint["sampler"]["configs"]
            assert len(history) == 2 * 3  # 2 proposals per window, a window every 3 of 8 steps
            assert np_all_finite(checkpoint["sampler"]["losses"][:-2])
        # Rerunning a finished run changes nothing and says so.
        assert train.main(["--name", method, "--method", method] + TINY_EPOCH) == 0
        assert "already finished" in (tmp_path / "runs" / method / "log.txt").read_text()

    def test_joslim_trains_and_evaluates_against_memory(self, tmp_path, monkeypatch, capsys):
        """--cost memory: the sampler's proposals are placed by their peak activation memory, and
        evaluate.py selects, sorts, plots and measures the area of the front against it."""
        monkeypatch.chdir(tmp_path)
        run = with_flag(TINY_RUN, "--epochs", "1") + ["--cost", "memory"]
        assert train.main(["--name", "memory", "--method", "joslim"] + run) == 0
        checkpoint = load_run(tmp_path, "memory")
        assert checkpoint["finished"] and checkpoint["args"]["cost"] == "memory"
        net = models.get_model("slim_resnet20", 10)
        configs = np.asarray(checkpoint["sampler"]["configs"])
        full = slimmable.memory(net, 1.0)
        ratios = slimmable.memory(net, configs[-2:]) / full
        last = [line for line in (tmp_path / "runs" / "memory" / "log.txt").read_text().splitlines()
                if "proposed costs" in line][-1]
        assert last.endswith("[" + ", ".join(f"{r:.2f}" for r in ratios) + "]")

        result = evaluate.evaluate_run("memory", argv=["--calib_batches", "1", "--threads", "1"])
        assert result["cost"] == "memory" and result["full_cost"] == full
        assert result["smallest_ratio"] == slimmable.memory(net, 0.42) / full
        points, candidates = result["points"], result["candidates"]
        for record in points + candidates:
            assert record["memory"] == slimmable.memory(net, record["widths"])
            assert record["cost_ratio"] == record["memory"] / full
            assert record["macs"] == slimmable.macs(net, record["widths"])  # still reported
        assert [p["memory"] for p in points] == sorted(p["memory"] for p in points)
        front = pareto_front([c["memory"] for c in candidates],
                             [100 - c["held_out"]["top1"] for c in candidates])
        assert {candidates[i]["memory"] for i in front} <= {p["memory"] for p in points}
        assert result["area"] == pytest.approx(area_under_front(
            [p["cost_ratio"] for p in points], [100 - p["test"]["top1"] for p in points],
            result["smallest_ratio"], 1.0))
        table = np.loadtxt(tmp_path / "results" / "memory_eval_pareto.txt", ndmin=2)
        np.testing.assert_allclose(table[0], [p["cost_ratio"] for p in points])
        svg = (tmp_path / "results" / "memory_pareto.svg").read_text()
        assert "peak activation memory" in svg and "MACs" not in svg
        printed = capsys.readouterr().out
        assert "      memory   ratio      MACs" in printed
        progress = [line for line in printed.splitlines() if line.startswith("  test [")]
        assert len(progress) == len(points) and all(" s, eta " in line for line in progress)
        assert f"{points[-1]['memory']:>12,}{points[-1]['cost_ratio']:>8.3f}" in printed
        # --cost overrides the run's: the same run against MACs.
        result = evaluate.evaluate_run("memory", argv=["--calib_batches", "1", "--threads", "1",
                                                       "--cost", "macs"])
        assert result["cost"] == "macs" and result["full_cost"] == result["full_macs"]
        assert all(p["cost_ratio"] == p["macs_ratio"] for p in result["points"])

    def test_train_fixed_configurations(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        net = models.get_model("slim_resnet20", 10)
        paths = []
        for i, widths in enumerate([0.5, 0.75]):
            paths.append(str(tmp_path / f"config{i}.json"))
            slimmable.save_config(paths[-1], net, widths)
        assert train.main(["--name", "fixed", "--method", "fixed", "--channel_config", *paths]
                          + TINY_EPOCH) == 0
        checkpoint = load_run(tmp_path, "fixed")
        assert checkpoint["fixed_configs"] == [[0.5] * 12, [0.75] * 12]
        # Flags --method fixed never reads may differ on a rerun (a changed default, say).
        assert train.main(["--name", "fixed", "--method", "fixed", "--channel_config", *paths,
                           "--kd_weight", "0.7", "--tau", "9"] + TINY_EPOCH) == 0

    def test_student_loss_mixes_distillation_and_labels(self):
        generator = torch.Generator().manual_seed(0)
        logits = torch.randn(6, 5, generator=generator)
        teacher = torch.softmax(torch.randn(6, 5, generator=generator), dim=1)
        targets = torch.randint(0, 5, (6,), generator=generator)
        labels = nn.functional.cross_entropy(logits, targets, label_smoothing=0.1)
        kd = -(teacher * torch.log_softmax(logits, dim=1)).sum(1).mean()
        assert torch.equal(train.student_loss(logits, targets, teacher, 1.0, 0.1), kd)
        assert torch.equal(train.student_loss(logits, targets, teacher, 0.0, 0.1), labels)
        assert torch.equal(train.student_loss(logits, targets, None, 0.7, 0.1), labels)
        torch.testing.assert_close(train.student_loss(logits, targets, teacher, 0.25, 0.1),
                                   0.25 * kd + 0.75 * labels)

    def test_kd_weight_changes_only_the_students(self, tmp_path, monkeypatch):
        """--kd_weight 0 is the same run as --distill_after beyond the end (labels only), and the
        training curves are written, kept in the checkpoint and evenly spaced."""
        monkeypatch.chdir(tmp_path)
        short = with_flags(TINY_RUN, epochs=1, synthetic_train=64, curve_points=2, curve_images=24)
        assert train.main(["--name", "labels", "--kd_weight", "0"] + short) == 0
        assert train.main(["--name", "late", "--kd_weight", "1", "--distill_after", "5"] + short) == 0
        assert train.main(["--name", "kd", "--kd_weight", "1", "--distill_after", "0"] + short) == 0
        labels, late, kd = (load_run(tmp_path, n) for n in ("labels", "late", "kd"))
        for key, value in labels["model"].items():
            torch.testing.assert_close(late["model"][key], value, msg=key)
        assert not torch.equal(kd["model"]["fc.weight"], labels["model"]["fc.weight"])
        # One sandwich step from the same weights: the full network's loss is the labels' under
        # any --kd_weight; the students' (the last returned) follows the mix.
        torch.manual_seed(0)
        net, inputs = models.get_model("slim_resnet20", 10), torch.randn(8, 3, 32, 32)
        targets, configs = torch.randint(0, 10, (8,)), [[0.42] * len(net.width_groups)]
        full, student = zip(*(train.train_step(net, net, inputs, targets, configs, argparse.Namespace(
            method="slim", kd_weight=kd_weight, label_smoothing=0.1), contextlib.nullcontext)
            for kd_weight in (0.0, 1.0)))
        assert torch.equal(full[0], full[1]) and not torch.equal(student[0], student[1])
        curves = json.loads((tmp_path / "runs" / "labels" / "curves.json").read_text())
        assert [p["step"] for p in curves["points"]] == [2, 4] == \
            [p["step"] for p in labels["curves"]]
        for point in curves["points"]:
            assert 0 <= point["full_top1"] <= 100 and 0 <= point["smallest_top1"] <= 100
            assert point["full_loss"] > 0 and point["smallest_loss"] > 0 and point["lr"] >= 0

    def test_torchrun_two_processes_agree(self, tmp_path):
        environment = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                   "--rdzv_backend=c10d", "--rdzv_endpoint=localhost:0",
                   os.path.join(REPO, "train.py"), "--name", "ddp"] + with_flags(
                       TINY_RUN, epochs=1, synthetic_train=48)  # 2 steps of 4 images a process
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                                env=environment)
        assert result.returncode == 0, result.stdout + result.stderr
        log = (tmp_path / "runs" / "ddp" / "log.txt").read_text()
        assert "over 2 process(es)" in log
        assert "all 2 ranks hold identical weights and trained the same configurations" in log

    def test_torchrun_with_one_process_trains_in_a_process_group(self, tmp_path, monkeypatch):
        """torchrun --nproc_per_node=1 (its environment, in this process): the run trains in a
        one-process gloo group, its data sharded through it as with several processes, and
        leaves the group at the end."""
        torchrun = {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
        for key, value in torchrun.items():
            monkeypatch.setenv(key, value)
        get_loaders, seen = data.get_loaders, []

        def loaders_in_group(*args):
            made = get_loaders(*args)
            seen.append((torch.distributed.is_initialized() and torch.distributed.get_backend(),
                         type(made.train.sampler).__name__))
            return made

        monkeypatch.setattr(data, "get_loaders", loaders_in_group)
        try:
            done = run_main(train, "--name", "one", *TINY_EPOCH, cwd=tmp_path)
        finally:
            if torch.distributed.is_initialized():  # only when the run failed to leave it
                torch.distributed.destroy_process_group()
        assert done.returncode == 0, done.stdout + done.stderr
        assert seen == [("gloo", "DistributedSampler")]
        assert load_run(tmp_path, "one")["finished"] and not torch.distributed.is_initialized()


class TestResume:
    """train.py and runs.py: pausing and resuming exactly, signals, locks, checkpoint writes."""

    def test_resume_reproduces_an_uninterrupted_run(self, tmp_path, monkeypatch, tiny_whole_run):
        monkeypatch.chdir(tmp_path)
        # Pause mid-epoch, inside a Joslim window, then rerun the same command twice.
        assert train.main(["--name", "parts", "--pause_after", "7"] + TINY_RUN) == 0
        assert not load_run(tmp_path, "parts")["finished"]
        assert train.main(["--name", "parts", "--pause_after", "6"] + TINY_RUN) == 0
        assert train.main(["--name", "parts"] + TINY_RUN) == 0
        whole, parts = load_run(tiny_whole_run, "whole"), load_run(tmp_path, "parts")
        assert parts["finished"] and parts["step"] == whole["step"]
        for key, value in whole["model"].items():
            torch.testing.assert_close(parts["model"][key], value, msg=key)
        assert (whole["sampler"]["configs"] == parts["sampler"]["configs"]).all()
        assert whole["curves"] == parts["curves"] and len(whole["curves"]) == 4  # steps 4, 8, 12, 16

    def test_resume_with_data_workers_is_exact(self, tmp_path, monkeypatch):
        """Augmenting DataLoader workers (the default --workers 2): a paused and resumed run equals
        the uninterrupted one, across an epoch boundary and inside an epoch."""
        monkeypatch.chdir(tmp_path)
        flags = with_flags(TINY_RUN, workers=2, method="random", synthetic_train=56)  # 3 steps an epoch
        assert train.main(["--name", "whole"] + flags) == 0
        assert train.main(["--name", "parts", "--pause_after", "4"] + flags) == 0
        assert train.main(["--name", "parts"] + flags) == 0
        assert_same_weights(load_run(tmp_path, "whole"), load_run(tmp_path, "parts"))

    @pytest.mark.parametrize("signum,status", [(2, 130), (15, 143)])
    def test_signal_stops_at_a_step_boundary_and_resumes_exactly(self, signum, status,
                                                                signalled_run, tiny_whole_run):
        """Ctrl-C (SIGINT) or SIGTERM at any moment: the trainer finishes the step it is in, saves,
        exits 128 + signal; rerunning the command ends with the uninterrupted run's weights."""
        folder, stops, finished = signalled_run
        exit_status, parts, log = stops[signum]
        assert exit_status == status
        assert not parts["finished"] and 5 <= parts["step"] < 16
        assert f"{signal_name(signum)} at step {parts['step']}: checkpoint saved" in log
        assert finished.returncode == 0, finished.stderr
        assert_same_weights(load_run(tiny_whole_run, "whole"), load_run(folder, "parts"))

    def test_a_second_trainer_on_the_same_run_is_refused(self, tmp_path):
        flags = with_flags(TINY_RUN, epochs=40, print_freq=1)  # until stopped
        environment = dict(os.environ, PYTHONPATH=REPO)
        first = subprocess.Popen([sys.executable, os.path.join(REPO, "train.py"), "--name", "l2",
                                  *flags], cwd=tmp_path, stdout=subprocess.PIPE, text=True,
                                 env=environment)
        for line in first.stdout:
            if " step 2/" in line:
                break
        second = run_script("train.py", "--name", "l2", *flags, cwd=tmp_path)
        first.send_signal(15)
        first.stdout.read()
        assert first.wait(timeout=300) == 143
        assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
        assert f"runs/l2 is being trained by process {first.pid}" in second.stderr
        log = (tmp_path / "runs" / "l2" / "log.txt").read_text()
        assert "is being trained" not in log and log.count("training of slim_resnet20") == 1
        # The lock went with the process: the run continues.
        third = run_main(train, "--name", "l2", *flags, "--pause_after", "1", cwd=tmp_path)
        assert third.returncode == 0 and "resuming" in third.stdout, third.stderr

    def test_checkpoint_write_is_atomic(self, tmp_path, monkeypatch):
        path = str(tmp_path / "checkpoint.pt")
        runs.save_checkpoint(path, {"step": 1})

        def crash_midway(descriptor):
            raise KeyboardInterrupt  # killed while writing, the bytes not yet on disk

        monkeypatch.setattr(os, "fsync", crash_midway)
        with pytest.raises(KeyboardInterrupt):
            runs.save_checkpoint(path, {"step": 2})
        monkeypatch.undo()
        assert torch.load(path, weights_only=True) == {"step": 1}
        assert os.listdir(tmp_path) == ["checkpoint.pt"]  # no temporary file left behind
        # readable as a plain open() would make it under the umask, not owner-only as mkstemp's
        assert os.stat(path).st_mode & 0o777 == 0o666 & ~runs.UMASK
        assert runs.UMASK == os.umask(runs.UMASK)  # and the process's umask is as it was

    def test_a_batch_the_processes_cannot_share_equally_is_refused(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        args = train.parse_args(["--name", "odd"] + with_flag(TINY_RUN, "--batch_size", "9"))
        with pytest.raises(runs.Fail, match="--batch_size 9 must be a multiple of the 2 processes"):
            train.TrainingRun(args, torch.device("cpu"), 0, 2, print)

    def test_a_killed_writes_temporary_file_goes_at_the_next_write(self, tmp_path):
        """kill -9 during a write leaves checkpoint.pt.XXXX.tmp behind; the next write of the
        same file removes it (they are the size of a checkpoint)."""
        path = tmp_path / "checkpoint.pt"
        (tmp_path / "checkpoint.pt.k2j4x.tmp").write_bytes(b"half a checkpoint")
        (tmp_path / "other.pt.a1.tmp").write_bytes(b"another file's")
        runs.save_checkpoint(str(path), {"step": 3})
        assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt", "other.pt.a1.tmp"]

    def test_a_full_disk_ends_training_in_one_line(self, tmp_path):
        """A real write failure (the kernel's file-size limit, RLIMIT_FSIZE, as a full disk would):
        one line naming the file and the OS's reason, the previous checkpoint intact, no temporary
        file left, so the rerun with room continues."""
        import resource
        import signal

        def small_files():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process
            resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

        flags = with_flags(TINY_RUN, epochs=1, synthetic_train=64)  # 4 steps
        first = run_main(train, "--name", "full", *flags, "--pause_after", "1", cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        checkpoint = tmp_path / "runs" / "full" / "checkpoint.pt"
        before = checkpoint.read_bytes()
        assert len(before) > 200_000
        environment = dict(os.environ, PYTHONPATH=REPO)
        limited = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), "--name", "full",
                                  *flags], cwd=tmp_path, capture_output=True, text=True,
                                 env=environment, preexec_fn=small_files, timeout=300)
        assert limited.returncode == 2
        assert limited.stderr.splitlines() == [
            f"error: cannot write {os.path.join('runs', 'full', 'checkpoint.pt')}: File too large"]
        assert checkpoint.read_bytes() == before
        assert not [f for f in os.listdir(checkpoint.parent) if f.endswith(".tmp")]


def assert_invalid_flag(parse_args, argv, capsys):
    """``parse_args(argv)`` exits 2 with one line calling ``argv[0]``'s value invalid."""
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1, error  # argparse's "error: argument --x: ..." or the data check's
    assert error[0].startswith((f"error: argument {argv[0]}: ", f"error: {argv[0]} ")), error
    assert "invalid" in error[0], error


class TestTrainRefusals:
    """train.py and runs.py: what a user can get wrong ends in one line, exit status 2."""

    def test_unusable_files_end_in_one_line_before_any_work(self, tmp_path, monkeypatch, capsys,
                                                            tiny_epoch_run):
        """A 0-byte checkpoint, another network's weights in checkpoint.pt, and a file where
        runs/ or results/ should be: one line and status 2 from train.py and evaluate.py."""
        monkeypatch.chdir(tmp_path)
        flags = ["--name", "u"] + TINY_EPOCH
        copy_run(tiny_epoch_run, "epoch", tmp_path, "u")
        assert train.main(flags) == 0
        path = tmp_path / "runs" / "u" / "checkpoint.pt"
        good = path.read_bytes()
        checkpoint = torch.load(path, weights_only=True)
        checkpoint["model"] = models.get_model("slim_resnet32", 10).state_dict()
        torch.save(checkpoint, path)
        capsys.readouterr()
        assert train.main(flags) == 2 and evaluate.main(["--name", "u"]) == 2
        path.write_bytes(b"")
        assert train.main(flags) == 2 and evaluate.main(["--name", "u"]) == 2
        path.write_bytes(good)
        shutil.rmtree(tmp_path / "results", ignore_errors=True)
        (tmp_path / "results").write_text("a file, not a folder")
        assert evaluate.main(["--name", "u"]) == 2
        shutil.move(tmp_path / "runs", tmp_path / "kept")
        (tmp_path / "runs").write_text("a file, not a folder")
        assert train.main(flags) == 2
        errors = capsys.readouterr().err.strip().splitlines()
        assert len(errors) == 6 and all(line.startswith("error: ") for line in errors), errors
        assert "another network" in errors[0] and "another network" in errors[1], errors
        assert "cannot write into results" in errors[4] and "cannot write into runs" in errors[5]

    def test_divergence_stops_training_and_keeps_the_last_finite_checkpoint(
            self, tmp_path, monkeypatch, capsys, tiny_epoch_run):
        """A learning rate far too large: training stops in one line (status 2) naming the step,
        the network and the learning rate; nothing non-finite is saved; evaluate.py and
        search.py refuse a checkpoint whose weights are not finite."""
        monkeypatch.chdir(tmp_path)
        flags = ["--name", "d"] + TINY_EPOCH
        copy_run(tiny_epoch_run, "epoch", tmp_path, "d")
        path = tmp_path / "runs" / "d" / "checkpoint.pt"
        before = path.read_bytes()
        capsys.readouterr()
        assert train.main(flags + ["--restart", "--baselr", "1e9", "--warmup", "0"]) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and "diverged" in error[0] and "step" in error[0], error
        assert path.read_bytes() == before
        checkpoint = torch.load(path, weights_only=True)
        checkpoint["model"]["conv1.weight"][0, 0, 0, 0] = float("nan")
        torch.save(checkpoint, path)
        assert evaluate.main(["--name", "d"]) == 2
        assert search.main(["--name", "d", "--target_ratios", "0.5"]) == 2
        for line in capsys.readouterr().err.strip().splitlines():
            assert "not finite (conv1.weight)" in line, line

    def test_a_run_refused_by_its_data_leaves_no_folder(self, tmp_path, monkeypatch, capsys):
        """A failed data check ends in one line and leaves neither runs/NAME/log.txt nor the lock;
        a run that already has files keeps them all."""
        monkeypatch.chdir(tmp_path)
        argv = ["--name", "bad", "--dataset", "CIFAR10", "--datapath", str(tmp_path / "none")]
        assert train.main(argv + ["--threads", "1"]) == 2
        assert capsys.readouterr().err.count("\n") == 1
        assert not (tmp_path / "runs" / "bad").exists()
        (tmp_path / "runs" / "bad").mkdir()
        (tmp_path / "runs" / "bad" / "notes.txt").write_text("mine")
        assert train.main(argv + ["--threads", "1"]) == 2
        assert sorted(os.listdir(tmp_path / "runs" / "bad")) == ["notes.txt", "train.lock"]

    def test_train_refuses_another_runs_checkpoint(self, tmp_path, monkeypatch, capsys,
                                                   tiny_epoch_run):
        monkeypatch.chdir(tmp_path)
        copy_run(tiny_epoch_run, "epoch", tmp_path, "run")
        before = (tmp_path / "runs" / "run" / "checkpoint.pt").read_bytes()
        result = run_main(train, "--name", "run", "--method", "slim",
                          *with_flag(TINY_RUN, "--epochs", "1"), cwd=tmp_path)
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and "--restart" in result.stderr
        assert (tmp_path / "runs" / "run" / "checkpoint.pt").read_bytes() == before
        # Settings that change the model, the data or the schedule are named, old and new values.
        for flag, value in (("--synthetic_classes", "5"), ("--batch_size", "16"),
                            ("--lower_channel", "0.6"), ("--kd_weight", "0.2"), ("--workers", "2")):
            assert train.main(["--name", "run"] + with_flag(with_flag(TINY_RUN, "--epochs", "1"),
                                                            flag, value)) == 2
            assert f"{flag} " in capsys.readouterr().err
        assert (tmp_path / "runs" / "run" / "checkpoint.pt").read_bytes() == before
        # How it runs may change: threads, progress lines, pauses.
        assert train.main(["--name", "run"] + with_flag(with_flag(with_flag(
            TINY_RUN, "--epochs", "1"), "--threads", "2"), "--print_freq", "3")) == 0

    @pytest.mark.parametrize("args,message", [
        (["--epochs", "0"], "--epochs"),
        (["--method", "fixed"], "--channel_config"),
        (["--network", "resnet1000"], "resnet1000"),
        (["--dataset", "CIFAR10", "--datapath", "/nonexistent"], "/nonexistent"),
        (["--method", "fixed", "--channel_config", "/nonexistent.json"], "/nonexistent.json"),
    ])
    def test_train_user_errors_exit_2_with_one_line(self, args, message, tmp_path):
        result = run_main(train, *args, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr

    def test_foreign_pickles_are_refused_in_one_line(self, tmp_path):
        """A list, or a dict that names a network but holds no weights, as runs/NAME/checkpoint.pt;
        a training checkpoint given to --subnet."""
        commands = [("train.py", "--name", "a_list"), ("train.py", "--name", "no_model",
                                                       "--method", "random"),
                    ("search.py", "--name", "a_list", "--target_ratios", "0.5"),
                    ("search.py", "--name", "no_model", "--target_ratios", "0.5"),
                    ("evaluate.py", "--subnet", os.path.join("runs", "a_list", "checkpoint.pt")),
                    ("train.py", "--name", "runs_code"), ("evaluate.py", "--name", "runs_code"),
                    ("search.py", "--name", "runs_code", "--target_ratios", "0.5")]
        # a folder each: every command meets the files as written
        folders = [tmp_path / str(index) for index in range(len(commands))]
        for folder in folders:
            for name, content in (("a_list", [1, 2]), ("no_model", {"network": "slim_resnet20",
                                                                     "method": "random"}),
                                  ("runs_code", {"model": RunsCode()})):
                os.makedirs(folder / "runs" / name)
                torch.save(content, folder / "runs" / name / "checkpoint.pt")
        modules = {"train.py": train, "search.py": search, "evaluate.py": evaluate}
        for folder, (script, *argv) in zip(folders, commands):
            result = run_main(modules[script], *argv, cwd=folder)
            error = result.stderr
            assert result.returncode == 2 and error.count("\n") == 1, (script, argv, error)
            assert "\x1b" not in error and ("is not a" in error or "nothing in it was run" in error)
        # checkpoints load with weights_only=True
        assert not any((folder / "code_ran").exists() for folder in folders)

    @pytest.mark.parametrize("argv", [
        ["--baselr", "-1"], ["--baselr", "nan"], ["--momentum", "-1"], ["--label_smoothing", "2"],
        ["--threads", "-1"], ["--workers", "-1"], ["--prior_points", "-1"], ["--wd", "-1"],
        ["--warmup", "-1"], ["--rescore_limit", "-1"], ["--num_sampled_arch", "-1"],
        ["--num_sampled_arch", "-1", "--method", "slim"], ["--device", "tpu"], ["--kd_weight", "1.5"],
        ["--val_size", "-5"], ["--train_size", "-1"], ["--lower_channel", "0"],
        ["--lower_channel", "1.0"], ["--seed", "-1"], ["--seed", "4294967296"],
        ["--data_seed", "-1"], ["--prior_points", "0"], ["--name", "../x"],
        ["--name", "/tmp/x"], ["--name", ""], ["--name", "."], ["--name", "a\nb"], ["--name", "x" * 300],
        ["--epochs", "1" + "0" * 400]])  # an integer beyond any float
    def test_bad_flag_values_are_refused_in_one_line(self, argv, capsys):
        assert_invalid_flag(train.parse_args, argv, capsys)

    def test_restart_and_resume_together_are_refused(self, capsys):
        with pytest.raises(SystemExit) as leaving:  # one would overwrite what the other continues
            train.parse_args(["--restart", "--resume"])
        assert leaving.value.code == 2 and capsys.readouterr().err.strip().splitlines() == [
            "error: argument --resume: not allowed with argument --restart"]

    @pytest.mark.parametrize("argv", [
        ["--batch_size", "0"], ["--batch_size", "-8"], ["--lower_channel", "0"],
        ["--lower_channel", "nan"], ["--lower_channel", "1.5"], ["--calib_batches", "0"],
        ["--threads", "-1"], ["--device", "tpu"], ["--workers", "-1"], ["--val_size", "-1"],
        ["--scale_ratio", "nan"], ["--scale_ratio", "0"], ["--image_size", "0"]])
    def test_evaluate_bad_flag_values_are_refused_in_one_line(self, argv, capsys):
        assert_invalid_flag(lambda argv: evaluate.parse_args(argv, {"dataset": "ImageNet"}), argv,
                            capsys)

    def test_no_cli_accepts_an_abbreviated_flag(self, tmp_path):
        """argparse's prefix matching would read --epoch as --epochs: off in every script."""
        commands = [("train.py", "--epoch", "3"), ("search.py", "--target_ratio", "0.5"),
                    ("evaluate.py", "--nam", "x"), ("data.py", "info", "--datas", "x")]
        environment = dict(os.environ, PYTHONPATH=REPO)
        processes = [subprocess.Popen([sys.executable, os.path.join(REPO, script), *argv],
                                      cwd=tmp_path, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                      text=True, env=environment) for script, *argv in commands]
        for (script, *argv), process in zip(commands, processes):
            error = process.communicate(timeout=120)[1]
            assert process.returncode == 2, (script, error)
            assert f"unrecognized arguments: {argv[-2]} {argv[-1]}" in error, (script, error)


# ---------------------------------------------------------------------------------------------
# evaluate.py

EVAL_SVG_NS = "{http://www.w3.org/2000/svg}"


def eval_env():
    # One thread per process: on a shared, loaded machine more threads are many times slower.
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def evaluated_tiny_run(tmp_path_factory):
    """``(working directory, evaluate_run's JSON)`` of a 1-epoch Joslim run, evaluated with
    --export; the current directory is the working directory while the fixture lives."""
    workdir = tmp_path_factory.mktemp("evaluate")
    trained = run_main(train, "--name", "tiny", "--method", "joslim", "--epochs", "1", "--batch_size",
                       "32", "--tau", "1", "--prior_points", "2", "--print_freq", "5", "--threads",
                       "1", *EVAL_TINY_DATA, cwd=workdir)
    assert trained.returncode == 0, trained.stderr
    previous, threads = os.getcwd(), torch.get_num_threads()
    os.chdir(workdir)
    try:
        result = evaluate.evaluate_run("tiny", argv=["--calib_batches", "2", "--export", "subnets",
                                                     "--threads", "1"])
        yield workdir, result
    finally:
        os.chdir(previous)
        torch.set_num_threads(threads)


class TestEvaluate:
    """evaluate.py: fronts, result files, plots, subnets, comparisons."""

    def test_result_file_has_the_reference_format(self, evaluated_tiny_run):
        workdir, result = evaluated_tiny_run
        table = np.loadtxt(workdir / "results" / "tiny_eval_pareto.txt")
        assert table.shape == (3, len(result["points"]))
        assert np.all(np.diff(table[0]) > 0) and table[0, -1] == 1.0
        np.testing.assert_allclose(table[1], [p["test"]["top1"] for p in result["points"]])
        np.testing.assert_allclose(table[2], [p["test"]["top5"] for p in result["points"]])
        with open(workdir / "results" / "tiny_eval_pareto.json") as handle:
            saved = json.load(handle)
        assert saved["network"] == "slim_resnet20" and saved["method"] == "joslim"
        assert 0 <= saved["area"] <= 100 and saved["area"] == pytest.approx(result["area"])
        groups = {group.name for group in models.get_model("slim_resnet20", 4).width_groups}
        for point in saved["points"]:
            assert set(point["channels"]) == groups and point["macs"] > 0 and point["params"] > 0
            assert point["held_out"]["images"] == 48 and point["test"]["images"] == 96

    def test_reported_points_are_the_held_out_front(self, evaluated_tiny_run):
        _, result = evaluated_tiny_run
        candidates = result["candidates"]

        def dominated(c):
            return any(o["macs"] <= c["macs"] and o["held_out"]["top1"] >= c["held_out"]["top1"]
                       and (o["macs"] < c["macs"] or o["held_out"]["top1"] > c["held_out"]["top1"])
                       for o in candidates)

        for point in result["points"]:
            assert point["on_held_out_front"] == (not dominated(point))
            assert point["on_held_out_front"] or point["macs_ratio"] == 1.0  # only the full network
        front_macs = {c["macs"] for c in candidates if not dominated(c)}
        assert front_macs <= {p["macs"] for p in result["points"]}  # the whole front is reported
        assert min(c["macs_ratio"] for c in candidates) == pytest.approx(result["smallest_ratio"])

    def test_exported_subnets_reproduce_the_test_accuracy(self, evaluated_tiny_run, capsys):
        _, result = evaluated_tiny_run
        for point in result["points"]:
            assert evaluate.main(["--subnet", point["subnet"]]) == 0
            printed = capsys.readouterr().out
            assert f"test top-1 {point['test']['top1']:.2f}," in printed
            assert evaluate.evaluate_subnet(point["subnet"])["top1"] == point["test"]["top1"]
        # The documented recipe: models.py and slimmable.py only, plain torch layers.
        saved = torch.load(result["points"][0]["subnet"], weights_only=True)
        net = slimmable.export(models.get_model(saved["network"], saved["num_classes"],
                                                **saved["model_options"]), saved["widths"])
        net.load_state_dict(saved["state_dict"])
        assert not any(isinstance(m, slimmable.SLIM_LAYERS) for m in net.modules())
        assert sum(p.numel() for p in net.parameters()) == saved["params"] == result["points"][0]["params"]

    def test_svg_plots_are_well_formed_with_one_curve_per_run(self, evaluated_tiny_run):
        workdir, result = evaluated_tiny_run
        root = ET.parse(workdir / "results" / "tiny_pareto.svg").getroot()
        assert root.tag == EVAL_SVG_NS + "svg" and len(root.findall(f".//{EVAL_SVG_NS}polyline")) == 1
        copy = json.loads((workdir / "results" / "tiny_eval_pareto.json").read_text())
        copy["name"] = "tiny_copy"
        for point in copy["points"]:
            point["test"]["top1"] = max(0.0, point["test"]["top1"] - 5)
        (workdir / "results" / "tiny_copy_eval_pareto.json").write_text(json.dumps(copy))
        rows = evaluate.compare(["tiny", "tiny_copy"], str(workdir / "both.svg"))
        curves = ET.parse(workdir / "both.svg").getroot().findall(f".//{EVAL_SVG_NS}polyline")
        assert len(curves) == 2 and curves[0].get("stroke") != curves[1].get("stroke")
        best = max(p["test"]["top1"] for p in result["points"])
        assert rows[0]["top1_at"][1.0] == best and rows[1]["top1_at"][1.0] == max(0.0, best - 5)
        below_smallest = result["smallest_ratio"] / 2
        assert evaluate.top1_at(result["points"], below_smallest) is None
        # The training curves next to the front: loss and held-out top-1, full and smallest.
        root = ET.parse(workdir / "results" / "tiny_curves.svg").getroot()
        panels = root.findall(f"{EVAL_SVG_NS}svg")
        assert len(panels) == 2 and all(len(p.findall(f".//{EVAL_SVG_NS}polyline")) == 2
                                        for p in panels)
        assert len(result["training_curves"]) == 4  # one point per step of the 4-step epoch

    def test_compare_reevaluates_a_run_whose_checkpoint_changed(self, evaluated_tiny_run, monkeypatch,
                                                                 capsys):
        workdir, result = evaluated_tiny_run
        assert result["checkpoint_stamp"] == evaluate.checkpoint_stamp("tiny")
        evaluated = []
        monkeypatch.setattr(evaluate, "evaluate_run",
                            lambda name, *args: evaluated.append(name) or result)
        evaluate.compare(["tiny"], str(workdir / "one.svg"))
        assert evaluated == []  # the result file matches the checkpoint: read, not recomputed
        checkpoint = workdir / "runs" / "tiny" / "checkpoint.pt"
        times = os.stat(checkpoint)
        os.utime(checkpoint, ns=(times.st_atime_ns, times.st_mtime_ns + 10**9))  # as if retrained
        try:
            evaluate.compare(["tiny"], str(workdir / "one.svg"))
        finally:
            os.utime(checkpoint, ns=(times.st_atime_ns, times.st_mtime_ns))
        assert evaluated == ["tiny"] and "evaluating it again" in capsys.readouterr().out

    def test_user_errors_exit_2_with_one_line(self, evaluated_tiny_run, capsys):
        workdir, _ = evaluated_tiny_run
        done = run_main(evaluate, "--name", "no_such_run", cwd=workdir)
        assert done.returncode == 2 and done.stderr.startswith("error: ")
        assert len(done.stderr.strip().splitlines()) == 1 and "no_such_run" in done.stderr
        (workdir / "bad.json").write_text("{not json")
        (workdir / "runs" / "broken").mkdir()
        (workdir / "runs" / "broken" / "checkpoint.pt").write_bytes(b"not a checkpoint")
        for argv in (["--name", "tiny", "--configs", "bad.json"], ["--name", "broken"],
                     ["--subnet", "bad.json"], ["--compare", "tiny", "no_such_run"]):
            assert evaluate.main(argv) == 2, argv
            error = capsys.readouterr().err
            assert error.startswith("error: ") and len(error.strip().splitlines()) == 1, (argv, error)

    def test_a_subnet_refuses_data_its_run_was_not_trained_on(self, evaluated_tiny_run):
        """--subnet refuses another dataset or class count in one line, as --name does (not a
        traceback, nor a top-1 over labels the network never had)."""
        _, result = evaluated_tiny_run
        subnet = result["points"][0]["subnet"]
        for flags, says in ((["--dataset", "FashionMNIST"], "--dataset synthetic, not FashionMNIST"),
                            (["--synthetic_classes", "5"], "--synthetic_classes 4, not 5")):
            assert_one_line_error(run_main(evaluate, "--subnet", subnet, "--threads", "1", *flags),
                                  f"subnet {subnet} was trained with {says}")

    def test_the_held_out_split_holds_no_image_the_run_trained_on(self, evaluated_tiny_run):
        """Another --data_seed or --synthetic_train (other images), or a --val_size above the
        run's (a held-out split reaching into its training images), is refused before any work;
        a smaller --val_size, a subset of the images the run never trained on, is not."""
        workdir, _ = evaluated_tiny_run
        result_file = workdir / "results" / "tiny_eval_pareto.json"
        before = result_file.read_bytes()
        for flags, says in ((["--val_size", "49"], "run tiny held out 48 of its training images"),
                            (["--data_seed", "5"], "--data_seed 0, not 5"),
                            (["--synthetic_train", "200"], "--synthetic_train 176, not 200")):
            assert_one_line_error(run_main(evaluate, "--name", "tiny", "--threads", "1", *flags),
                                  says)
        assert result_file.read_bytes() == before
        recorded = torch.load(workdir / "runs" / "tiny" / "checkpoint.pt", weights_only=True)["args"]
        flags = {key: recorded[key] for key in data.data_flag_names()}
        assert evaluate.parse_args(["--val_size", "47"], flags, ("run tiny", flags)).val_size == 47

    def test_a_run_whose_network_file_is_gone_is_named_not_the_flag(self, evaluated_tiny_run):
        """A --network FILE.py:FUNCTION run whose file has moved: the error names the run, not a
        --network flag the user did not give."""
        workdir, _ = evaluated_tiny_run
        checkpoint = torch.load(workdir / "runs" / "tiny" / "checkpoint.pt", weights_only=True)
        checkpoint["network"] = checkpoint["args"]["network"] = f"{workdir / 'gone.py'}:build"
        (workdir / "runs" / "moved").mkdir()
        torch.save(checkpoint, workdir / "runs" / "moved" / "checkpoint.pt")
        done = run_main(evaluate, "--name", "moved", "--threads", "1")
        assert_one_line_error(done, "error: cannot rebuild the network of run moved", "gone.py")

    def test_ctrl_c_and_bad_destinations_end_in_one_line(self, evaluated_tiny_run):
        """Ctrl-C during the evaluation: status 130 and one line, no traceback; --export onto a
        file and a --name that would leave runs/: refused before any work, one line."""
        workdir, _ = evaluated_tiny_run
        status, error = interrupt_when([sys.executable, os.path.join(REPO, "evaluate.py"), "--name",
                                        "tiny", "--threads", "1"], workdir, "held-out [",
                                       env=eval_env())
        assert status == 130 and len(error.strip().splitlines()) == 1, error
        assert "Traceback" not in error
        (workdir / "a_file").write_text("not a folder")
        for argv in (["--name", "tiny", "--export", "a_file"], ["--name", "../tiny"]):
            assert_one_line_error(run_main(evaluate, *argv))

    def test_draw_batches_is_the_same_on_every_call_with_workers(self):
        """BN calibration batches come from the augmenting training loader; with DataLoader
        workers they must not depend on what the loader served before."""
        args = parse_data_args("--synthetic_train", "200", "--synthetic_test", "20", "--val_size",
                               "20", "--workers", "2", "--no-pin_memory")
        loaders = data.get_loaders(args, 16)
        first = evaluate.draw_batches(loaders.train, 2, "cpu")
        next(iter(loaders.train))  # the trainer used it in between
        again = evaluate.draw_batches(loaders.train, 2, "cpu")
        for (images, labels), (images_again, labels_again) in zip(first, again):
            assert torch.equal(images, images_again) and torch.equal(labels, labels_again)

    def test_uniform_configs_are_evenly_spaced_in_macs(self):
        net = models.get_model("slim_resnet20", 10)
        configs, targets = evaluate.uniform_configs(net, 0.42)
        assert configs.shape == (40, len(net.width_groups)) and np.all(configs == configs[:, :1])
        reached = slimmable.macs(net, configs).astype(float)
        assert reached[0] == slimmable.macs(net, 0.42) and reached[-1] == slimmable.macs(net, 1.0)
        np.testing.assert_allclose(targets, np.linspace(reached[0], reached[-1], 40))
        assert np.all(np.diff(reached) >= 0)
        # Rounding makes MACs a step function of the multiplier: each target is met to within half
        # the largest step, and at least as closely as the quadratic guess f = sqrt(MACs ratio).
        grid = np.linspace(0.42, 1.0, 4001)
        path = slimmable.macs(net, np.repeat(grid[:, None], len(net.width_groups), 1)).astype(float)
        assert np.all(np.abs(reached - targets) <= np.diff(path).max() / 2 + 1)
        guess = np.sqrt(targets / targets[-1])
        guessed = slimmable.macs(net, np.repeat(guess[:, None], len(net.width_groups), 1)).astype(float)
        assert np.all(np.abs(reached - targets) <= np.abs(guessed - targets) + 1)
        assert np.abs(reached - targets).mean() < np.abs(guessed - targets).mean()

    def test_step_curve_keeps_the_best_accuracy_so_far(self):
        assert evaluate.step_curve([(3, 50), (1, 40), (2, 30)], right_end=4) == \
            [(1, 40), (3, 40), (3, 50), (4, 50)]
        ticks = evaluate.nice_ticks(0, 10.4)
        assert ticks[0] == 0 and ticks[-1] <= 10.4 and len(ticks) >= 4


# ---------------------------------------------------------------------------------------------
# search.py

SEARCH = dict(steps=4, search_images=50, threads=1)
RATIOS = [0.9, 0.8, 0.7]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder holding runs/sn/checkpoint.pt: a slim_resnet20 supernet (--method random)."""
    path = tmp_path_factory.mktemp("search")
    previous = os.getcwd()
    os.chdir(path)
    assert train.main(["--name", "sn", "--method", "random", "--epochs", "1", "--batch_size", "25",
                       "--threads", "1", "--curve_points", "0", *SEARCH_DATA]) == 0
    yield path
    os.chdir(previous)


@pytest.fixture(scope="module")
def searched(workdir):
    return search.run_search("sn", target_ratios=RATIOS, **SEARCH)


def same_path(result):
    """What must not change when a search is interrupted and resumed (not the timings)."""
    history = [{k: v for k, v in h.items() if k != "seconds"} for h in result["history"]]
    return result["records"], history


MBV2_DATA = ["--synthetic_train", "80", "--val_size", "40", "--synthetic_test", "20",
             "--workers", "0", "--threads", "1", "--curve_points", "0"]


@pytest.fixture(scope="module")
def mbv2_workdir(tmp_path_factory):
    """runs/mbv2/checkpoint.pt: a 1.5x MobileNetV2 supernet trained down to 2/12 (AutoSlim's
    recipe) for one 2-step epoch on 32x32 synthetic images."""
    path = tmp_path_factory.mktemp("mbv2")
    trained = run_main(train, "--name", "mbv2", "--method", "random", "--network",
                       "slim_mobilenetv2", "--width_mult", "1.5", "--lower_channel", "0.1667",
                       "--epochs", "1", "--batch_size", "20", *MBV2_DATA, cwd=path)
    assert trained.returncode == 0, trained.stderr
    return path


class TestSearch:
    """search.py: AutoSlim's greedy search."""

    def test_configs_meet_their_targets_and_shrink_as_targets_do(self, workdir, searched):
        full = slimmable.macs(models.get_model("slim_resnet20", 10), 1.0)
        records = searched["records"]
        assert searched["finished"] and len(records) == 3
        targets = [r["target"] for r in records]
        assert targets == sorted(targets, reverse=True)
        assert targets == pytest.approx([r * full / 1e6 for r in RATIOS])
        for record in records:
            assert record["cost"] == "macs"
            assert record["file"] == slimmable.target_label("macs", record["target"]) + ".json"
            assert record["macs"] <= record["target"] * 1e6
            assert os.path.exists(os.path.join("runs", "sn", "search", record["file"]))
        macs = [r["macs"] for r in records]
        assert macs == sorted(macs, reverse=True)
        # One group loses one level per step, and a configuration is recorded when first under target.
        history = searched["history"]
        assert [h["step"] for h in history] == list(range(1, searched["steps"] + 1))
        assert all(a["macs"] > b["macs"] for a, b in zip(history, history[1:]))
        for record in records:
            before = history[record["step"] - 2]["macs"] if record["step"] > 1 else full
            assert before > record["target"] * 1e6
        assert searched["total_evaluations"] == searched["evaluations"] > searched["steps"]

    def test_levels_are_deduplicated_and_stay_in_the_trained_range(self, searched):
        net = models.get_model("slim_mobilenetv2", 1000, input_size=64)
        levels = search.width_levels(net, 2 / 12, 12)
        by_name = dict(zip((g.name for g in net.width_groups), levels))
        assert by_name["stage2.out"] == [8, 16, 24]  # mmrazor 1.x tries 11 levels here, 8 of them repeats
        for group, channels in zip(net.width_groups, levels):
            assert channels == sorted(set(channels)) and channels[-1] == group.channels
            assert all(c % 8 == 0 for c in channels)
        net = models.get_model("slim_resnet20", 10)
        levels = search.width_levels(net, 0.42, 12)
        for group, channels in zip(net.width_groups, levels):
            lowest = int(slimmable.round_channels(0.42, group.channels, group.divisor))
            assert channels[0] == lowest and min(channels) >= lowest
            assert len(channels) == len(set(channels)) <= 13
        # The searched configurations only use levels of the 4-step grid, never below the minimum.
        grid = search.width_levels(net, 0.42, SEARCH["steps"])
        for record in searched["records"]:
            for group, channels in zip(net.width_groups, grid):
                assert record["channels"][group.name] in channels

    def test_an_interrupted_search_resumes_to_the_same_result(self, workdir, searched):
        os.makedirs("runs/sn_resume", exist_ok=True)
        shutil.copy("runs/sn/checkpoint.pt", "runs/sn_resume/checkpoint.pt")
        first = search.run_search("sn_resume", target_ratios=RATIOS, max_steps=2, **SEARCH)
        assert not first["finished"] and first["steps"] == 2
        second = search.run_search("sn_resume", target_ratios=RATIOS, **SEARCH)
        assert second["finished"]
        assert same_path(second) == same_path(searched)
        assert second["total_evaluations"] == searched["total_evaluations"]
        assert second["evaluations"] < searched["evaluations"]  # the first two steps were not redone

    def test_resuming_with_other_settings_is_refused(self, workdir, searched, capsys):
        argv = ["--name", "sn", "--target_ratios", *map(str, RATIOS), "--steps", "4",
                "--search_images", "40", "--threads", "1"]
        assert search.main(argv) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and error[0].startswith("error: ") and "search_images" in error[0]

    @pytest.mark.parametrize("flags,says", [
        (["--targets", "1000"], "above the full network's"), (["--targets", "0.5"], "below the smallest"),
        (["--cost", "mmcv_flops", "--targets", "1000"], "1000M mmcv_flops is above"),
        (["--target_ratios", "0.8", "1.5"], "--target_ratios: '1.5' is invalid"),
        ([], "give the targets"), (["--target_flops", "30", "20"], "--target_flops is ambiguous"),
        (["--targets", "nan"], "--targets: 'nan' is invalid"),
        (["--target_ratios", "inf"], "'inf' is invalid"),
        (["--cost", "latency", "--targets", "20"], "invalid choice"),
        (["--targets", "20", "--steps", "0"], "--steps: '0' is invalid: it must be an integer >= 1"),
        (["--targets", "20", "--eval_batch_size", "0"], "--eval_batch_size: '0' is invalid"),
        (["--targets", "20", "--device", "tpu"], "--device: 'tpu' is invalid: it must be auto, cpu, cuda"),
        (["--targets", "20", "--val_size", "-1"], "--val_size: '-1' is invalid"),
        (["--targets", "20", "--seed", "-1"], "--seed: '-1' is invalid: it must be an integer >= 0"),
        (["--targets", "20", "--val_size", "101"], "the supernet held out 100 of its training images"),
        (["--targets", "20", "--data_seed", "3"], "trained with --data_seed 0, not 3"),
        (["--targets", "20", "--synthetic_train", "300"], "--synthetic_train 250, not 300")])
    def test_bad_flags_end_in_one_line_and_status_2(self, workdir, flags, says):
        assert_one_line_error(run_main(search, "--name", "sn", *flags), says)

    def test_the_closing_command_retrains_on_the_supernets_data(self, workdir, searched):
        """The "next:" command of a finished search, run as printed, trains on the data the
        supernet trained on (its data flags that are not the defaults are in it)."""
        line = [line for line in Path("runs/sn/search/log.txt").read_text().splitlines()
                if "next: python train.py " in line][-1]
        args = train.parse_args(shlex.split(line.split("next: python train.py ")[1]))
        trained = torch.load("runs/sn/checkpoint.pt", weights_only=True)["args"]
        for key in data.data_flag_names() - {"workers", "pin_memory"}:
            assert getattr(args, key) == trained[key], (key, line)

    def test_a_run_being_trained_or_searched_is_not_searched(self, workdir, searched, capsys):
        """A search holds runs/NAME/train.lock, the lock train.py holds: another search of the run
        (here: this process holding it) is refused in one line naming the holder, touching nothing."""
        state = Path("runs/sn/search/search.state")
        before = state.read_text()
        with runs.lock(os.path.join("runs", "sn"), doing="searched"):
            assert search.main(["--name", "sn", "--target_ratios", *map(str, RATIOS), "--steps", "4",
                                "--search_images", "50", "--threads", "1"]) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and error[0].startswith("error: runs/sn is being searched by process "
                                                       f"{os.getpid()} on "), error
        assert state.read_text() == before

    def test_ctrl_c_ends_a_search_in_one_line_and_it_resumes(self, workdir, searched):
        """Ctrl-C during a search: status 130 and one line, no traceback; the saved state stays
        valid JSON and the rerun finishes the search."""
        argv = [sys.executable, os.path.join(REPO, "search.py"), "--name", "sn", "--target_ratios",
                *map(str, RATIOS), "--steps", "4", "--search_images", "50", "--threads", "1",
                "--restart"]
        status, error = interrupt_when(argv, workdir, "held-out top-1")
        assert status == 130 and len(error.strip().splitlines()) == 1, error
        assert "Traceback" not in error
        json.loads(Path(workdir, "runs", "sn", "search", "search.state").read_text())
        assert search.main(argv[2:-1]) == 0

    def test_batch_statistics_search_needs_no_training_batch(self, workdir):
        """--bn batch draws no training batch, so a training split smaller than --batch_size is
        fine (it was refused); --bn calibrate, which draws them, still says what to lower."""
        os.makedirs("runs/sn_bn", exist_ok=True)
        shutil.copy("runs/sn/checkpoint.pt", "runs/sn_bn/checkpoint.pt")
        result = search.run_search("sn_bn", target_ratios=[0.9], max_steps=1, batch_size=100_000,
                                   bn="batch", search_images=20, steps=4, threads=1)
        assert result["steps"] == 1
        with pytest.raises(search.Fail, match="training images for a calibration batch of 100000"):
            search.run_search("sn_bn", target_ratios=[0.9], max_steps=1, batch_size=100_000,
                              bn="calibrate", search_images=20, steps=4, threads=1, restart=True)

    def test_command_line_exit_status(self, workdir):
        done = subprocess.run([sys.executable, os.path.join(REPO, "search.py"), "--name", "sn",
                               "--targets", "1"], capture_output=True, text=True)
        assert done.returncode == 2
        assert done.stderr.strip().startswith("error: ") and len(done.stderr.strip().splitlines()) == 1
        assert "below the smallest reachable" in done.stderr

    def test_configs_round_trip_through_load_config_train_and_evaluate(self, workdir, searched, capsys):
        files = [os.path.join("runs", "sn", "search", r["file"]) for r in searched["records"]]
        assert sorted(glob.glob("runs/sn/search/*.json")) == sorted(files)  # evaluate.py reads *.json
        net = models.get_model("slim_resnet20", 10)
        for path, record in zip(files, searched["records"]):
            widths, saved = slimmable.load_config(path, net)
            assert slimmable.group_channels(net, widths) == record["channels"]
            assert saved["macs"] == record["macs"] and saved["step"] == record["step"]
            assert saved["heldout_top1"] == pytest.approx(record["heldout_top1"])
        assert train.main(["--name", "retrained", "--method", "fixed", "--channel_config", *files,
                           "--epochs", "1", "--batch_size", "50", "--threads", "1", "--curve_points",
                           "0", *SEARCH_DATA]) == 0
        checkpoint = torch.load("runs/retrained/checkpoint.pt", weights_only=True)
        retrained = [slimmable.group_channels(net, widths) for widths in checkpoint["fixed_configs"]]
        assert retrained == [r["channels"] for r in searched["records"]]
        # every retrained model is reported and exported, labelled with its target, and the subnets
        # end in one table (the last step of ./run.sh autoslim)
        capsys.readouterr()
        report = evaluate.evaluate_run("retrained", argv=["--name", "retrained", "--calib_batches", "1",
                                                          "--export", "subnets"])
        assert sorted(p["target"] for p in report["points"]) == \
            sorted(r["target"] for r in searched["records"])
        assert all(p["cost"] == "macs" and p["mmcv_flops"] > p["macs"] for p in report["points"])
        subnets = sorted(glob.glob("subnets/*.pt"))
        assert len(subnets) == len(files)
        assert evaluate.main(["--subnet", *subnets]) == 0
        table = capsys.readouterr().out.split("\n\n")[-1].strip().splitlines()
        assert table[0].split() == ["subnet", "target", "MACs", "params", "mmcv_flops", "top-1", "top-5"]
        assert sorted(row.split()[1] + ".json" for row in table[1:]) == \
            sorted(r["file"] for r in searched["records"])  # named as search.py named the files
        result = evaluate.evaluate_run("sn", argv=["--name", "sn", "--configs", *files,
                                                   "--calib_batches", "1", "--batch_size", "50"])
        evaluated = sorted(list(c["channels"].values()) for c in result["candidates"])
        assert evaluated == sorted(list(r["channels"].values()) for r in searched["records"])

    def test_mmcv_flops_targets_on_a_1_5x_supernet_are_met_just_below(self, mbv2_workdir, monkeypatch):
        """--cost mmcv_flops --targets: each configuration is the first of the greedy path at or
        below its target in mmcv-style FLOPs (named so in the file), and records both counts."""
        monkeypatch.chdir(mbv2_workdir)
        net = models.get_model("slim_mobilenetv2", 10, width_mult=1.5, input_size=32)
        full = slimmable.mmcv_flops(net, 1.0)
        targets = [round(0.97 * full / 1e6, 3), round(0.93 * full / 1e6, 3)]
        result = search.run_search("mbv2", targets=targets, cost="mmcv_flops", steps=4,
                                   search_images=20, eval_batch_size=20, threads=1)
        assert result["finished"] and result["full_cost"] == full
        history = result["history"]
        for record, target in zip(result["records"], targets):
            assert (record["cost"], record["target"]) == ("mmcv_flops", target)
            assert record["file"] == slimmable.target_label("mmcv_flops", target) + ".json"
            assert record["mmcv_flops"] == slimmable.mmcv_flops(net, record["widths"]) <= target * 1e6
            before = history[record["step"] - 2]["mmcv_flops"] if record["step"] > 1 else full
            assert before > target * 1e6  # the step before was still above: "just below"
            saved = json.load(open(os.path.join("runs", "mbv2", "search", record["file"])))
            assert (saved["cost"], saved["target"], saved["mmcv_flops"], saved["macs"]) == \
                ("mmcv_flops", target, record["mmcv_flops"], record["macs"])

    def test_the_official_configs_retrain_split_and_test(self, mbv2_workdir, monkeypatch, capsys):
        """train.py --method fixed --width_mult 1.5 --channel_config configs/*.json retrains the three
        published networks jointly (32x32 images: other MACs, the same channels); evaluate.py
        --export splits them and --subnet tests them, labelled with mmrazor's names."""
        monkeypatch.chdir(mbv2_workdir)
        files = sorted(glob.glob(os.path.join(REPO, "configs", "autoslim_mbv2_*.json")))
        assert train.main(["--name", "official", "--method", "fixed", "--network", "slim_mobilenetv2",
                           "--width_mult", "1.5", "--channel_config", *files, "--epochs", "1",
                           "--batch_size", "20", "--pause_after", "1", *MBV2_DATA]) == 0
        checkpoint = torch.load("runs/official/checkpoint.pt", weights_only=True)
        net = models.get_model("slim_mobilenetv2", 10, width_mult=1.5, input_size=32)
        assert [slimmable.group_channels(net, w) for w in checkpoint["fixed_configs"]] == \
            [json.load(open(f))["channels"] for f in files]
        report = evaluate.evaluate_run("official", argv=["--name", "official", "--calib_batches", "1",
                                                         "--export", "subnets", "--batch_size", "20"])
        assert sorted((p["cost"], p["target"]) for p in report["points"]) == \
            [("mmcv_flops", 220.0), ("mmcv_flops", 320.0), ("mmcv_flops", 530.0)]
        capsys.readouterr()
        subnets = sorted(glob.glob("subnets/official_*.pt"))
        assert evaluate.main(["--subnet", *subnets, "--batch_size", "20"]) == 0
        table = capsys.readouterr().out.split("\n\n")[-1].strip().splitlines()
        assert sorted(row.split()[1] for row in table[1:]) == \
            ["mmcv_flops_220M", "mmcv_flops_320M", "mmcv_flops_530M"]

    def test_resumed_scoring_equals_scoring_from_the_image(self):
        """Resuming candidates at their first changed block gives the scores of a full forward with
        slimmable.calibrate_bn, for both BN policies."""
        torch.manual_seed(0)
        for name in ("slim_resnet20", "slim_mobilenetv2"):
            net = models.get_model(name, 10, input_size=32).train()
            with torch.no_grad():
                net(torch.randn(8, 3, 32, 32))  # running statistics that are not the defaults
            calibration = [torch.randn(12, 3, 32, 32) for _ in range(2)]
            score = [(torch.randn(10, 3, 32, 32), torch.randint(0, 10, (10,))) for _ in range(2)]
            levels = search.width_levels(net, 0.42, 12)
            index = [max(0, len(g) - 2) for g in levels]
            current = search.widths_at(net, levels, index)
            candidates = [(g, search.widths_at(net, levels, index[:g] + [i - 1] + index[g + 1:]), g)
                          for g, i in enumerate(index) if i > 0]
            for bn in ("calibrate", "batch"):
                with torch.inference_mode():
                    resumed = search.CandidateScorer(net, calibration, score, bn).evaluate(current, candidates)
                    assert max(search.CandidateScorer(net, calibration, score, bn).resume_of_group) > 3
                for group, widths, _ in candidates:
                    slimmable.set_widths(net, widths)
                    if bn == "calibrate":
                        slimmable.calibrate_bn(net, calibration)
                        with torch.no_grad():
                            logits = [net.eval()(x) for x, _ in score]
                    else:
                        with slimmable.batch_statistics(net):
                            logits = [net(x) for x, _ in score]
                    loss = sum(float(torch.nn.functional.cross_entropy(z, y, reduction="sum"))
                               for z, (_, y) in zip(logits, score))
                    hits = sum(int((z.argmax(1) == y).sum()) for z, (_, y) in zip(logits, score))
                    assert resumed[group][0] == hits
                    assert resumed[group][1] == pytest.approx(loss, rel=1e-5)

    def test_best_candidate_and_file_names(self):
        assert search.best_candidate({0: (5, 1.0), 1: (6, 2.0), 2: (6, 1.5), 3: (6, 1.5)}) == 2
        assert slimmable.target_label("macs", 20) == "macs_20M"
        assert slimmable.target_label("mmcv_flops", 12.5) == "mmcv_flops_12.5M"
        assert slimmable.target_label("macs", 36.495936) == "macs_36.5M"
        assert slimmable.target_label("memory", 0.024576) == "memory_0.02458M"
        assert slimmable.target_label("memory", 0.023552) == "memory_0.02355M"

    def test_torchrun_ranks_share_the_candidates_and_agree(self, workdir, searched):
        """Two processes (gloo) score half the candidates each and find the same configurations."""
        os.makedirs("runs/sn_ranks", exist_ok=True)
        shutil.copy("runs/sn/checkpoint.pt", "runs/sn_ranks/checkpoint.pt")
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                               "--nproc_per_node=2", os.path.join(REPO, "search.py"), "--name", "sn_ranks",
                               "--target_ratios", *map(str, RATIOS), "--steps", "4", "--search_images",
                               "50", "--threads", "1"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "2 process(es)" in done.stdout
        with open("runs/sn_ranks/search/search.state") as handle:
            state = json.load(handle)
        assert state["records"] == json.loads(json.dumps(searched["records"]))

    def test_scorer_runs_from_the_image_when_blocks_do_not_chain(self):
        """A forward that reuses an early activation late cannot be resumed at a block: detected."""
        net = models.get_model("slim_resnet20", 10)
        score = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))]
        assert max(search.CandidateScorer(net, [], score, "batch").resume_of_group) > 0
        chained = net.forward

        def forward_with_a_long_skip(x):
            return chained(x) + net.conv1(x).mean()

        net.forward = forward_with_a_long_skip
        assert search.CandidateScorer(net, [], score, "batch").resume_of_group == [0] * 12

    def test_every_flag_is_explained(self, capsys):
        with pytest.raises(SystemExit) as leaving:
            search.main(["--help"])
        assert leaving.value.code == 0
        text = capsys.readouterr().out
        for flag in ("--cost", "--targets", "--target_ratios", "--steps", "--bn", "--search_images",
                     "--eval_batch_size", "--calib_batches", "--pause_after", "--restart", "--val_size"):
            assert flag in text
        assert all(action.help for action in search.build_parser()._actions)


# ----------------------------------------------------------------------------- CPU contention


class TestThreads:
    """runs.py and bench.py: threads, the thread tuner, CPU contention."""

    def test_thread_tuner_drops_a_thread_beside_a_busy_process_and_takes_it_back(self, monkeypatch):
        """runs.ThreadTuner on a simulated 2-CPU machine (the rates of bench.py contention): it
        keeps 2 threads while quiet, falls to 1 when a busy process appears, returns to 2 after."""
        current = [2]
        monkeypatch.setattr(torch, "set_num_threads", lambda n: current.__setitem__(0, n))
        rates = {"quiet": {2: 142.0, 1: 83.0}, "busy": {2: 34.0, 1: 72.0}}  # images/s
        tuner, log = runs.ThreadTuner(2, period=20, probe=4), []
        used = {"quiet": [], "busy": []}
        for phase, steps in (("quiet", 100), ("busy", 100), ("quiet", 100)):
            for _ in range(steps):
                used[phase].append(current[0])
                macs = 5e7 * (1 + 0.2 * (len(log) % 3))  # the work of a step varies with its widths
                change = tuner.record(128 / rates[phase][current[0]] * macs / 5e7, macs)
                if change:
                    log.append((phase, change))
        assert [entry[0] for entry in log] == ["busy", "quiet"]
        assert log[0][1].startswith("threads 2 -> 1") and log[1][1].startswith("threads 1 -> 2")
        assert used["quiet"][:100].count(2) == 100 - 4 * 4  # only the 4 probes ran at 1 thread
        assert used["busy"][40:].count(1) >= 60 - 3 * 4  # moved within 2 periods; then only probes
        assert tuner.threads == 2

    def test_thread_tuner_decides_early_in_a_short_run(self, monkeypatch):
        """With ``first`` (train.py: 8), a run beside a busy process drops the thread it cannot
        use after its first few steps, not after 100."""
        current = [2]
        monkeypatch.setattr(torch, "set_num_threads", lambda n: current.__setitem__(0, n))
        tuner, used = runs.ThreadTuner(2, first=8), []
        for step in range(20):
            used.append(current[0])
            tuner.record(128 / {2: 34.0, 1: 72.0}[current[0]], 5e7)
        assert tuner.threads == 1 and used[8:] == [1] * 12

    def test_default_threads_follow_the_cpus_this_process_may_use(self, monkeypatch):
        """Pinned (taskset) to 2 of 16 CPUs, a run takes 2 threads, not 16 on 2 CPUs."""
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {4, 5}, raising=False)
        monkeypatch.setattr(os, "cpu_count", lambda: 16)
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        assert runs.usable_cpus() == 2
        assert (runs.default_threads(1), runs.default_threads(2)) == (2, 1)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
        assert runs.default_threads(8) == 1

    @pytest.mark.parametrize("script", ["search.py", "evaluate.py"])
    def test_openmp_threads_sleep_by_default_but_the_user_decides(self, script, monkeypatch):
        """search.py and evaluate.py set OMP_WAIT_POLICY=PASSIVE before they import torch (OpenMP
        reads it once, at load; spinning threads stall beside one busy process, README "CPU
        contention"), and keep a value the user set. train.py spins, as OpenMP does by default, and
        its ThreadTuner drops a thread instead when other processes take the CPUs."""
        assert "OMP_WAIT_POLICY" not in Path(__file__).with_name("train.py").read_text()
        import importlib.util
        path = Path(__file__).with_name(script)
        source = path.read_text()
        assert source.index('os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")') < source.index(
            "\nimport torch")
        for given, expected in ((None, "PASSIVE"), ("ACTIVE", "ACTIVE")):
            if given is None:
                monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
            else:
                monkeypatch.setenv("OMP_WAIT_POLICY", given)
            spec = importlib.util.spec_from_file_location(f"fresh_{path.stem}", path)
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
            assert os.environ.get("OMP_WAIT_POLICY") == expected

    def test_bench_contention_runs_each_setting_in_its_own_environment(self, monkeypatch, capsys):
        """bench.py contention: a setting runs in a fresh process that sees its own OpenMP variables
        and none of the caller's, quiet and then beside a busy process on the same CPUs; the table
        marks the settings that meet the contention rule (busy >= 40% of quiet, quiet >= 95% of the
        best quiet)."""
        import bench
        monkeypatch.setenv("GOMP_SPINCOUNT", "5")
        run = bench.contention_rates(1, {"OMP_WAIT_POLICY": "PASSIVE"}, 1, steps=1, max_seconds=None,
                                     batch_size=4)
        assert run["environment"] == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": None,
                                      "OMP_NUM_THREADS": None, "MKL_NUM_THREADS": None}
        assert (run["threads"], run["interop_threads"], run["cpus"]) == (1, 1, runs.usable_cpus())
        assert len(run["quiet_seconds"]) == len(run["busy_seconds"]) == 1
        assert run["quiet_images_per_second"] > 0 and run["busy_images_per_second"] > 0
        rows = bench.contention_table([{"setting": "spins", "quiet": 100.0, "busy": 10.0},
                                       {"setting": "sleeps", "quiet": 96.0, "busy": 60.0},
                                       {"setting": "one thread", "quiet": 60.0, "busy": 50.0}])
        assert [row["meets_rule"] for row in rows] == [False, True, False]
        assert "sleeps" in capsys.readouterr().out
        labels = [setting[0] for setting in bench.contention_settings(4, spincounts=(0, 30000))]
        assert labels[0] == "1 thread" and len(set(labels)) == len(labels) == 13
        assert {threads for _, threads, _, _ in bench.contention_settings(4)} == {1, 2, 4}


# ---------------------------------------------------------------------------------------------
# The reference READMEs' commands, run as written: the Joslim README's
# three ImageNet and one CIFAR-100 training commands and its two evaluation commands, and
# AutoSlim's five steps (the mmrazor README) in this project's scripts. Changed only:
# ./distributed_train.sh N -> torchrun (2 processes, gloo), eval_checkpoints.py -> evaluate.py,
# --epochs, the ImageNet trainings' --batch_size (one step of 256 images, not 1024), the CIFAR-100
# ones (one step of 32, not 128; evaluated in batches of 256, not 1024), the data size (tiny
# generated sets, --image_size 16, --val_size, --train_size), how each process runs (--threads 1
# --workers 0), and the plain python commands run by the script's main() in the test's process.
# The heaviest tests of the suite; their names start with test_seed_, so -k "not test_seed_"
# leaves them out of a local run. CI runs them.

JOSLIM_SEED_COMMANDS = {  # verbatim from the Joslim README
    "joslim_mbv2": "./distributed_train.sh 8 --name joslim_mbv2 --dataset ImageNet --epochs 250 --warmup 5 --baselr 0.125 --tau 625 --wd 4e-5 --label_smoothing 0.1 --batch_size 1024 --lower_channel 0.42 --num_sampled_arch 2 --baseline -3 --print_freq 100 --prior_points 20 --scheduler linear_decay --slim_dataaug --scale_ratio 0.25 --datapath YOUR_LMDB_IMAGENET_PATH --network slim_mobilenetv2",  # noqa: E501
    "joslim_mbv3": "./distributed_train.sh 8 --name joslim_mbv3 --dataset ImageNet --epochs 250 --warmup 5 --baselr 0.125 --tau 625 --wd 4e-5 --label_smoothing 0.1 --batch_size 1024 --lower_channel 0.42 --num_sampled_arch 2 --baseline -3 --print_freq 100 --prior_points 20 --scheduler linear_decay --slim_dataaug --scale_ratio 0.08 --datapath YOUR_LMDB_IMAGENET_PATH --network slim_mobilenetv3_large",  # noqa: E501
    "joslim_res18": "./distributed_train.sh 8 --name joslim_res18 --dataset ImageNet --epochs 100 --warmup 5 --baselr 0.125 --tau 250 --wd 4e-5 --label_smoothing 0.1 --batch_size 1024 --lower_channel 0.42 --num_sampled_arch 2 --baseline -3 --print_freq 100 --prior_points 20 --scheduler linear_decay --slim_dataaug --scale_ratio 0.25 --datapath YOUR_LMDB_IMAGENET_PATH --network slim_resnet18",  # noqa: E501
    "joslim_res56": "./distributed_train.sh 1 --name joslim_res56 --dataset CIFAR100 --epochs 300 --warmup 5 --baselr 0.1 --tau 235 --wd 5e-4 --batch_size 128 --lower_channel 0.42 --num_sampled_arch 2 --baseline -3 --print_freq 100 --prior_points 20 --scheduler linear_decay --datapath YOUR_CIFAR100_PATH --network slim_resnet56",  # noqa: E501
}
JOSLIM_SEED_EVALUATIONS = {
    "joslim_mbv2": "python eval_checkpoints.py --name joslim_mbv2 --datapath YOUR_LMDB_IMAGENET_PATH --dataset ImageNet --network slim_mobilenetv2 --batch_size 1024 --lower_channel 0.42 --slim_dataaug --scale_ratio 0.25",  # noqa: E501
    "joslim_res56": "python eval_checkpoints.py --name joslim_res56 --datapath YOUR_CIFAR100_PATH --dataset CIFAR100 --network slim_resnet56 --batch_size 1024 --lower_channel 0.42",  # noqa: E501
}
SEED_IMAGE_SIZE = "16"  # the training and test crop; every network still ends at 1x1 (stride 32)
SEED_VAL_SIZE = "64"
SEED_TRAIN_IMAGES = 1024 + 64  # one batch of the ImageNet evaluation's 1024 after the held-out 64
SEED_SESSION = ["--threads", "1", "--workers", "0"]
SEED_IMAGENET = ["--image_size", SEED_IMAGE_SIZE, "--val_size", SEED_VAL_SIZE, *SEED_SESSION]
# The ImageNet trainings: one step of 256 images, not of the seeds' 1024 (the same code path at a
# quarter of the CPU time); their evaluations calibrate on all 1024 (--train_size 0).
SEED_BATCH = "256"
# CIFAR-100 (32x32, ResNet-56, a quarter of the seed's batches as above): one training step of 32
# images, evaluated as an unfinished run, BN calibrated on all 256 training images at once.
SEED_CIFAR_BATCH, SEED_CIFAR_EVAL_BATCH = "32", "256"
TWO_NODE_SEED = "joslim_res18"  # run by test_seed_two_torchrun_agents_as_two_nodes


def torchrun_command(nproc, script, *args, rendezvous=("--rdzv_backend=c10d",
                                                       "--rdzv_endpoint=localhost:0")):
    """``torchrun --nproc_per_node=NPROC ... SCRIPT ARGS`` as an argv list (python -m)."""
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            *rendezvous, os.path.join(REPO, script), *args]


def seed_command(command, datapath, extra=(), nproc=None, rendezvous=None):
    """A README command line as run here: the launcher replaced (torchrun, ``nproc`` or at
    most 2 processes, ``rendezvous`` flags), the data path filled in, --epochs 1, then
    ``extra`` (data size and session flags) appended."""
    words = command.split()
    if words[0] == "./distributed_train.sh":  # torch.distributed.launch --nproc_per_node=N
        argv = torchrun_command(nproc or min(int(words[1]), 2), "train.py", *words[2:],
                                **({"rendezvous": rendezvous} if rendezvous else {}))
    else:
        assert words[:2] == ["python", "eval_checkpoints.py"]
        argv = [sys.executable, os.path.join(REPO, "evaluate.py"), *words[2:]]
    argv = [datapath if word.startswith("YOUR_") else word for word in argv]
    if "--epochs" in argv:
        argv = with_flag(argv, "--epochs", "1")
    return argv + list(extra)


def imagenet_seed(command, datapath, nproc=None, rendezvous=None):
    """``seed_command`` of a Joslim ImageNet training with SEED_IMAGENET and one step of
    SEED_BATCH images."""
    argv = seed_command(command, datapath, SEED_IMAGENET, nproc, rendezvous)
    return with_flags(argv, batch_size=SEED_BATCH, train_size=SEED_BATCH)


def start(argv, cwd):
    """Start a command (the project on PYTHONPATH, one thread); ``finish`` waits for it."""
    environment = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    return subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=environment)


def finish(*processes, timeout=300):
    """The output of each process, asserting that every one succeeded."""
    outputs = []
    for process in processes:
        output = process.communicate(timeout=timeout)[0]
        assert process.returncode == 0, f"{' '.join(process.args)}\n{output}"
        outputs.append(output)
    return outputs


def make_tiny_jpegs(root, count, classes=4, seed=0):
    """``count`` small JPEGs (20-40 px a side) in ``classes`` class folders, balanced."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        folder = os.path.join(root, f"n{index % classes:08d}")
        os.makedirs(folder, exist_ok=True)
        height, width = rng.integers(20, 41, 2)
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f"{index:05d}.JPEG"), quality=75)


@pytest.fixture(scope="module")
def seed_imagenet(tmp_path_factory):
    """A tiny ImageNet: generated JPEG folders converted by ``python data.py to-lmdb`` into the
    layout --dataset ImageNet reads (DATAPATH/train.lmdb, DATAPATH/val.lmdb)."""
    if lmdb is None:
        pytest.skip("the lmdb package is not installed")
    root = tmp_path_factory.mktemp("seed_imagenet")
    make_tiny_jpegs(str(root / "jpeg" / "train"), SEED_TRAIN_IMAGES)
    make_tiny_jpegs(str(root / "jpeg" / "val"), 32, seed=1)
    os.makedirs(root / "lmdb")
    for result in run_data_clis(*[("to-lmdb", str(root / "jpeg" / split),
                                   str(root / "lmdb" / f"{split}.lmdb")) for split in ("train", "val")]):
        assert result.returncode == 0, result.stderr
    return str(root / "lmdb")


def check_pareto_txt(path):
    """The reference's results file: 3 rows (MACs ratio ascending to 1.0, top-1 %, top-5 %)."""
    table = np.loadtxt(path)
    assert table.ndim == 2 and table.shape[0] == 3 and table.shape[1] >= 2, table
    assert np.all(np.diff(table[0]) > 0) and table[0, -1] == 1.0 and table[0, 0] > 0
    assert np.all((0 <= table[1]) & (table[1] <= table[2]) & (table[2] <= 100))
    return table


AUTOSLIM_SEED_STEPS = (  # mmrazor's five AutoSlim steps for MobileNetV2 x1.5, as this project runs them
    "supernet training: tools/mmcls/train_mmcls.py autoslim_mbv2_supernet_8xb256_in1k.py",
    "search: tools/mmcls/search_mmcls.py autoslim_mbv2_search_8xb1024_in1k.py CHECKPOINT",
    "subnet retraining: train_mmcls.py autoslim_mbv2_subnet_8xb256_in1k.py channel_cfg=3 files",
    "split checkpoint: tools/model_converters/split_checkpoint.py --channel-cfgs 3 files",
    "test a subnet: tools/mmcls/test_mmcls.py SPLIT_CHECKPOINT --metrics accuracy",
)


def free_port():
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class TestSeedCommands:
    """The reference READMEs' commands, run as written on tiny generated data."""

    def test_seed_joslim_commands_train_and_evaluate(self, seed_imagenet, tmp_path, monkeypatch):
        write_cifar100(tmp_path / "cifar" / "cifar-100-python",
                       num_train=int(SEED_CIFAR_EVAL_BATCH) + int(SEED_VAL_SIZE), num_test=64)
        cifar = str(tmp_path / "cifar")
        cifar_extra = ["--val_size", SEED_VAL_SIZE, "--pause_after", "1", *SEED_SESSION]
        names = [name for name in JOSLIM_SEED_COMMANDS if name != TWO_NODE_SEED]
        trainings = [start(with_flag(seed_command(command, cifar, cifar_extra), "--batch_size",
                                     SEED_CIFAR_BATCH) if "CIFAR" in command else
                           imagenet_seed(command, seed_imagenet), tmp_path)
                     for command in map(JOSLIM_SEED_COMMANDS.get, names)]
        finish(*trainings)
        for name in names:
            log = (tmp_path / "runs" / name / "log.txt").read_text()
            checkpoint = load_run(tmp_path, name)
            if name == "joslim_res56":
                assert "over 1 process(es)" in log and checkpoint["step"] == 1
                assert checkpoint["model_options"]["input_size"] == 32
            else:
                assert "over 2 process(es)" in log and checkpoint["finished"]
                assert "all 2 ranks hold identical weights" in log
                assert checkpoint["model_options"]["input_size"] == int(SEED_IMAGE_SIZE)
                assert checkpoint["args"]["image_size"] == int(SEED_IMAGE_SIZE)
        # Flags that describe the run must agree with it, and so must a resumed run.
        monkeypatch.chdir(tmp_path)
        for argv, flag in ((["--network", "slim_resnet18"], "--network slim_mobilenetv2"),
                           (["--dataset", "CIFAR100"], "--dataset ImageNet"),
                           (["--lower_channel", "0.3"], "--lower_channel 0.42"),
                           (["--scale_ratio", "0.08"], "--scale_ratio 0.25"),
                           (["--image_size", "32"], f"--image_size {SEED_IMAGE_SIZE}")):
            assert_one_line_error(run_main(evaluate, "--name", "joslim_mbv2", *argv), flag)
        mbv2 = imagenet_seed(JOSLIM_SEED_COMMANDS["joslim_mbv2"], seed_imagenet)
        refused = run_main(train, *with_flag(mbv2[mbv2.index("--name"):], "--image_size", "32"))
        assert refused.returncode == 2 and "--image_size 16 -> 32" in refused.stderr, refused.stderr
        evaluations = [with_flag(seed_command(command, cifar, ["--threads", "1"]), "--batch_size",
                                 SEED_CIFAR_EVAL_BATCH) if "CIFAR" in command
                       else seed_command(command, seed_imagenet, ["--threads", "1", "--train_size",
                                                                  "0"])
                       for command in JOSLIM_SEED_EVALUATIONS.values()]
        outputs = [run_main(evaluate, *argv[2:], cwd=tmp_path) for argv in evaluations]
        assert all(output.returncode == 0 for output in outputs), [o.stderr for o in outputs]
        assert "(unfinished, step 1)" in outputs[1].stdout
        for name, calibrated in zip(JOSLIM_SEED_EVALUATIONS, (1024, int(SEED_CIFAR_EVAL_BATCH))):
            table = check_pareto_txt(tmp_path / "results" / f"{name}_eval_pareto.txt")
            saved = json.loads((tmp_path / "results" / f"{name}_eval_pareto.json").read_text())
            np.testing.assert_allclose(table[0], [p["macs_ratio"] for p in saved["points"]])
            np.testing.assert_allclose(table[1], [p["test"]["top1"] for p in saved["points"]])
            np.testing.assert_allclose(table[2], [p["test"]["top5"] for p in saved["points"]])
            assert saved["calib_images"] == calibrated  # one batch: all the training images
        assert saved["points"][-1]["test"]["images"] == 64

    def test_seed_autoslim_five_steps(self, seed_imagenet, tmp_path, monkeypatch):
        """The AutoSlim pipeline of the mmrazor README (AUTOSLIM_SEED_STEPS): MobileNetV2 x1.5 on
        ImageNet, each step one plain python command as there, given to the script's main() in this
        process (the same argv; the torchrun path is the other seed tests'); trainings of one batch
        of 256 (--train_size 256)."""
        monkeypatch.chdir(tmp_path)
        data_flags = ["--dataset", "ImageNet", "--datapath", seed_imagenet, "--image_size",
                      SEED_IMAGE_SIZE, "--val_size", SEED_VAL_SIZE, "--train_size", "256"]
        network = ["--network", "slim_mobilenetv2", "--width_mult", "1.5", "--batch_size", "256",
                   "--epochs", "1"]

        def python(script, *args):
            done = run_main({"train.py": train, "search.py": search, "evaluate.py": evaluate}[script],
                            *args)
            assert done.returncode == 0, f"{script} {' '.join(args)}\n{done.stdout}{done.stderr}"
            return done.stdout

        python("train.py", "--name", "autoslim_mbv2", "--method", "random", *network, *data_flags,
               *SEED_SESSION)
        # mmrazor's three targets, 530M, 320M and 220M of about 700M, as ratios; the coarsest grid
        # (--steps 1: each group full or smallest) and 16 held-out images keep the greedy search
        # to a few hundred candidates
        python("search.py", "--name", "autoslim_mbv2", "--target_ratios", "0.75", "0.5", "0.3",
               "--steps", "1", "--search_images", "16", "--threads", "1")
        # whatever search.py names its configs (the FLOPs target in the name), they are its *.json
        configs = sorted(glob.glob(str(tmp_path / "runs" / "autoslim_mbv2" / "search" / "*.json")))
        assert len(configs) == 3, configs
        python("train.py", "--name", "autoslim_mbv2_subnet", "--method", "fixed", "--channel_config",
               *configs, *network, *data_flags, *SEED_SESSION)
        python("evaluate.py", "--name", "autoslim_mbv2_subnet", "--export", "subnets", "--threads", "1")
        subnets = sorted(glob.glob(str(tmp_path / "subnets" / "*.pt")))
        assert len(subnets) == 3, subnets
        output = python("evaluate.py", "--subnet", *subnets, "--threads", "1")
        table = output[output.index("\nsubnet"):].strip().splitlines()
        assert len(table) == 4 and all(os.path.basename(path) in output for path in subnets)
        searched_macs = sorted(json.loads(Path(path).read_text())["macs"] for path in configs)
        assert [torch.load(path, weights_only=True)["macs"] for path in subnets] == searched_macs

    def test_seed_two_torchrun_agents_as_two_nodes(self, seed_imagenet, tmp_path):
        """Two machines, as torchrun sees them: one agent per node (--nnodes=2, one process each),
        meeting at a c10d rendezvous, running the README's ResNet-18 command; each node in its own
        folder (no shared file system)."""
        rendezvous = ["--nnodes=2", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{free_port()}",
                      "--rdzv_id=seeds_two_nodes"]
        nodes = []
        for node in ("node0", "node1"):
            os.makedirs(tmp_path / node)
            nodes.append(start(imagenet_seed(JOSLIM_SEED_COMMANDS[TWO_NODE_SEED], seed_imagenet,
                                             nproc=1, rendezvous=rendezvous), tmp_path / node))
        outputs = finish(*nodes)
        logs = [tmp_path / node / "runs" / TWO_NODE_SEED / "log.txt" for node in ("node0", "node1")]
        assert sum(log.exists() for log in logs) == 1  # rank 0's node alone writes the run
        log = next(log for log in logs if log.exists()).read_text()
        assert f"batch {SEED_BATCH} over 2 process(es)" in log, outputs
        assert "all 2 ranks hold identical weights and trained the same configurations" in log


class TestReadme:
    """README.md: the "Your own network" example runs as written (on tiny data)."""

    def test_your_own_network_trains_with_joslim_and_evaluates(self, tmp_path, monkeypatch):
        text = Path(REPO, "README.md").read_text().split("### Declaring the groups yourself")[1]
        code = text.split("```python")[1].split("```")[0]
        assert 'flags = ["--epochs", "2"]' in code
        code = code.replace('flags = ["--epochs", "2"]', f"flags = {TINY_RUN[2:]!r}")
        code = code.replace('evaluate.main(["--name", "tiny"])',
                            'evaluate.main(["--name", "tiny", "--workers", "0", "--threads", "1"])')
        monkeypatch.chdir(tmp_path)
        saved = dict(models.NETWORKS)
        try:
            exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
        finally:
            models.NETWORKS.clear()
            models.NETWORKS.update(saved)
        result = json.loads((tmp_path / "results" / "tiny_eval_pareto.json").read_text())
        assert result["network"] == "tiny_net" and result["method"] == "joslim"
        assert len(result["points"]) >= 2 and math.isfinite(result["area"])


class TestGPUPath:
    """The path a CUDA machine takes, checked on the CPU: data.DeviceBatches (train.py
    --data_on_device) and ``bench.py gpu --device cpu --tiny``; the CUDA test runs where CUDA is."""

    @staticmethod
    def reference_batches(dataset, batch_size, seed, epoch, rank=0, world_size=1):
        """DeviceBatches' documented draws applied image by image, as InMemoryImages does."""
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        count = len(dataset)
        total = math.ceil(count / world_size) * world_size
        order = (torch.randperm(count, generator=generator).tolist() * world_size)[:total]
        tops, lefts = torch.randint(0, 2 * dataset.padding + 1, (2, total), generator=generator)
        flips = torch.rand(total, generator=generator) < 0.5
        positions = list(range(rank, total, world_size))
        batches = []
        for start in range(0, len(positions) - batch_size + 1, batch_size):
            images, labels = [], []
            for position in positions[start:start + batch_size]:
                image, size, pad = dataset.images[order[position]], dataset.images.shape[-1], \
                    dataset.padding
                top, left = int(tops[position]), int(lefts[position])
                image = nn.functional.pad(image, (pad, pad, pad, pad))[:, top:top + size,
                                                                      left:left + size]
                if dataset.flip and flips[position]:
                    image = image.flip(-1)
                images.append((image.float() - dataset.mean_255) / dataset.std_255)
                labels.append(dataset.labels[order[position]])
            batches.append((torch.stack(images), torch.stack(labels)))
        return batches

    @staticmethod
    def tiny_sets():
        """An RGB set (padding 4, flips) and a grey MNIST-like one (padding 2, no flips)."""
        generator = torch.Generator().manual_seed(0)
        rgb = torch.randint(0, 256, (45, 3, 8, 8), dtype=torch.uint8, generator=generator)
        grey = torch.randint(0, 256, (30, 1, 6, 6), dtype=torch.uint8, generator=generator)
        return [data.InMemoryImages(rgb, torch.arange(45) % 10, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3),
                                    True),
                data.InMemoryImages(grey, torch.arange(30) % 10, (0.3,), (0.35,), True, 2, False)]

    @pytest.mark.parametrize("rank,world_size", [(0, 1), (2, 4)])
    def test_device_batches_equal_a_per_image_reference(self, rank, world_size):
        """Same (seed, epoch): the batched pipeline gives the reference's batches exactly, as
        many as a DataLoader over a DistributedSampler with drop_last; a resume skips exactly;
        another epoch draws another order."""
        for dataset in self.tiny_sets():
            pipeline = data.DeviceBatches(dataset, 4, torch.device("cpu"), rank, world_size)
            sampler = torch.utils.data.DistributedSampler(dataset, world_size, rank)
            assert len(pipeline) == len(torch.utils.data.DataLoader(
                dataset, 4, sampler=sampler, drop_last=True))
            drawn = list(pipeline.batches(seed=3, epoch=1))
            expected = self.reference_batches(dataset, 4, 3, 1, rank, world_size)
            assert len(drawn) == len(expected) == len(pipeline)
            for (images, labels), (want_images, want_labels) in zip(drawn, expected):
                assert images.dtype == torch.float32 and torch.equal(images, want_images)
                assert torch.equal(labels, want_labels)
            resumed = list(pipeline.batches(seed=3, epoch=1, skip=2))
            assert len(resumed) == len(drawn) - 2
            assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
                       for a, b in zip(resumed, drawn[2:]))
            other = next(pipeline.batches(seed=3, epoch=2))
            assert not torch.equal(other[0], drawn[0][0])

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    def test_device_batches_on_cuda_equal_the_cpu_ones(self):
        for dataset in self.tiny_sets():
            on_cpu = data.DeviceBatches(dataset, 4, torch.device("cpu"))
            on_gpu = data.DeviceBatches(dataset, 4, torch.device("cuda"))
            for (images, labels), (gpu_images, gpu_labels) in zip(
                    on_cpu.batches(5, 0), on_gpu.batches(5, 0)):
                assert gpu_images.is_cuda and torch.equal(gpu_images.cpu(), images)
                assert torch.equal(gpu_labels.cpu(), labels)

    def test_resume_with_data_on_device_is_exact(self, tmp_path, monkeypatch):
        """--data_on_device on (here on the CPU): paused inside the first epoch, resumed across
        the epoch boundary, the run ends with the uninterrupted run's weights."""
        monkeypatch.chdir(tmp_path)
        flags = with_flags(TINY_RUN, method="slim", synthetic_train=64) + [
            "--data_on_device", "on", "--device", "cpu"]  # 2 epochs of 4 steps
        assert train.main(["--name", "whole"] + flags) == 0
        assert train.main(["--name", "parts", "--pause_after", "3"] + flags) == 0
        assert train.main(["--name", "parts", "--pause_after", "3"] + flags) == 0
        assert train.main(["--name", "parts"] + flags) == 0
        whole = load_run(tmp_path, "whole")
        assert whole["finished"] and whole["args"]["data_on_device"] == "on"
        assert_same_weights(whole, load_run(tmp_path, "parts"))

    def test_data_on_device_refuses_a_set_read_from_disk(self, imagenet_lmdb, tmp_path):
        """--data_on_device on with ImageNet (read from LMDB, not held in memory): one line."""
        shutil.copytree(imagenet_lmdb[0], tmp_path / "db")
        result = run_main(train, "--name", "disk", "--dataset", "ImageNet", "--datapath",
                          str(tmp_path / "db"), "--val_size", "3", "--image_size", "20",
                          "--workers", "0", "--batch_size", "4", "--epochs", "1", "--threads",
                          "1", "--device", "cpu", "--data_on_device", "on", cwd=tmp_path)
        assert_one_line_error(result, "--data_on_device on: ", "read from disk")

    def test_bench_gpu_tiny_runs_every_part_on_the_cpu(self, tmp_path):
        """``bench.py gpu --device cpu --tiny``: every part ends "ok" (compile: skipped), the
        JSON holds them all, and the closing table names each."""
        import bench
        out = tmp_path / "gpu.json"
        completed = run_main(bench, "gpu", "--device", "cpu", "--tiny", "--threads", "1",
                             "--out", str(out), cwd=tmp_path)
        assert completed.returncode == 0, completed.stderr[-2000:]
        report = json.loads(out.read_text())
        assert report["device"] == "cpu" and report["tiny"]
        assert list(report["parts"]) == list(bench.GPU_PARTS)
        failed = {part: r.get("error") for part, r in report["parts"].items() if r["status"] != "ok"}
        assert not failed
        assert report["parts"]["compile"]["skipped"]
        assert len(report["parts"]["speed"]["overhead"]) == 3 * 2  # --tiny: two networks
        assert set(report["parts"]["real_data"]["runs"]) == set(bench.GPU_RECIPES)
        table = completed.stdout.split("part            status")[1]
        assert all(part in table for part in bench.GPU_PARTS)
        assert not (tmp_path / "runs").exists()  # the work stays in a temporary folder
# ---------------------------------------------------------------------------------------------
# --network: torchvision networks and the user's own, made slimmable at start-up


USER_NETWORK = '''
import torch.nn as nn


class Pair(nn.Module):  # (logits, auxiliary logits)
    def __init__(self, num_classes):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, num_classes)
        self.conv2, self.aux = nn.Conv2d(8, 8, 1), nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.conv2(self.conv(x)).mean((2, 3))
        return self.fc(x), self.aux(x)


class HeadFirst(nn.Module):  # the conv declared first runs last
    def __init__(self, num_classes):
        super().__init__()
        self.head, self.stem = nn.Conv2d(8, 16, 1), nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(self.head(self.stem(x).relu()).mean((2, 3)))


def flat(num_classes):  # its one linear layer reads the image and makes the logits
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, num_classes))


def not_a_module(num_classes):
    return num_classes


def broken(num_classes):
    raise RuntimeError("the user's own bug")
'''


class TestNetworkFlag:
    """train.py/search.py/evaluate.py --network: a torchvision name or FILE.py:FUNCTION."""

    def test_the_readme_network_is_trained_searched_and_evaluated(self, tmp_path, monkeypatch):
        """README's "Any network" example as written (tiny data), then search.py and
        evaluate.py --export on the run: the trace found the residual stream and the branch."""
        text = Path(REPO, "README.md").read_text().split("### Any network")[1]
        (tmp_path / "mynet.py").write_text(text.split("```python")[1].split("```")[0])
        commands = text.split("```bash")[1].split("```")[0].strip().splitlines()
        assert [shlex.split(c)[:2] for c in commands] == [["python", "train.py"],
                                                           ["python", "evaluate.py"]]
        readme = dict(zip(*[iter(shlex.split(commands[0])[2:])] * 2))
        monkeypatch.chdir(tmp_path)
        assert train.main(with_flags(TINY_RUN, **{k[2:]: v for k, v in readme.items()
                                                  if k != "--epochs"}, epochs=1)) == 0
        checkpoint = load_run(tmp_path, "mine")
        assert checkpoint["network"] == f"{tmp_path / 'mynet.py'}:build"  # absolute: found anywhere
        net = models.get_model(checkpoint["network"], 10, **checkpoint["model_options"])
        assert [g.channels for g in net.width_groups] == [32, 16]
        assert search.main(["--name", "mine", "--target_ratios", "0.5", "--search_images", "64",
                            "--steps", "4", "--threads", "1"]) == 0
        assert evaluate.main([*shlex.split(commands[1])[2:], "--export", "subnets",
                              "--threads", "1", *TINY_DATA]) == 0
        assert glob.glob(str(tmp_path / "subnets" / "*.pt"))

    def test_network_names_that_cannot_be_built_end_in_one_line(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        (tmp_path / "mine.py").write_text(USER_NETWORK)
        cases = [("resnet1000", "unknown network 'resnet1000'"), ("gone.py:tiny", "no file gone.py"),
                 ("mine.py:missing", "has no function missing"),
                 ("mine.py:not_a_module", "returned a int"), ("mine.py:broken", "the user's own bug"),
                 ("mine.py:Pair", "returns tuple", "one tensor of logits, (N, 10)"),
                 ("mine.py:flat", "no width group to slim")]
        for name, *fragments in cases:
            assert_one_line_error(run_main(train, "--name", "x", "--network", name, *TINY_RUN[2:]),
                                  *fragments)
            assert not (tmp_path / "runs" / "x" / "checkpoint.pt").exists()

    def test_grey_images_enter_the_conv_the_image_runs_through_first(self, tmp_path):
        (tmp_path / "mine.py").write_text(USER_NETWORK)
        net = models.get_model(f"{tmp_path / 'mine.py'}:HeadFirst", 10, input_size=28,
                               in_channels=1)
        assert net.stem.in_channels == 1 and net.head.in_channels == 8  # not the one declared first
        assert net.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 10)

    def test_a_file_network_with_declared_groups_is_used_as_it_is(self, tmp_path):
        (tmp_path / "declared.py").write_text(
            "import torch.nn as nn\n"
            "from slimmable import SlimBatchNorm2d, SlimConv2d, SlimLinear, add_group\n\n\n"
            "class Declared(nn.Module):\n"
            "    def __init__(self, num_classes):\n"
            "        super().__init__()\n"
            "        self.width_groups = []\n"
            "        group = add_group(self.width_groups, 'conv', 8)\n"
            "        self.conv = SlimConv2d(3, 8, 3, 1, 1, out_slot=group)\n"
            "        self.bn = SlimBatchNorm2d(8, group)\n"
            "        self.fc = SlimLinear(8, num_classes, in_slot=group)\n\n"
            "    def forward(self, x):\n"
            "        return self.fc(self.bn(self.conv(x)).mean((2, 3)))\n")
        net = models.get_model(f"{tmp_path / 'declared.py'}:Declared", 10, input_size=16)
        assert [g.name for g in net.width_groups] == ["conv"] and net.frozen == []
        assert slimmable.macs(net, 0.5) == (8 * 27 * 16 * 16 + 8 * 10) // 2

    def test_a_torchvision_network_takes_grey_images(self):
        torch.manual_seed(0)
        net = models.get_model("resnet18", 10, input_size=28, in_channels=1)
        assert net.conv1.in_channels == 1 and net.fc.out_features == 10
        assert net.network_name == "resnet18" and net.frozen == []
        slimmable.set_widths(net, 0.5)
        assert net.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 10)
        assert slimmable.macs(net, 0.5) < slimmable.macs(net, 1.0)


# ---------------------------------------------------------------------------------------------
# convert.make_slimmable: width groups from a network's graph

import bench  # noqa: E402  (its check_conversion is the check of the benchmark)
import convert  # noqa: E402


def _tiny_torchvision(family):
    """A small member of a torchvision family (few blocks, narrow), random weights."""
    import torchvision.models as tv
    from torchvision.models import convnext, efficientnet, regnet, resnet
    if family == "resnet":
        return resnet.ResNet(resnet.BasicBlock, [1, 1, 1, 1], num_classes=10)
    if family == "mobilenet_v3":
        return tv.mobilenet_v3_small(num_classes=10)
    if family == "efficientnet":
        setting = [efficientnet.MBConvConfig(1, 3, 1, 16, 8, 1),
                   efficientnet.MBConvConfig(4, 3, 2, 8, 16, 2)]
        return efficientnet.EfficientNet(setting, dropout=0.1, num_classes=10, last_channel=32)
    if family == "regnet":
        params = regnet.BlockParams.from_init_params(depth=3, w_0=16, w_a=8.0, w_m=2.0,
                                                     group_width=8, se_ratio=0.25)
        return regnet.RegNet(params, num_classes=10, stem_width=16)
    if family == "densenet":
        return tv.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, num_classes=10)
    if family == "squeezenet":
        return tv.squeezenet1_1(num_classes=10)
    if family == "vgg":
        net = tv.VGG(tv.vgg.make_layers([8, "M", 16, "M"]), num_classes=10, init_weights=False)
        net.classifier = nn.Sequential(nn.Linear(16 * 49, 32), nn.ReLU(), nn.Dropout(),
                                       nn.Linear(32, 10))
        return net
    if family == "shufflenet_v2":
        return tv.ShuffleNetV2([1, 1, 1], [8, 16, 32, 64, 64], num_classes=10)
    if family == "convnext":
        return convnext.ConvNeXt([convnext.CNBlockConfig(16, 32, 1), convnext.CNBlockConfig(32, None, 1)],
                                 stochastic_depth_prob=0.1, num_classes=10)
    raise KeyError(family)


class _CatTwice(nn.Module):  # the same tensor concatenated with itself
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x = self.conv1(x)
        return self.conv2(torch.cat([x, x], 1)).mean((2, 3))


class _TwoBranches(nn.Module):  # two sources concatenated, never added: two groups
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
        self.c, self.d = nn.Conv2d(3, 8, 1), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        a, b = self.a(x), self.b(x) + self.c(x)
        return self.d(torch.cat([a, b], 1)).mean((2, 3))


class _SharedLayer(nn.Module):  # one conv called on two tensors: its inputs share a width
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 3, padding=1)
        self.shared, self.head = nn.Conv2d(8, 6, 1), nn.Linear(12, 4)

    def forward(self, x):
        both = torch.cat([self.shared(self.a(x)), self.shared(self.b(x))], 1)
        return self.head(both.mean((2, 3)))


class _SpatialGate(nn.Module):  # a conv of one output channel (not a depthwise conv)
    def __init__(self):
        super().__init__()
        self.conv, self.gate = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 1, 1)
        self.single, self.head = nn.Conv2d(1, 1, 3, padding=1), nn.Linear(8, 4)

    def forward(self, x):
        x = self.conv(x)
        x = x * torch.sigmoid(self.single(self.gate(x)))
        return self.head(x.mean((2, 3)))


class _FrozenNorms(nn.Module):  # a BN that never trains, then torchvision's FrozenBatchNorm2d
    def __init__(self):
        super().__init__()
        from torchvision.ops import FrozenBatchNorm2d
        self.conv1, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.fixed_bn = nn.Conv2d(8, 8, 3, padding=1), FrozenBatchNorm2d(8)
        self.head = nn.Linear(8, 4)
        self.bn.requires_grad_(False)

    def train(self, mode=True):
        super().train(mode)
        self.bn.eval()
        return self

    def forward(self, x):
        x = self.conv2(self.bn(self.conv1(x)))
        return self.head(self.fixed_bn(x).mean((2, 3)))


class _StoredShape(nn.Module):  # reshapes to a channel count stored at construction
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 1), 6
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        x = self.conv2(torch.relu(self.conv1(x)))
        return self.head(x.view(x.size(0), self.c, -1).mean(-1))


class _DenseLayer(nn.Module):  # keeps its input for the concatenation at its end (DenseNet's)
    def __init__(self, channels, growth):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, growth, 1)
        self.conv2 = nn.Conv2d(growth, growth, 3, padding=1)

    def forward(self, x):
        return torch.cat([x, self.conv2(self.conv1(x))], 1)


class _ConcatenatedInput(nn.Module):  # layer2's input is layer1's concatenation
    def __init__(self):
        super().__init__()
        self.stem, self.head = nn.Conv2d(3, 4, 1), nn.Linear(8, 10)
        self.layer1, self.layer2 = _DenseLayer(4, 2), _DenseLayer(6, 2)

    def forward(self, x):
        return self.head(self.layer2(self.layer1(self.stem(x))).mean((2, 3)))


class _PReLUs(nn.Module):  # one PReLU weight for all channels, then one per channel
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 1)
        self.shared, self.per_channel, self.head = nn.PReLU(), nn.PReLU(6), nn.Linear(6, 4)

    def forward(self, x):
        x = self.per_channel(self.conv2(self.shared(self.conv1(x))))
        return self.head(x.mean((2, 3)))


class _Inception(nn.Module):  # GoogLeNet's block: each branch's output waits for the torch.cat
    def __init__(self, channels):
        super().__init__()
        self.branch1 = nn.Conv2d(channels, 4, 1)
        self.branch2 = nn.Sequential(nn.Conv2d(channels, 2, 1), nn.ReLU(inplace=True),
                                     nn.Conv2d(2, 6, 3, padding=1))
        self.branch3 = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(channels, 2, 1))

    def forward(self, x):  # each output made by a function, as BasicConv2d's F.relu
        branches = [torch.relu(self.branch1(x)), torch.relu(self.branch2(x)),
                    torch.relu(self.branch3(x))]
        return torch.cat(branches, 1)


class _GoogLeNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.block = nn.Conv2d(3, 8, 3, padding=1), _Inception(8)
        self.head = nn.Linear(12, 10)

    def forward(self, x):
        return self.head(self.block(self.stem(x)).mean((2, 3)))


class _Residual(nn.Module):  # keeps its input for the add
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(torch.relu(self.conv1(x)))


class _BlockTwice(nn.Module):  # one block called on two inputs, at 8x8 then at 4x4
    def __init__(self):
        super().__init__()
        self.stem, self.block = nn.Conv2d(3, 8, 3, padding=1), _Residual(8)
        self.pool, self.head = nn.MaxPool2d(2), nn.Linear(8, 10)

    def forward(self, x):
        x = self.block(self.pool(self.block(self.stem(x))))
        return self.head(x.mean((2, 3)))


class _ScaledDropout(nn.Module):  # a layer scale, and dropout and a branch by self.training
    def __init__(self, eval_scale=None):
        super().__init__()
        self.stem, self.conv = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.gamma, self.head = nn.Parameter(torch.full((1, 8, 1, 1), 0.1)), nn.Linear(8, 4)
        self.eval_scale = eval_scale  # a parameter scaling the channels in eval mode only

    def forward(self, x):
        x = self.stem(x).relu()
        x = x + self.gamma * self.conv(x)
        if self.training:
            x = x + 1
        elif self.eval_scale is not None:
            x = x * self.eval_scale
        return self.head(nn.functional.dropout(x.mean((2, 3)), 0.5, self.training))


class _SharedScale(nn.Module):  # one per-channel parameter scales two convs' outputs
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)
        self.gamma = nn.Parameter(torch.rand(1, 8, 1, 1))
        self.fa, self.fb = nn.Linear(8, 4), nn.Linear(8, 4)

    def forward(self, x):
        return (self.fa((self.gamma * self.a(x)).mean((2, 3)))
                + self.fb((self.gamma * self.b(x)).mean((2, 3))))


class _LayerNorm2d(nn.LayerNorm):  # a user's channels-first LayerNorm with its own __init__
    def __init__(self, channels):
        super().__init__(channels, eps=1e-6)
        self.note = "mine"

    def forward(self, x):
        return nn.functional.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight,
                                        self.bias, self.eps).permute(0, 3, 1, 2)


class _PlainNorms(nn.Module):  # norms without affine parameters, and a user's LayerNorm
    def __init__(self):
        super().__init__()
        self.conv1, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8, affine=False)
        self.conv2, self.ln2d = nn.Conv2d(8, 6, 1), _LayerNorm2d(6)
        self.ln, self.head = nn.LayerNorm(6, elementwise_affine=False), nn.Linear(6, 4)

    def forward(self, x):
        x = self.ln2d(self.conv2(self.bn(self.conv1(x)).relu()))
        return self.head(self.ln(x.mean((2, 3))))


class _Chunked(nn.Module):  # the halves of a chunk multiplied: the stem freezes
    def __init__(self):
        super().__init__()
        self.stem, self.conv, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 6, 1), nn.Linear(6, 4)

    def forward(self, x):
        a, b = torch.chunk(self.stem(x), 2, dim=1)
        return self.head(self.conv(a * b).mean((2, 3)))


def graph_memory(static, size, in_channels=3):
    """Activation memory (elements) of one batch-1 forward of a plain model, read off its fx
    graph run keeping every value (no address reused): at each conv, linear and pooling call,
    the elements of the distinct storages among its inputs, its output and the values made
    before it and used after it. Returns the per-layer list, in execution order."""
    import torch.fx as fx
    traced = fx.symbolic_trace(static.eval())
    interpreter = fx.Interpreter(traced, garbage_collect_values=False)
    with torch.no_grad():
        interpreter.run(torch.randn(1, in_channels, size, size))
    nodes, per_layer = list(traced.graph.nodes), []
    for i, node in enumerate(nodes):
        if node.op != "call_module" or \
                not isinstance(traced.get_submodule(node.target), slimmable.MEMORY_LAYERS):
            continue
        kept = [n for n in nodes[:i] if n.op != "get_attr" and any(nodes.index(u) > i
                                                                    for u in n.users)]
        tensors = [interpreter.env[n] for n in node.all_input_nodes + [node] + kept]
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() // t.element_size()
                    for t in tensors if torch.is_tensor(t)}
        per_layer.append(sum(storages.values()))
    return per_layer


class TestConvert:
    """convert.make_slimmable: torchvision families and the failure modes users report."""

    @pytest.mark.parametrize("family", ["resnet", "mobilenet_v3", "efficientnet", "regnet",
                                        "densenet", "squeezenet", "vgg", "shufflenet_v2",
                                        "convnext"])
    def test_torchvision_family_converts_exactly(self, family):
        torch.manual_seed(0)
        model = _tiny_torchvision(family)
        original = copy.deepcopy(model).state_dict()
        net, record = bench.check_conversion(model, torch.randn(2, 3, 32, 32), settings=2)
        assert record["full_width_equal"] and record["export_error"] < 1e-5
        assert record["macs_equal"] and record["params_equal"] and record["groups"] > 0
        # ShuffleNetV2's shuffled groups freeze; its branches' inner widths stay slimmable
        assert (record["frozen"] > 0) == (family == "shufflenet_v2")
        net.load_state_dict(original, strict=True)  # torchvision's names and shapes

    @pytest.mark.parametrize("network, frozen", [(_CatTwice, 0), (_TwoBranches, 0),
                                                 (_SpatialGate, 0), (_SharedLayer, 0), (_FrozenNorms, 1),
                                                 (_StoredShape, 1), (_PReLUs, 1), (_Chunked, 1),
                                                 (_SharedScale, 0), (_PlainNorms, 0)])
    def test_reported_failure_modes_exact_or_frozen_with_one_line(self, network, frozen):
        torch.manual_seed(0)
        lines = []
        net, record = bench.check_conversion(network(), torch.randn(2, 3, 8, 8), settings=2,
                                             log=lines.append)
        assert record["full_width_equal"] and record["export_error"] < 1e-5
        assert record["macs_equal"] and record["params_equal"]
        assert len(lines) == record["frozen"] == frozen and net.frozen == lines
        assert all(" at node " in line for line in lines)
        names = {g.name for g in net.width_groups}
        if network is _TwoBranches:  # b and c are added: one group; a is another
            assert names == {"a", "b"}
        if network is _SharedLayer:  # a and b feed one layer: one group; each call's output
            assert names == {"a", "shared"}  # is shared's, also one group
            assert net.shared.in_slot.group == net.a.out_slot.group == net.b.out_slot.group
        if network is _SpatialGate:  # the 1-channel convs have nothing to slim
            assert names == {"conv"} and net.single.out_slot is None
        if network is _StoredShape:
            assert names == {"conv1"} and "view" in lines[0]
        if network is _PReLUs:  # a shared weight passes the channels on; a per-channel one freezes
            assert names == {"conv1"} and "PReLU" in lines[0] and "conv2" in lines[0]
        if network is _Chunked:  # the function's name, not its repr
            assert lines[0].endswith("at node chunk: chunk along the channels")
        if network is _SharedScale:  # gamma's channel i scales both: one group, as an add ties
            assert names == {"a"} and net.channel_parameters["gamma"][0].group == 0
        if network is _PlainNorms:  # exported as they were: no affine parameters, the user's class
            static = slimmable.export(net, 0.5)
            assert not static.bn.affine and static.bn.track_running_stats and static.bn.weight is None
            assert type(static.ln2d) is _LayerNorm2d and static.ln2d.note == "mine"
            assert static.ln2d.normalized_shape == (3,) and static.ln2d.eps == 1e-6
            assert static.ln.weight is None and static.ln.normalized_shape == (3,)

    def test_a_traced_forward_follows_the_models_mode(self):
        """A layer scale makes the converted forward a traced graph: in eval mode no dropout
        and the eval branch, as the original; in training mode, dropout and the training branch.
        Scaling channels by other parameters in eval mode than in training: refused."""
        torch.manual_seed(0)
        model, x = _ScaledDropout(), torch.randn(2, 3, 8, 8)
        original = copy.deepcopy(model).eval()
        net = convert.make_slimmable(model, torch.randn(1, 3, 8, 8)).eval()
        assert "gamma" in net.channel_parameters
        with torch.no_grad():
            assert torch.equal(net(x), original(x)) and torch.equal(net(x), net(x))
            net.train()
            original.train()
            torch.manual_seed(1)
            trained = net(x)
            torch.manual_seed(1)
            assert torch.equal(trained, original(x)) and not torch.equal(net(x), net(x))
        scaled = _ScaledDropout(eval_scale=nn.Parameter(torch.ones(1, 8, 1, 1)))
        with pytest.raises(ValueError, match="differently in training and eval mode") as error:
            convert.make_slimmable(scaled, torch.randn(1, 3, 8, 8))
        assert "\n" not in str(error.value) and not isinstance(scaled.stem, slimmable.SlimConv2d)

    def test_a_network_random_in_eval_mode_is_refused_by_get_model(self, tmp_path):
        """get_model checks a conversion on a random image: on zeros, a network without biases
        maps the image to zeros whatever dropout it applies."""
        (tmp_path / "noisy.py").write_text(
            "import torch.nn as nn\n\n\n"
            "class Noisy(nn.Module):\n"
            "    def __init__(self, num_classes):\n"
            "        super().__init__()\n"
            "        self.conv1 = nn.Conv2d(3, 8, 3, bias=False)\n"
            "        self.conv2 = nn.Conv2d(8, 8, 1, bias=False)\n"
            "        self.fc = nn.Linear(8, num_classes, bias=False)\n\n"
            "    def forward(self, x):  # dropout whatever the mode\n"
            "        x = nn.functional.dropout(self.conv2(self.conv1(x)), 0.5)\n"
            "        return self.fc(x.mean((2, 3)))\n")
        with pytest.raises(ValueError, match="changes between two runs on the same input"):
            models.get_model(f"{tmp_path / 'noisy.py'}:Noisy", 10, input_size=16)

    def test_memory_refuses_an_input_size_it_was_not_converted_at(self):
        net = convert.make_slimmable(_BlockTwice(), torch.randn(1, 3, 8, 8))
        at_8, macs_at_8 = slimmable.memory(net, 0.5), slimmable.macs(net, 0.5)
        net.input_size = 16  # macs follow; the kept tensors were listed at 8x8
        assert slimmable.macs(net, 0.5) > macs_at_8
        with pytest.raises(ValueError, match="converted at, 8: convert it again at 16") as error:
            slimmable.memory(net, 0.5)
        assert "\n" not in str(error.value)
        net.input_size = 8
        assert slimmable.memory(net, 0.5) == at_8

    def test_memory_counts_a_block_input_that_is_a_concatenation(self):
        net = convert.make_slimmable(_ConcatenatedInput(), torch.randn(1, 3, 8, 8))
        # Elements alive per layer, 8x8 = 64 positions: stem 3*64 in + 4*64 out; layer1.conv1
        # 4*64 + 2*64; layer1.conv2 2*64 + 2*64 + its block's input 4*64; layer2.conv1 6*64 +
        # 2*64; layer2.conv2 2*64 + 2*64 + its block's input, the concatenation, 6*64 (the
        # peak); head 8 + 10.
        assert slimmable.memory_by_layer(net)[0].tolist() == [448, 384, 512, 512, 640, 18]
        assert slimmable.memory(net) == 640
        (kept, slot, dim), = net.layer2.conv2.kept_by_call[0]  # as wide as the concatenation
        assert kept.shape == (1, 6, 8, 8) and isinstance(slot, slimmable.ChannelConcat) and dim == 1
        # the stem at 2 channels: layer2's input is 2 + 2 channels, layer2.conv2 sees
        # 64 + 64 + 4*64 (the peak)
        half_stem = [0.5] + [1.0] * (len(net.width_groups) - 1)
        assert slimmable.group_channels(net, half_stem)["stem"] == 2
        assert slimmable.memory_by_layer(net, half_stem)[0].tolist() == [320, 256, 384, 384,
                                                                            512, 16]
        static = slimmable.export(net, half_stem)  # counted as it is, its widths fixed
        assert slimmable.memory_by_layer(static)[0].tolist() == [320, 256, 384, 384, 512, 16]

    @pytest.mark.parametrize("network", ["googlenet_like", "densenet", "block_twice", "convnext"])
    def test_memory_equals_a_liveness_count_of_the_exported_model(self, network):
        """Every tensor waiting for later counts, however it was made (a function's output, a
        list's element) and in each call of a block called twice: per layer, ``memory_by_layer``
        equals the live storages of the exported model's graph, at full and random widths; the
        exported model, counted as it is, agrees (ConvNeXt: its narrowed layer scales too)."""
        torch.manual_seed(0)
        model = {"googlenet_like": _GoogLeNetLike, "block_twice": _BlockTwice}.get(
            network, lambda: _tiny_torchvision(network))()
        size = 8 if network in ("googlenet_like", "block_twice") else 32
        net = convert.make_slimmable(model, torch.randn(1, 3, size, size))
        generator = random.Random(network)
        for widths in [1.0, 0.5] + [random_widths(net, generator, lower=0.05) for _ in range(3)]:
            static = slimmable.export(net, widths)
            measured = graph_memory(static, size)
            assert slimmable.memory_by_layer(net, widths)[0].tolist() == measured, widths
            assert slimmable.memory(static) == slimmable.memory(net, widths) == max(measured)
            assert slimmable.params(static) == slimmable.params(net, widths)

    def test_memory_counts_the_outputs_of_branches_waiting_for_a_concatenation(self):
        net = convert.make_slimmable(_GoogLeNetLike(), torch.randn(1, 3, 8, 8))
        # 8x8 = 64 positions: stem 3*64 in + 8*64 out; branch1 8*64 + 4*64; branch2.0 8*64 +
        # 2*64 + branch1's output 4*64; branch2.2 2*64 + 6*64 + the block's input, kept for
        # branch3, 8*64 + 4*64; branch3's pool 8*64 + 8*64 + 4*64 + 6*64 (the peak); branch3's
        # conv 8*64 + 2*64 + 4*64 + 6*64 (the block's input no longer needed); head 12 + 10.
        assert slimmable.memory_by_layer(net)[0].tolist() == [704, 768, 896, 1280, 1664, 1280, 22]
        # branch2 at 3 of its 6 channels: 3*64 fewer wherever its output is alive
        half = [0.5 if g.name == "block.branch2.2" else 1.0 for g in net.width_groups]
        assert slimmable.group_channels(net, half)["block.branch2.2"] == 3
        assert slimmable.memory_by_layer(net, half)[0].tolist() == [704, 768, 896, 1088, 1472,
                                                                       1088, 19]

    def test_memory_counts_each_call_of_a_block_called_twice(self):
        net = convert.make_slimmable(_BlockTwice(), torch.randn(1, 3, 8, 8))
        # stem 3*64 + 8*64; the first call: conv1 8*64 + 8*64, conv2 8*64 + 8*64 + its input
        # 8*64 (the peak); pool 8*64 + 8*16; the second call at 4x4: conv1 8*16 + 8*16, conv2
        # 8*16 + 8*16 + its input 8*16; head 8 + 10
        assert slimmable.memory_by_layer(net)[0].tolist() == [704, 1024, 1536, 640, 256, 384, 18]
        assert [kept.shape for (kept, _, _), in net.block.conv2.kept_by_call] == [(1, 8, 8, 8),
                                                                                  (1, 8, 4, 4)]

    def test_converted_model_trains_calibrates_and_saves_configs(self, tmp_path):
        torch.manual_seed(0)
        net = convert.make_slimmable(_tiny_torchvision("densenet"), torch.randn(1, 3, 32, 32))
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        widths = (0.2 + 0.8 * torch.rand(len(net.width_groups))).tolist()
        slimmable.set_widths(net.train(), widths)
        nn.functional.cross_entropy(net(torch.randn(4, 3, 32, 32)), torch.arange(4)).backward()
        optimizer.step()
        assert slimmable.calibrate_bn(net, [torch.randn(4, 3, 32, 32)]) == 1
        with slimmable.batch_statistics(net) as evaluated:
            assert torch.isfinite(evaluated(torch.randn(4, 3, 32, 32))).all()
        record = slimmable.save_config(tmp_path / "c.json", net, widths)
        loaded, _ = slimmable.load_config(tmp_path / "c.json", net)
        assert slimmable.group_channels(net, loaded) == record["channels"]
        assert slimmable.mmcv_flops(net, widths) > slimmable.macs(net, widths) > 0
        assert slimmable.memory(net, widths) > 0

    def test_divisor_keeps_full_width_of_a_group_that_is_no_multiple_of_it(self):
        # RegNetY's SE squeeze has 26 channels; divisor 8 rounds 26 to 24 and broke full width
        model = nn.Sequential(nn.Conv2d(3, 26, 3), nn.BatchNorm2d(26), nn.ReLU(),
                              nn.Conv2d(26, 16, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                              nn.Linear(16, 10))
        net = convert.make_slimmable(model, torch.randn(1, 3, 16, 16), log=lambda line: None,
                                     divisor=8)
        assert [(g.channels, g.divisor) for g in net.width_groups] == [(26, 2), (16, 8)]
        assert slimmable.group_channels(net, 1.0) == {"0": 26, "3": 16}  # full width reachable
        assert slimmable.group_channels(net, [0.5, 0.5]) == {"0": 14, "3": 8}

    def test_untraceable_or_layerless_model_is_one_line_value_error(self):
        class Branchy(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 4, 1)

            def forward(self, x):
                return self.conv(x) if x.sum() > 0 else x

        converted = convert.make_slimmable(nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)),
                                           torch.randn(1, 3, 8, 8))
        named = nn.Sequential()
        named.add_module("frozen", nn.Conv2d(3, 4, 1))
        # nothing left to slim: a linear from image to logits; a conv whose channels a Conv1d reads
        flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
        conv1d = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Flatten(2),
                               nn.Conv1d(16, 16, 3, padding=1), nn.AdaptiveAvgPool1d(1),
                               nn.Flatten(), nn.Linear(16, 10))
        for model, match in ((Branchy(), "cannot trace"), (nn.ReLU(), "no Conv2d"),
                             (converted, "already slimmable"), (named, "child module named frozen"),
                             (flat, "no width group to slim .its layers' widths are the image's"),
                             (conv1d, "no width group to slim .each froze, the first: froze 0 .16 "
                                      "channels. at node _2: module Conv1d")):
            with pytest.raises(ValueError, match=match) as error:
                convert.make_slimmable(model, torch.randn(1, 3, 8, 8))
            assert "\n" not in str(error.value)
