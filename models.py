"""The networks, each declaring its width groups.

Every network here is an ordinary ``nn.Module`` built from ``slimmable`` layers, plus a list
``model.width_groups``: the channel counts a width search may change, one entry per set of layers
that must agree. The CIFAR ResNets are written here with their groups declared by hand; the
ImageNet networks (ResNet-18, MobileNetV2, MobileNetV3-Large) are torchvision's, whose groups
``convert.py`` reads off a trace of the graph, then named and tied as Joslim and AutoSlim have
them. ``get_model`` builds any other torchvision classification network by name
(``regnet_x_400mf``) and a user's own (``FILE.py:FUNCTION``) the same way. The rules:

- Layers tied by a residual add share one group (a ResNet stage's residual width; a MobileNet
  stage's output width). A depthwise conv follows its input, so it has no group of its own.
- Each block's inner width (ResNet ``conv1`` output, MobileNet expansion) is its own group.
- The image input and the logits never change; neither does the last 1x1 conv of the MobileNets
  (1280 / 960 channels) nor MobileNetV3's 1280-wide classifier layer, which Joslim and AutoSlim
  keep fixed too.
- Channel rounding (``slimmable.round_channels``): the CIFAR ResNets allow any count >= 1, the
  ImageNet networks multiples of 8 like torchvision.

Design choices worth knowing:

- CIFAR ResNets (He et al. 2016, Sec. 4.2): 3x3 conv stem with BN and ReLU, three stages of 16/32/64
  channels, parameter-free option-A shortcuts (stride-2 subsampling, then zero channels). Under
  slimming a stage may be *narrower* than the one before it; its shortcut then keeps the first
  channels of its input. The Joslim reference instead forces residual widths to be non-decreasing
  across stages, which makes the cost a max() of the multipliers; here every multiplier is free.
- MobileNetV3's squeeze-and-excitation layer takes its block's expansion multiplier ``m`` on its
  own full width: ``round8(m * full_squeeze)``, so the squeeze stays about a quarter of the
  expansion at every width (torchvision: ``_make_divisible(expanded // 4, 8)``). Its 5x5 depthwise
  kernels are real 5x5 kernels (the Joslim reference silently used 3x3).
- The ImageNet networks have torchvision's parameter names, shapes and random initialization, so
  ``model.load_state_dict(torchvision.models.resnet18(weights=...).state_dict())`` works.

``python models.py`` prints every network's width groups and costs at full and at the smallest
width (0.42), the torchvision networks ``get_model`` also builds, and the published
AutoSlim-MobileNetV2 networks; ``python models.py write-configs``
(re)writes those as ``configs/autoslim_mbv2_*.json``.
"""
import argparse
import functools
import importlib.util
import numbers
import os
import sys

import torch
import torch.nn as nn

from slimmable import (SlimBatchNorm2d, SlimConv2d, SlimLinear, add_group, channels_to_widths,
                       macs, mmcv_flops, params, save_config, slim_layers)


def option_a_shortcut(x, channels, stride):
    """He et al.'s parameter-free shortcut: subsample, then zero-pad (or cut) to ``channels``."""
    if stride > 1:
        x = x[:, :, ::stride, ::stride]
    extra = channels - x.shape[1]
    if extra > 0:
        return nn.functional.pad(x, (0, 0, 0, 0, 0, extra))
    return x[:, :channels] if extra < 0 else x


# ---------------------------------------------------------------------------------------------
# CIFAR ResNets


class BasicBlock(nn.Module):
    """Two 3x3 convs and a shortcut (torchvision's names: conv1, bn1, conv2, bn2)."""

    def __init__(self, in_slot, inner_slot, out_slot, stride):
        super().__init__()
        self.conv1 = SlimConv2d(in_slot.channels, inner_slot.channels, 3, stride, 1,
                                in_slot=in_slot, out_slot=inner_slot)
        self.bn1 = SlimBatchNorm2d(inner_slot.channels, inner_slot)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = SlimConv2d(inner_slot.channels, out_slot.channels, 3, 1, 1,
                                in_slot=inner_slot, out_slot=out_slot)
        self.bn2 = SlimBatchNorm2d(out_slot.channels, out_slot)
        self.stride = stride
        self.option_a = stride != 1 or in_slot != out_slot
        self.keeps_alive = ("input",)  # for slimmable.memory: x waits for the shortcut

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = option_a_shortcut(x, out.shape[1], self.stride) if self.option_a else x
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    """CIFAR ResNet-{20,32,44,56}. Width groups: one per stage's residual width
    (``layerK.residual``, tied to the stem for the first stage) and one per block's inner width
    (``layerK.B.inner``)."""

    def __init__(self, blocks_per_stage, stage_channels, num_classes, input_size, in_channels=3):
        super().__init__()
        groups = self.width_groups = []
        self.input_size, self.in_channels = input_size, in_channels
        residual, inner = [], []  # groups in network order: each stage's residual, then its blocks
        for k, (count, channels) in enumerate(zip(blocks_per_stage, stage_channels)):
            residual.append(add_group(groups, f"layer{k + 1}.residual", channels))
            inner.append([add_group(groups, f"layer{k + 1}.{b}.inner", channels)
                          for b in range(count)])
        stem = residual[0]
        self.conv1 = SlimConv2d(in_channels, stem.channels, 3, 1, 1, out_slot=stem)
        self.bn1 = SlimBatchNorm2d(stem.channels, stem)
        self.relu = nn.ReLU(inplace=True)
        in_slot = stem
        for k, (count, out_slot) in enumerate(zip(blocks_per_stage, residual)):
            blocks = []
            for b in range(count):
                stride = 2 if k > 0 and b == 0 else 1
                blocks.append(BasicBlock(in_slot, inner[k][b], out_slot, stride))
                in_slot = out_slot
            setattr(self, f"layer{k + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = SlimLinear(in_slot.channels, num_classes, in_slot=in_slot)
        self.num_stages = len(stage_channels)
        for m in self.modules():  # torchvision's initialization (BN: weight 1, bias 0 already)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        for k in range(self.num_stages):
            x = getattr(self, f"layer{k + 1}")(x)
        return self.fc(self.avgpool(x).flatten(1))


def slim_cifar_resnet(depth, num_classes=10, input_size=32, in_channels=3):
    if (depth - 2) % 6:
        raise ValueError("CIFAR ResNet depth must be 6n+2")
    n = (depth - 2) // 6
    return ResNet([n] * 3, [16, 32, 64], num_classes, input_size, in_channels)


# ---------------------------------------------------------------------------------------------
# The ImageNet networks: torchvision's, made slimmable by convert.py, groups named and tied as
# Joslim and AutoSlim have them


def slim_resnet18(num_classes=1000, input_size=224, in_channels=3):
    """ResNet-18. Width groups (12), named and tied as the CIFAR ``ResNet``'s."""
    import torchvision
    net = _converted(torchvision.models.resnet18(num_classes=num_classes), "slim_resnet18",
                     input_size, in_channels, imagenet=True)
    named = []
    for k, stage in enumerate((net.layer1, net.layer2, net.layer3, net.layer4), 1):
        named.append((f"layer{k}.residual", stage[0].bn2))
        named += [(f"layer{k}.{b}.inner", block.conv1) for b, block in enumerate(stage)]
    return _regroup(net, named)


def slim_mobilenetv2(num_classes=1000, width_mult=1.0, input_size=224, dropout=0.2,
                     in_channels=3):
    """MobileNetV2 with ``width_mult`` (AutoSlim's supernet is ``width_mult=1.5``; channels
    rounded to multiples of 8). Width groups (24 at any width_mult): see ``_mobilenet_groups``."""
    import torchvision

    class MobileNetV2(torchvision.models.MobileNetV2):
        """torchvision's, pooling with a module instead of a function call: slimmable.memory sees
        the layer, and mmcv's counter (slimmable.mmcv_flops) counts modules only (mmcls's
        MobileNetV2 pools in its neck)."""

        def forward(self, x):
            return self.classifier(self.avgpool(self.features(x)).flatten(1))
    net = MobileNetV2(num_classes=num_classes, width_mult=width_mult, dropout=dropout)
    net.avgpool = nn.AdaptiveAvgPool2d(1)
    _converted(net, "slim_mobilenetv2", input_size, in_channels, imagenet=True)
    net = _regroup(net, _mobilenet_groups(net))
    net.width_mult = width_mult
    return net


def slim_mobilenetv3_large(num_classes=1000, input_size=224, dropout=0.2, in_channels=3):
    """MobileNetV3-Large. Width groups (20): see ``_mobilenet_groups``; ``stem`` is tied by the
    first block's residual to that block's output; each squeeze-and-excitation layer takes its
    block's expansion multiplier (see the top of this file)."""
    import torchvision
    net = torchvision.models.mobilenet_v3_large(num_classes=num_classes, dropout=dropout)
    _converted(net, "slim_mobilenetv3_large", input_size, in_channels, imagenet=True)
    return _regroup(net, _mobilenet_groups(net))


def _mobilenet_groups(net):
    """``[(group name, layer)]`` for a MobileNet: ``stem`` (the first conv), ``stageK.out`` for
    each later stage (begun by a block without a residual, not by a new channel count: two
    stages may round to one count under ``width_mult < 1``), ``features.N.expand`` for each
    block's expansion, with its SE squeeze; the last 1x1 conv and V3's 1280-wide classifier
    layer in no group (Joslim and AutoSlim keep them fixed)."""
    named, stage = [("stem", net.features[0][0])], 0
    for n, block in enumerate(net.features[1:-1], 1):
        convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
        if not block.use_res_connect:
            stage += 1
            named.append((f"stage{stage}.out", convs[-1]))
        named += [(f"features.{n}.expand", conv) for conv in convs[:-1] if not conv.depthwise]
    return named


def _regroup(net, named):
    """For the three converted ImageNet networks (prefix slots only; no ``channel_parameters``):
    replace a converted network's width groups by ``named``, ``[(group name, layer)]`` in
    the order the groups are listed: each is the group of that layer's output; layers naming
    the same group tie their groups (an SE squeeze keeps its own full channels, its block's
    multiplier); a group no layer names is kept at full width."""
    renamed = {}  # group name -> the group of the first layer naming it, renamed
    for name, layer in named:
        renamed.setdefault(name, net.width_groups[layer.out_slot.group]._replace(name=name))
    names = list(renamed)
    new = {layer.out_slot.group: names.index(name) for name, layer in named}

    def slot(old):
        return None if old is None or old.group not in new else old._replace(group=new[old.group])
    for module in net.modules():
        if hasattr(module, "in_slot"):
            module.in_slot, module.out_slot = slot(module.in_slot), slot(module.out_slot)
        if "call_slots" in module.__dict__:
            module.call_slots = [(slot(s), dim) for s, dim in module.call_slots]
        if "kept_by_call" in module.__dict__:
            module.kept_by_call = [[(kept, slot(s), dim) for kept, s, dim in call]
                                   for call in module.kept_by_call]
    net.width_groups = list(renamed.values())
    return net


# ---------------------------------------------------------------------------------------------

NETWORKS = {
    **{f"slim_resnet{depth}": functools.partial(slim_cifar_resnet, depth)
       for depth in (20, 32, 44, 56)},
    "slim_resnet18": slim_resnet18,
    "slim_mobilenetv2": slim_mobilenetv2,
    "slim_mobilenetv3_large": slim_mobilenetv3_large,
}
CIFAR_NETWORKS = ("slim_resnet20", "slim_resnet32", "slim_resnet44", "slim_resnet56")


def get_model(name, num_classes, **options):
    """Build network ``name`` (see ``network_name``). Options: ``input_size`` (the resolution the
    cost is counted at; 32 for the CIFAR ResNets, 224 otherwise), ``in_channels`` (image channels:
    3, or 1 for grey images such as Fashion-MNIST), ``width_mult`` (slim_mobilenetv2 only).
    A torchvision network or a user's own (``FILE.py:FUNCTION``) is built with random weights and
    ``num_classes`` outputs, its first conv rebuilt for ``in_channels`` if it takes another count,
    then made slimmable by ``convert.make_slimmable`` from one trace at ``input_size``; the groups
    the conversion had to freeze are in ``model.frozen``, one line each. A user's network that
    declares its own ``width_groups`` is returned as built (``in_channels`` is its own business).
    ValueError, one line, for an unknown name, ``num_classes < 1``, a network that cannot be
    built or traced, or a user's whose output is not one tensor (N, num_classes)."""
    name = network_name(name)
    if not (isinstance(num_classes, numbers.Integral) and num_classes >= 1):
        raise ValueError(f"num_classes must be a whole number >= 1, got {num_classes!r}")
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


def _build_traced(name, num_classes, input_size=224, in_channels=3):
    """A torchvision network, or a user's (FUNCTION(num_classes) of FILE for ``name =
    FILE.py:FUNCTION``), with random weights, made slimmable (see ``get_model``)."""
    import torchvision
    if ":" not in name:
        # GoogLeNet and Inception-v3: no auxiliary heads, no 3-channel input transform
        extra = {"aux_logits": False, "init_weights": True, "transform_input": False} \
            if name in ("googlenet", "inception_v3") else {}
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **extra)
    else:
        path, _, function = name.rpartition(":")
        spec = importlib.util.spec_from_file_location("network_" + os.path.basename(path)[:-3],
                                                      path)
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
        if hasattr(model, "width_groups"):  # groups declared with slimmable's layers: as it is
            model.input_size = getattr(model, "input_size", input_size)
            model.frozen = []
        else:
            model = _converted(model, name, input_size, in_channels)
        return _returns_logits(model, name, num_classes, getattr(model, "in_channels", in_channels))
    return _converted(model, name, input_size, in_channels)


def _returns_logits(model, name, num_classes, in_channels):
    """``model``, a user's network, if it returns one tensor (N, num_classes), as train.py's
    loss needs; else ValueError, one line."""
    size, was_training = model.input_size, model.training
    shape = (2, in_channels, *((size, size) if isinstance(size, int) else size))
    with torch.no_grad():
        output = model.eval()(torch.zeros(shape))
    model.train(was_training)
    if not torch.is_tensor(output) or tuple(output.shape) != (2, num_classes):
        returned = tuple(output.shape) if torch.is_tensor(output) else type(output).__name__
        raise ValueError(f"{name} returns {returned} for 2 images: return one tensor of logits, "
                         f"(N, {num_classes})")
    return model


def _first_conv(model, in_channels, input_size):
    """``(name, conv)`` of the first ``nn.Conv2d`` the image enters (told by running ``model`` in
    eval mode up to it), else of the first declared; ``(None, None)`` when it has none."""
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    entered, was_training = [], model.training

    def stop(conv, inputs):
        entered.extend(pair for pair in convs if pair[1] is conv)
        raise StopIteration  # the rest of the network need not run
    hooks = [conv.register_forward_pre_hook(stop) for _, conv in convs]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, in_channels, input_size, input_size))
    except Exception:  # StopIteration, or a network that cannot run this image: declared order
        pass
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return (entered + convs + [(None, None)])[0]


def _converted(model, name, input_size, in_channels, imagenet=False):
    """``model`` made slimmable as ``get_model`` says (a rebuilt first conv has torch's default
    initialization); ``imagenet``, for the three ImageNet networks: channels in multiples of 8
    and a rebuilt first conv initialized like torchvision. ValueError, one line, if the network
    cannot take ``input_size``."""
    import convert  # imported here: the CIFAR ResNets need only slimmable.py
    stem_name, stem = _first_conv(model, in_channels, input_size)
    if stem is not None and stem.in_channels != in_channels:
        parent, _, attr = stem_name.rpartition(".")
        stem = nn.Conv2d(in_channels, stem.out_channels, stem.kernel_size, stem.stride,
                         stem.padding, stem.dilation, bias=stem.bias is not None,
                         padding_mode=stem.padding_mode)
        setattr(model.get_submodule(parent), attr, stem)
        if imagenet:
            nn.init.kaiming_normal_(stem.weight, mode="fan_out", nonlinearity="relu")
    frozen = []
    try:
        # random, not zeros (a bias-free network maps zeros to zeros whatever its forward does),
        # from a local generator: the global one, and so every weight, stays as it was
        image = torch.randn(1, in_channels, input_size, input_size,
                            generator=torch.Generator().manual_seed(0))
        convert.make_slimmable(model, image, log=frozen.append, divisor=8 if imagenet else 1)
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
    in it; the widths reproduce the published channels (``channels_to_widths`` checks)."""
    net = get_model("slim_mobilenetv2", 1000, width_mult=1.5)
    return net, [(label, channels_to_widths(net, channels_from_flat_list(net, flat)))
                 for label, flat in AUTOSLIM_MOBILENETV2.items()]


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
        os.makedirs("configs", exist_ok=True)
        print("wrote " + ", ".join(write_autoslim_configs()))
    elif sys.argv[1:]:
        print("usage: python models.py [write-configs]: the networks' table, or the published "
              "AutoSlim networks written to configs/", file=sys.stderr)
        sys.exit(2)
    else:
        print_table()
