"""The networks, each declaring its width groups.

Every network here is an ordinary ``nn.Module`` built from ``slimmable`` layers, plus a list
``model.width_groups``: the channel counts a width search may change, one entry per set of layers
that must agree. ``get_model`` also builds any torchvision classification network by name
(``regnet_x_400mf``) and a user's own (``FILE.py:FUNCTION``), whose groups ``convert.py`` reads
off a trace of the graph instead. The rules, for every network written here:

- Layers tied by a residual add share one group (a ResNet stage's residual width; a MobileNet
  stage's output width). A depthwise conv follows its input, so it has no group of its own.
- Each block's inner width (ResNet ``conv1`` output, MobileNet expansion) is its own group.
- The image input and the logits never change; neither does the last 1x1 conv of the MobileNets
  (1280 / 960 channels), which Joslim and AutoSlim keep fixed too.
- Channel rounding (``slimmable.round_channels``): the CIFAR ResNets allow any count >= 1, the
  ImageNet networks multiples of 8 like torchvision.

Design choices worth knowing:

- CIFAR ResNets (He et al. 2016, Sec. 4.2): 3x3 conv stem with BN and ReLU, three stages of 16/32/64
  channels, parameter-free option-A shortcuts (stride-2 subsampling, then zero channels). Under
  slimming a stage may be *narrower* than the one before it; its shortcut then keeps the first
  channels of its input. The Joslim reference instead forces residual widths to be non-decreasing
  across stages, which makes the cost a max() of the multipliers; here every multiplier is free.
- MobileNetV3's squeeze-and-excitation layer has its own width, ``round8(m * full_squeeze)`` with
  ``m`` its block's expansion multiplier: the squeeze stays about a quarter of the expansion at
  every width (torchvision: ``_make_divisible(expanded // 4, 8)``). Its 5x5 depthwise kernels are
  real 5x5 kernels (the Joslim reference silently used 3x3).
- At full width the ImageNet networks have torchvision's parameter names and shapes, so
  ``model.load_state_dict(torchvision.models.resnet18(weights=...).state_dict())`` works.

``python models.py`` prints every network's width groups and costs at full and at the smallest
width (0.42), the torchvision networks ``get_model`` also builds, and the published
AutoSlim-MobileNetV2 networks; ``python models.py write-configs``
(re)writes those as ``configs/autoslim_mbv2_*.json``.
"""
import argparse
import functools
import importlib.util
import os
import sys

import torch
import torch.nn as nn

from slimmable import (SlimBatchNorm2d, SlimConv2d, SlimLinear, add_group, divisible,
                       group_channels, macs, mmcv_flops, params, save_config, slim_layers)


def option_a_shortcut(x, channels, stride):
    """He et al.'s parameter-free shortcut: subsample, then zero-pad (or cut) to ``channels``."""
    if stride > 1:
        x = x[:, :, ::stride, ::stride]
    extra = channels - x.shape[1]
    if extra > 0:
        return nn.functional.pad(x, (0, 0, 0, 0, 0, extra))
    return x[:, :channels] if extra < 0 else x


def _conv_bn(in_slot, out_slot, kernel, stride=1, groups=1, activation=None, bn_eps=1e-5,
             bn_momentum=0.1):
    """conv -> BN [-> activation] as an ``nn.Sequential`` (torchvision's Conv2dNormActivation
    names: ``0`` conv, ``1`` bn, ``2`` activation). A slot given as a plain int is a fixed width."""
    c_in, c_out = [s if isinstance(s, int) else s.channels for s in (in_slot, out_slot)]
    in_slot, out_slot = [None if isinstance(s, int) else s for s in (in_slot, out_slot)]
    layers = [SlimConv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups,
                         in_slot=in_slot, out_slot=out_slot),
              SlimBatchNorm2d(c_out, out_slot, eps=bn_eps, momentum=bn_momentum)]
    if activation is not None:
        layers.append(activation)
    return nn.Sequential(*layers)


def _init_weights(model, linear_std=None):
    """torchvision's initialization (a BN starts at weight 1, bias 0 already)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0, linear_std)
            nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------------
# ResNets


class BasicBlock(nn.Module):
    """Two 3x3 convs and a shortcut (torchvision's names: conv1, bn1, conv2, bn2, downsample)."""

    def __init__(self, in_slot, inner_slot, out_slot, stride, projection):
        super().__init__()
        self.conv1 = SlimConv2d(in_slot.channels, inner_slot.channels, 3, stride, 1,
                                in_slot=in_slot, out_slot=inner_slot)
        self.bn1 = SlimBatchNorm2d(inner_slot.channels, inner_slot)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = SlimConv2d(inner_slot.channels, out_slot.channels, 3, 1, 1,
                                in_slot=inner_slot, out_slot=out_slot)
        self.bn2 = SlimBatchNorm2d(out_slot.channels, out_slot)
        self.downsample = None
        if projection:  # ImageNet ResNets: 1x1 conv + BN
            self.downsample = nn.Sequential(
                SlimConv2d(in_slot.channels, out_slot.channels, 1, stride,
                           in_slot=in_slot, out_slot=out_slot),
                SlimBatchNorm2d(out_slot.channels, out_slot))
        self.stride = stride
        self.option_a = not projection and (stride != 1 or in_slot != out_slot)
        # For slimmable.memory: x waits for the shortcut; a projection runs after the main path.
        self.keeps_alive = ("input", "bn2") if projection else ("input",)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            shortcut = self.downsample(x)
        elif self.option_a:
            shortcut = option_a_shortcut(x, out.shape[1], self.stride)
        else:
            shortcut = x
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    """CIFAR ResNet-{20,32,44,56} (``imagenet=False``) or ImageNet ResNet-18 (``imagenet=True``).

    Width groups: one per stage's residual width (``layerK.residual``, tied to the stem for the
    first stage) and one per block's inner width (``layerK.B.inner``).
    """

    def __init__(self, blocks_per_stage, stage_channels, num_classes, imagenet, input_size,
                 in_channels=3):
        super().__init__()
        divisor = 8 if imagenet else 1
        groups = self.width_groups = []
        self.input_size, self.in_channels = input_size, in_channels
        residual, inner = [], []  # groups in network order: each stage's residual, then its blocks
        for k, (count, channels) in enumerate(zip(blocks_per_stage, stage_channels)):
            residual.append(add_group(groups, f"layer{k + 1}.residual", channels, divisor))
            inner.append([add_group(groups, f"layer{k + 1}.{b}.inner", channels, divisor)
                          for b in range(count)])
        stem = residual[0]
        kernel, stride, padding = (7, 2, 3) if imagenet else (3, 1, 1)
        self.conv1 = SlimConv2d(in_channels, stem.channels, kernel, stride, padding, out_slot=stem)
        self.bn1 = SlimBatchNorm2d(stem.channels, stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if imagenet else nn.Identity()
        in_slot = stem
        for k, (count, out_slot) in enumerate(zip(blocks_per_stage, residual)):
            blocks = []
            for b in range(count):
                stride = 2 if (k > 0 and b == 0) else 1
                projection = imagenet and (stride != 1 or in_slot != out_slot)
                blocks.append(BasicBlock(in_slot, inner[k][b], out_slot, stride, projection))
                in_slot = out_slot
            setattr(self, f"layer{k + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = SlimLinear(in_slot.channels, num_classes, in_slot=in_slot)
        self.num_stages = len(stage_channels)
        _init_weights(self)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for k in range(self.num_stages):
            x = getattr(self, f"layer{k + 1}")(x)
        return self.fc(self.avgpool(x).flatten(1))


def slim_cifar_resnet(depth, num_classes=10, input_size=32, in_channels=3):
    if (depth - 2) % 6:
        raise ValueError("CIFAR ResNet depth must be 6n+2")
    n = (depth - 2) // 6
    return ResNet([n] * 3, [16, 32, 64], num_classes, imagenet=False, input_size=input_size,
                  in_channels=in_channels)


def slim_resnet18(num_classes=1000, input_size=224, in_channels=3):
    return ResNet([2, 2, 2, 2], [64, 128, 256, 512], num_classes, imagenet=True,
                  input_size=input_size, in_channels=in_channels)


# ---------------------------------------------------------------------------------------------
# MobileNets


def make_divisible(value, divisor=8):
    """torchvision's channel rounding for MobileNets, for one number."""
    return int(divisible(value, divisor))


class InvertedResidual(nn.Module):
    """MobileNetV2/V3 block: [1x1 expand] -> depthwise -> [SE] -> 1x1 project [+ residual].

    Layer names follow torchvision (``conv`` for V2, ``block`` for V3) so its weights load.
    """

    def __init__(self, in_slot, expand_slot, out_slot, kernel, stride, activation, squeeze=None,
                 bn_eps=1e-5, bn_momentum=0.1, attribute="conv"):
        super().__init__()
        norm = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        layers = []
        if expand_slot is None:  # no expansion: the depthwise conv follows the input
            expand_slot = in_slot
        else:
            layers.append(_conv_bn(in_slot, expand_slot, 1, activation=activation(), **norm))
        layers.append(_conv_bn(expand_slot, expand_slot, kernel, stride,
                               groups=expand_slot.channels, activation=activation(), **norm))
        if squeeze is not None:
            layers.append(SqueezeExcitation(expand_slot, squeeze))
        project = _conv_bn(expand_slot, out_slot, 1, **norm)
        if attribute == "conv":  # V2 flattens the projection into the block's Sequential
            layers.extend(project)
        else:
            layers.append(project)
        setattr(self, attribute, nn.Sequential(*layers))
        self.body_name = attribute
        self.use_residual = stride == 1 and in_slot == out_slot
        self.keeps_alive = ("input",) if self.use_residual else ()  # x waits for the addition

    def forward(self, x):
        out = getattr(self, self.body_name)(x)
        return x + out if self.use_residual else out


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation with hard-sigmoid gating (torchvision's names)."""

    def __init__(self, channel_slot, squeeze_slot):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = SlimConv2d(channel_slot.channels, squeeze_slot.channels, 1, bias=True,
                              in_slot=channel_slot, out_slot=squeeze_slot)
        self.fc2 = SlimConv2d(squeeze_slot.channels, channel_slot.channels, 1, bias=True,
                              in_slot=squeeze_slot, out_slot=channel_slot)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()
        self.keeps_alive = ("input",)  # x waits for the rescale (slimmable.memory)

    def forward(self, x):
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


# (expansion t, output channels c, repeats n, first stride s), Sandler et al. 2018, Table 2.
MOBILENETV2_SETTING = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


class MobileNetV2(nn.Module):
    """MobileNetV2 with ``width_mult`` (AutoSlim's supernet is ``width_mult=1.5``).

    Width groups (24 at any width_mult): ``stem`` (the first conv, followed by the first block's
    depthwise conv), one ``stageK.out`` per stage's output width (7), one ``features.N.expand`` per
    block with an expansion layer (16).
    """

    def __init__(self, num_classes=1000, width_mult=1.0, input_size=224, dropout=0.2,
                 in_channels=3):
        super().__init__()
        groups = self.width_groups = []
        self.input_size, self.in_channels, self.width_mult = input_size, in_channels, width_mult
        in_slot = add_group(groups, "stem", make_divisible(32 * width_mult), 8)
        last_channels = make_divisible(1280 * max(1.0, width_mult))
        features = [_conv_bn(in_channels, in_slot, 3, 2, activation=nn.ReLU6(inplace=True))]
        for k, (t, c, n, s) in enumerate(MOBILENETV2_SETTING):
            out_slot = add_group(groups, f"stage{k + 1}.out", make_divisible(c * width_mult), 8)
            for i in range(n):
                expand = None
                if t != 1:
                    expand = add_group(groups, f"features.{len(features)}.expand",
                                       int(round(in_slot.channels * t)), 8)
                features.append(InvertedResidual(in_slot, expand, out_slot, 3, s if i == 0 else 1,
                                                 lambda: nn.ReLU6(inplace=True)))
                in_slot = out_slot
        features.append(_conv_bn(in_slot, last_channels, 1, activation=nn.ReLU6(inplace=True)))
        self.features = nn.Sequential(*features)
        # A module, not torchvision's functional call: slimmable.memory sees the layer, and mmcv's
        # counter (slimmable.mmcv_flops) counts modules only (mmcls's MobileNetV2 pools in its neck).
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), SlimLinear(last_channels, num_classes))
        _init_weights(self, linear_std=0.01)

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


# (kernel, expanded, out, use SE, hard-swish, stride), Howard et al. 2019, Table 1 (Large).
MOBILENETV3_LARGE_SETTING = [
    (3, 16, 16, False, False, 1), (3, 64, 24, False, False, 2), (3, 72, 24, False, False, 1),
    (5, 72, 40, True, False, 2), (5, 120, 40, True, False, 1), (5, 120, 40, True, False, 1),
    (3, 240, 80, False, True, 2), (3, 200, 80, False, True, 1), (3, 184, 80, False, True, 1),
    (3, 184, 80, False, True, 1), (3, 480, 112, True, True, 1), (3, 672, 112, True, True, 1),
    (5, 672, 160, True, True, 2), (5, 960, 160, True, True, 1), (5, 960, 160, True, True, 1)]


class MobileNetV3Large(nn.Module):
    """MobileNetV3-Large. Width groups (20): ``stem`` (the first conv, tied by the first block's
    residual to that block's output), one ``stageK.out`` per later output width (5), one
    ``features.N.expand`` per block with an expansion layer (14)."""

    def __init__(self, num_classes=1000, input_size=224, dropout=0.2, in_channels=3):
        super().__init__()
        groups = self.width_groups = []
        self.input_size, self.in_channels = input_size, in_channels
        norm = dict(bn_eps=0.001, bn_momentum=0.01)
        in_slot = add_group(groups, "stem", 16, 8)
        features = [_conv_bn(in_channels, in_slot, 3, 2, activation=nn.Hardswish(), **norm)]
        out_slot, stage = in_slot, 0
        for kernel, expanded, out, use_se, hard_swish, stride in MOBILENETV3_LARGE_SETTING:
            if out != out_slot.channels:
                stage += 1
                out_slot = add_group(groups, f"stage{stage}.out", out, 8)
            expand = squeeze = None
            if expanded != in_slot.channels:
                expand = add_group(groups, f"features.{len(features)}.expand", expanded, 8)
            if use_se:
                source = expand if expand is not None else in_slot
                squeeze = source._replace(channels=make_divisible(expanded // 4))
            activation = nn.Hardswish if hard_swish else nn.ReLU
            features.append(InvertedResidual(in_slot, expand, out_slot, kernel, stride, activation,
                                             squeeze, attribute="block", **norm))
            in_slot = out_slot
        last_channels = 6 * in_slot.channels
        features.append(_conv_bn(in_slot, last_channels, 1, activation=nn.Hardswish(), **norm))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(SlimLinear(last_channels, 1280), nn.Hardswish(),
                                        nn.Dropout(dropout), SlimLinear(1280, num_classes))
        _init_weights(self, linear_std=0.01)

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


# ---------------------------------------------------------------------------------------------

NETWORKS = {
    **{f"slim_resnet{depth}": functools.partial(slim_cifar_resnet, depth)
       for depth in (20, 32, 44, 56)},
    "slim_resnet18": slim_resnet18,
    "slim_mobilenetv2": MobileNetV2,
    "slim_mobilenetv3_large": MobileNetV3Large,
}
CIFAR_NETWORKS = ("slim_resnet20", "slim_resnet32", "slim_resnet44", "slim_resnet56")


def get_model(name, num_classes, **options):
    """Build network ``name`` (see ``network_name``). Options: ``input_size`` (the resolution the
    cost is counted at; 32 for the CIFAR ResNets, 224 otherwise), ``in_channels`` (image channels:
    3, or 1 for grey images such as Fashion-MNIST), ``width_mult`` (slim_mobilenetv2 only).
    A torchvision network or a user's own (``FILE.py:FUNCTION``) is built with random weights and
    ``num_classes`` outputs, its first conv rebuilt for ``in_channels`` if it takes another count,
    then made slimmable by ``convert.make_slimmable`` from one trace at ``input_size``; the groups
    the conversion had to freeze are in ``model.frozen``, one line each. ValueError, one line,
    for an unknown name or a network that cannot be built or traced."""
    name = network_name(name)
    if name in NETWORKS:
        try:
            model = NETWORKS[name](num_classes=num_classes, **options)
        except TypeError as error:
            raise ValueError(f"bad option for {name}: {error}") from None
    else:
        model = _build_traced(name, num_classes, **options)
    model.network_name = name
    return model


def torchvision_networks():
    """The names of torchvision's classification networks (``torchvision.models.list_models``)."""
    import torchvision
    return torchvision.models.list_models(module=torchvision.models)


def network_name(name):
    """``name`` as a run records it: a network of ``NETWORKS``, a torchvision classification
    network (``regnet_x_400mf``), or ``FILE.py:FUNCTION`` (a function of ``num_classes``
    returning an ``nn.Module``) with FILE made absolute, so that search.py and evaluate.py
    rebuild the same network from anywhere. ValueError, one line, otherwise (argparse ``type=``)."""
    if name in NETWORKS or name in torchvision_networks():
        return name
    path, _, function = name.rpartition(":")
    if path.endswith(".py") and function.isidentifier():
        if not os.path.isfile(path):
            raise ValueError(f"no file {path} (for --network FILE.py:FUNCTION)")
        return f"{os.path.abspath(path)}:{function}"
    raise ValueError(f"unknown network '{name}': one of {', '.join(NETWORKS)}, a torchvision "
                     f"classification network (python models.py lists them) or FILE.py:FUNCTION")


def network_flag(text):
    """argparse ``type=`` for ``--network``: ``network_name``, its refusal in argparse's one line."""
    try:
        return network_name(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _user_network(name, num_classes):
    """Call FUNCTION(num_classes) of FILE for ``name = FILE.py:FUNCTION``."""
    path, _, function = name.rpartition(":")
    spec = importlib.util.spec_from_file_location("network_" + os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        if not callable(getattr(module, function, None)):
            raise ValueError(f"{path} has no function {function}")
        model = getattr(module, function)(num_classes)
    except Exception as error:  # the user's code: any error is theirs to read, in one line
        raise ValueError(f"cannot build {name}: {type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"{name} returned a {type(model).__name__}, not an nn.Module")
    return model


def _build_traced(name, num_classes, input_size=224, in_channels=3):
    """A torchvision or user network with random weights, made slimmable (see ``get_model``)."""
    import convert  # imported here: the hand-written networks above need only slimmable.py
    import torchvision
    if ":" not in name:
        # GoogLeNet and Inception-v3: no auxiliary heads, no 3-channel input transform
        extra = {"aux_logits": False, "init_weights": True, "transform_input": False} \
            if name in ("googlenet", "inception_v3") else {}
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **extra)
    else:
        model = _user_network(name, num_classes)
        if hasattr(model, "width_groups"):  # groups declared with slimmable's layers: as it is
            model.input_size = getattr(model, "input_size", input_size)
            model.frozen = []
            return model
    stem_name, stem = next(((n, m) for n, m in model.named_modules()
                            if isinstance(m, nn.Conv2d)), (None, None))
    if stem is not None and stem.in_channels != in_channels:  # grey images: a 1-channel stem
        parent, _, attr = stem_name.rpartition(".")
        setattr(model.get_submodule(parent), attr, nn.Conv2d(
            in_channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding,
            stem.dilation, bias=stem.bias is not None, padding_mode=stem.padding_mode))
    frozen = []
    try:
        convert.make_slimmable(model, torch.zeros(1, in_channels, input_size, input_size),
                               log=frozen.append)
    except (RuntimeError, TypeError) as error:  # e.g. an image too small for the network
        raise ValueError(f"cannot convert {name} at {input_size}x{input_size}: "
                         f"{str(error).splitlines()[0]}") from None
    model.frozen = frozen
    return model


# ---------------------------------------------------------------------------------------------
# The published AutoSlim networks

# AutoSlim-MobileNetV2 (Yu & Huang, arXiv 1903.11728, Table 1), searched in a 1.5x supernet, in
# the authors' flat layout: one entry per conv or linear output in network order (stem, block 0's
# projection, expansion and projection of blocks 1-16, the last 1x1 conv, the classes). Keyed by
# mmrazor's labels (its mmcv counter); the paper's MACs are 505M / 305M / 207M.
AUTOSLIM_MOBILENETV2 = {
    "530M": [32, 16, 144, 24, 176, 24, 192, 48, 240, 48, 144, 48, 264, 88, 288, 88, 336, 88, 432,
             88, 576, 144, 576, 144, 648, 144, 864, 240, 1440, 240, 1440, 240, 1440, 480, 1920,
             1000],
    "320M": [8, 8, 96, 16, 96, 16, 96, 24, 144, 24, 144, 24, 144, 56, 288, 56, 288, 56, 288, 56,
             288, 96, 432, 96, 432, 96, 864, 240, 1440, 240, 960, 240, 1440, 480, 1920, 1000],
    "220M": [8, 8, 96, 16, 96, 16, 96, 24, 144, 24, 144, 24, 144, 48, 288, 48, 288, 48, 288, 48,
             288, 64, 432, 64, 432, 64, 648, 176, 720, 176, 720, 176, 1440, 280, 1920, 1000],
}
AUTOSLIM_PAPER_MACS = {"530M": "505M", "320M": "305M", "220M": "207M"}
AUTOSLIM_SOURCE = ("JiahuiYu/slimmable_networks apps/autoslim_mobilenet_v2_train_val.yml "
                   "(channel_num_list), and open-mmlab/mmrazor 0.x "
                   "configs/pruning/autoslim/AUTOSLIM_MBV2_{label}_OFFICIAL.yaml (the same network)")


def channels_from_flat_list(model, flat):
    """``{group name: channels}`` from a flat channel list in the AutoSlim authors' layout: one
    count per conv or linear *output* in network order, depthwise convs left out (they follow
    their input). A count for a fixed-width layer must be that width; counts for layers one
    group ties together must agree. Raises ValueError saying which entry does not fit (its
    length, a fixed width, a disagreement)."""
    outputs = [(name, m) for name, m in slim_layers(model)
               if isinstance(m, (SlimConv2d, SlimLinear)) and not getattr(m, "depthwise", False)]
    if len(flat) != len(outputs):
        raise ValueError(f"the list has {len(flat)} entries, the network {len(outputs)} conv and "
                         f"linear outputs")
    groups, channels = model.width_groups, {}
    for position, ((name, layer), count) in enumerate(zip(outputs, flat)):
        full = layer.out_features if isinstance(layer, SlimLinear) else layer.out_channels
        if layer.out_slot is None:
            if count != full:
                raise ValueError(f"entry {position} ({name}) is {count}; that layer is fixed "
                                 f"at {full}")
            continue
        group = groups[layer.out_slot.group].name
        if channels.setdefault(group, count) != count:
            raise ValueError(f"entry {position} ({name}) is {count}, but group '{group}' already "
                             f"has {channels[group]} from an earlier entry")
    return channels


def autoslim_networks():
    """The 1.5x MobileNetV2 supernet and ``[(label, widths)]`` of the published AutoSlim networks
    in it; the widths reproduce the published channels (checked)."""
    net = get_model("slim_mobilenetv2", 1000, width_mult=1.5)
    networks = []
    for label, flat in AUTOSLIM_MOBILENETV2.items():
        channels = channels_from_flat_list(net, flat)
        widths = [channels[g.name] / g.channels for g in net.width_groups]
        if group_channels(net, widths) != channels:
            raise RuntimeError(f"the widths of AutoSlim {label} miss its channels (a bug)")
        networks.append((label, widths))
    return net, networks


def write_autoslim_configs(folder="configs"):
    """Write the published AutoSlim-MobileNetV2 networks as channel configurations
    (``slimmable.save_config``'s format, read by ``train.py --channel_config``):
    ``FOLDER/autoslim_mbv2_{530M,320M,220M}.json``, each with its source, the paper's MACs and
    mmrazor's label (``cost``/``target``: the mmcv-style FLOPs it is known by). Returns the paths."""
    net, networks = autoslim_networks()
    paths = [os.path.join(folder, f"autoslim_mbv2_{label}.json") for label, _ in networks]
    for path, (label, widths) in zip(paths, networks):
        save_config(path, net, widths, cost="mmcv_flops", target=float(label[:-1]),
                    paper_macs=AUTOSLIM_PAPER_MACS[label], flat_channels=AUTOSLIM_MOBILENETV2[label],
                    source=AUTOSLIM_SOURCE.format(label=label))
    return paths


def print_table(lower=0.42, file=sys.stdout):
    """Every network's width groups, MACs, mmcv-style FLOPs and params at full width and at
    ``lower``, then the published AutoSlim-MobileNetV2 networks."""
    header = (f"{'network':<24}{'groups':>7}{'MACs@1.0':>15}{'mmcv@1.0':>15}{'params@1.0':>13}"
              f"{f'MACs@{lower}':>15}{f'params@{lower}':>14}")
    print(header, "-" * len(header), sep="\n", file=file)
    for name in NETWORKS:
        net = get_model(name, 10 if name in CIFAR_NETWORKS else 1000)
        print(f"{name:<24}{len(net.width_groups):>7}{macs(net, 1.0):>15,}"
              f"{mmcv_flops(net, 1.0):>15,}{params(net, 1.0):>13,}"
              f"{macs(net, lower):>15,}{params(net, lower):>14,}", file=file)
    print("MACs: conv+linear multiply-accumulates per image (32x32 CIFAR nets with 10 classes, "
          "224x224 ImageNet nets with 1000 classes), the papers' FLOPs. mmcv: the same plus BN, "
          "activations and pooling, as mmcv's counter (slimmable.mmcv_flops).", file=file)
    print("\nAlso --network NAME for these torchvision classification networks, made slimmable "
          "from a trace of their graph at start-up (bench.py convert checks each CNN): "
          + ", ".join(torchvision_networks()), file=file)
    print("and --network FILE.py:FUNCTION for your own (FUNCTION(num_classes) -> nn.Module).",
          file=file)
    net, networks = autoslim_networks()
    print(f"\n{'AutoSlim-MobileNetV2 (1.5x supernet)':<38}{'MACs':>13}{'paper':>7}{'params':>11}"
          f"{'mmcv FLOPs':>13}{'mmrazor':>9}", file=file)
    for label, widths in networks:
        print(f"{f'configs/autoslim_mbv2_{label}.json':<38}{macs(net, widths):>13,}"
              f"{AUTOSLIM_PAPER_MACS[label]:>7}{params(net, widths):>11,}"
              f"{mmcv_flops(net, widths):>13,}{label:>9}", file=file)


if __name__ == "__main__":
    if sys.argv[1:] == ["write-configs"]:
        print("wrote " + ", ".join(write_autoslim_configs()))
    elif sys.argv[1:]:
        sys.exit("usage: python models.py [write-configs]")
    else:
        print_table()
