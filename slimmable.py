"""Slimmable layers: one set of weights, many widths.

A slimmable network (Yu et al., "Slimmable Neural Networks", ICLR'19; "Universally Slimmable
Networks", ICCV'19) runs at any per-layer width by using the *first k* channels of every layer;
width search (Joslim, AutoSlim) then asks which widths to use at each cost. This file holds all
that is about widths and nothing about a particular network, and imports only torch:

- the layers ``SlimConv2d``, ``SlimBatchNorm2d``, ``SlimLinear`` and ``SlimLayerNorm``;
- width groups: layers that must agree on a channel count (tied by a residual add, say) share a
  ``WidthGroup``; a model lists its groups in ``model.width_groups``, and a width configuration
  is one multiplier in (0, 1] per group, applied by ``set_widths``; each layer's input and
  output width is a slot of a group (``ChannelSlot``), or for a layer reading a concatenation
  the slots of its parts (``ChannelConcat``: it gathers the kept channels of each);
- the costs of any number of configurations, counted without running the network: ``macs``
  (the papers' FLOPs), ``params``, ``mmcv_flops`` and peak activation ``memory``;
- ``calibrate_bn`` (BN statistics for one configuration) and ``export`` (a plain torch model);
- channel configuration files: ``config_record``/``save_config`` write one, ``load_config``
  reads it back.

Example (this file alone; models.py declares real networks the same way)::

    import torch, torch.nn as nn, slimmable
    class Tiny(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.width_groups, self.input_size = [], 32       # costs are counted at 32x32
            hidden = slimmable.add_group(self.width_groups, "hidden", 16)
            self.conv = slimmable.SlimConv2d(3, 16, 3, padding=1, out_slot=hidden)
            self.bn = slimmable.SlimBatchNorm2d(16, hidden)
            self.fc = slimmable.SlimLinear(16, num_classes, in_slot=hidden)
        def forward(self, x):                                 # x (N, 3, 32, 32) -> (N, 10)
            return self.fc(self.bn(self.conv(x)).relu().mean((2, 3)))
    net = slimmable.set_widths(Tiny(), 0.5)                   # 8 of the 16 channels
    print(slimmable.macs(net, 0.5), slimmable.params(net, 0.5))    # 221264 322
    small = slimmable.export(net.eval(), 0.5)                 # plain torch layers only
    x = torch.randn(2, 3, 32, 32)
    print((small(x) - net(x)).abs().max())                    # 0, or a rounding error
"""
import contextlib
import copy
import itertools
import json
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


class WidthGroup(NamedTuple):
    """Layers that share one width multiplier. ``channels`` is the full channel count."""
    name: str
    channels: int
    divisor: int = 1


class ChannelSlot(NamedTuple):
    """The width of a layer's input or output: group ``group``'s multiplier applied to
    ``channels`` full channels (the group's own count, except for an SE squeeze layer, which
    applies its block's multiplier to its own smaller count). A layer whose slot is ``None`` has
    a width that never changes (the image input, the logits). ``scale`` features per channel:
    a linear layer after a channel-major flatten of C x H x W takes ``scale = H * W`` features
    of each kept channel, a prefix of the flattened vector."""
    group: int
    channels: int
    divisor: int = 1
    scale: int = 1


class ChannelConcat(NamedTuple):
    """The input of a layer that reads a concatenation (DenseNet, Inception, SqueezeNet's fire
    modules): ``parts`` in order, each a ``ChannelSlot`` or an int (a part of fixed width, in
    features). At a width the layer gathers the kept (leading) features of each part, so its
    kept inputs are an index set rather than a prefix; ``set_widths`` stores it in ``in_index``."""
    parts: tuple


def _parts(slot):
    """A slot's parts: none for ``None``, the slot itself, or the parts of a ``ChannelConcat``."""
    return () if slot is None else slot.parts if isinstance(slot, ChannelConcat) else (slot,)


def _features(part, counts=None):
    """Features of one part of a slot: an int is a fixed width; a ``ChannelSlot`` has
    ``counts[part]`` of them at a width, ``channels * scale`` at full width (``counts`` None)."""
    if not isinstance(part, ChannelSlot):
        return part
    return part.channels * part.scale if counts is None else counts[part]


def slot_parts(slot):
    """The ``ChannelSlot``s a layer's slot (``None``, a ``ChannelSlot`` or a ``ChannelConcat``)
    is made of."""
    return tuple(p for p in _parts(slot) if isinstance(p, ChannelSlot))


def add_group(groups, name, channels, divisor=1):
    """Append a ``WidthGroup`` to ``groups`` and return the slot of its full width (model
    builders). ValueError when ``channels`` is no multiple of ``divisor`` > 1 that rounding keeps:
    the group could not be set to its full width."""
    if (rounded := int(round_channels(1.0, channels, divisor))) != channels:
        raise ValueError(f"group '{name}': its full {channels} channels round to {rounded} under "
                         f"divisor {divisor}; use a divisor that {channels} is a multiple of")
    groups.append(WidthGroup(name, int(channels), divisor))
    return ChannelSlot(len(groups) - 1, int(channels), divisor)


def round_channels(multipliers, full, divisor=1):
    """Channel count(s) for multiplier(s) of ``full`` channels (tensor in, int64 tensor out;
    ``full`` and ``divisor`` may be tensors too, broadcast against ``multipliers``): with
    ``divisor == 1`` (CIFAR ResNets) round half up, at least 1; otherwise (8 for the ImageNet
    networks) torchvision's ``_make_divisible``: the nearest multiple of ``divisor``, at least
    ``divisor``, bumped up one step if that lost more than 10% of the value. Clamped to ``full``
    and monotone, so a cost never decreases when a multiplier grows."""
    full = torch.as_tensor(full, dtype=torch.float64)
    divisor = torch.as_tensor(divisor, dtype=torch.float64)
    value = torch.as_tensor(multipliers, dtype=torch.float64) * full
    channels = (torch.floor((value + divisor / 2) / divisor) * divisor).clamp(min=divisor)
    if (divisor != 1).any():  # the CIFAR ResNets' plain rounding needs no bump
        channels = torch.where((divisor != 1) & (channels < 0.9 * value), channels + divisor,
                               channels)
    return channels.clamp(max=full).long()


# ---------------------------------------------------------------------------------------------
# Layers: torch's parameter names, so a full-width ``state_dict()`` is an ordinary one. The input
# width is read from the input tensor, the output width is set by ``set_widths``.


class SlimConv2d(nn.Conv2d):
    """``nn.Conv2d`` that uses ``weight[:active_out, :c_in]``; c_in is read from the input. A
    depthwise conv (``groups == in_channels == out_channels``) follows its input: it uses the first
    c_in filters with ``groups = c_in``. So does a grouped conv with ``in_channels ==
    out_channels`` (ResNeXt, RegNet), by whole groups: c_in filters, ``groups = c_in //
    group_width``. A conv reading a concatenation gathers its kept input channels (``in_index``)."""

    in_index = None  # set by set_widths for a ChannelConcat input below full width

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1,
                 bias=False, in_slot: Optional[ChannelSlot] = None,
                 out_slot: Optional[ChannelSlot] = None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, groups=groups,
                         bias=bias)
        if groups > 1 and in_channels != out_channels and (in_slot or out_slot):
            raise ValueError("a slimmable grouped conv needs in_channels == out_channels")
        self._set_slots(in_slot, out_slot)

    def _set_slots(self, in_slot, out_slot):
        self.follows_input = self.groups > 1 and self.in_channels == self.out_channels
        self.depthwise = self.follows_input and self.groups == self.in_channels
        self.group_width = self.in_channels // self.groups
        if self.follows_input and in_slot is not None and in_slot.divisor % self.group_width:
            raise ValueError(f"a grouped conv slims by whole groups of {self.group_width} "
                             f"channels: its group needs a divisor that is a multiple of "
                             f"{self.group_width}, not {in_slot.divisor}")
        self.in_slot = in_slot
        self.out_slot = in_slot if self.follows_input else out_slot
        self.active_out = self.out_channels

    def forward(self, x):
        c_in = x.shape[1]
        if self.follows_input:
            sliced = c_in != self.out_channels  # a full-width view would still cost a gradient copy
            weight = self.weight[:c_in] if sliced else self.weight
            bias = self.bias[:c_in] if sliced and self.bias is not None else self.bias
            groups = c_in // self.group_width
        else:
            c_out = self.active_out
            weight = self.weight
            if self.in_index is not None:
                weight = weight[:c_out].index_select(1, self.in_index)
            elif c_out != self.out_channels or c_in != self.in_channels:
                weight = weight[:c_out, :c_in]
            bias = self.bias[:c_out] if self.bias is not None else None
            groups = self.groups
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)


class SlimBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` shared across widths (US-Nets): uses the first c channels of its affine
    parameters and running statistics, c read from the input. Training always normalizes by
    batch statistics; ``calibrate_bn`` recomputes the running ones of a configuration before it
    is evaluated."""

    in_index = None  # set by set_widths for a ChannelConcat input below full width

    def __init__(self, num_features, slot: Optional[ChannelSlot] = None, eps=1e-5, momentum=0.1):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.in_slot = self.out_slot = slot

    def forward(self, x):
        c = x.shape[1]
        if c == self.num_features:
            return super().forward(x)
        # The same bookkeeping as nn.BatchNorm2d.forward, on the kept channels: a prefix, whose
        # views the in-place running-stat update of F.batch_norm writes through into the shared
        # buffers; or, reading a concatenation (DenseNet), ``in_index``, whose gathered copies
        # are written back after the update.
        kept = slice(0, c) if self.in_index is None else self.in_index
        mean, var = self.running_mean[kept], self.running_var[kept]
        factor = 0.0 if self.momentum is None else self.momentum
        updating = self.training and self.track_running_stats
        if updating:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch_stats = self.training or not self.track_running_stats
        weight, bias = (None, None) if self.weight is None else (self.weight[kept], self.bias[kept])
        out = F.batch_norm(x, mean, var, weight, bias, use_batch_stats, factor, self.eps)
        if updating and self.in_index is not None:
            with torch.no_grad():
                self.running_mean.index_copy_(0, kept, mean)
                self.running_var.index_copy_(0, kept, var)
        return out


class SlimLinear(nn.Linear):
    """``nn.Linear`` that uses ``weight[:active_out, :c_in]``; c_in is read from the input (the
    last dim). It gathers its kept inputs (``in_index``) when it reads a concatenation."""

    in_index = None  # set by set_widths for a ChannelConcat input below full width

    def __init__(self, in_features, out_features, bias=True, in_slot: Optional[ChannelSlot] = None,
                 out_slot: Optional[ChannelSlot] = None):
        super().__init__(in_features, out_features, bias=bias)
        self.in_slot, self.out_slot = in_slot, out_slot
        self.active_out = out_features

    def forward(self, x):
        c_in, c_out = x.shape[-1], self.active_out
        if c_in == self.in_features and c_out == self.out_features:
            return super().forward(x)
        bias = self.bias[:c_out] if self.bias is not None else None
        if self.in_index is not None:
            return F.linear(x, self.weight[:c_out].index_select(1, self.in_index), bias)
        return F.linear(x, self.weight[:c_out, :c_in], bias)


class SlimLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over one channel dim (``normalized_shape == (channels,)``) that uses the
    first c weights, c read from the input: ``channel_dim = -1`` normalizes the last dim (a
    channels-last block, ConvNeXt's), ``channel_dim = 1`` the channel dim of an NCHW tensor, as
    ConvNeXt's ``LayerNorm2d`` does (permute to channels-last, normalize, permute back)."""

    def __init__(self, channels, slot: Optional[ChannelSlot] = None, eps=1e-5, channel_dim=-1):
        super().__init__(channels, eps=eps)
        self.in_slot = self.out_slot = slot
        self.channel_dim = channel_dim

    def forward(self, x):
        if self.channel_dim == 1:
            x = x.permute(0, 2, 3, 1)
        c = x.shape[-1]
        weight = self.weight if self.weight is None or c == self.weight.shape[0] else self.weight[:c]
        bias = self.bias if self.bias is None or c == self.bias.shape[0] else self.bias[:c]
        x = F.layer_norm(x, (c,), weight, bias, self.eps)
        return x.permute(0, 3, 1, 2) if self.channel_dim == 1 else x


SLIM_LAYERS = (SlimConv2d, SlimBatchNorm2d, SlimLinear, SlimLayerNorm)


def _unwrap(model):
    """The network inside a DistributedDataParallel (or similar) wrapper."""
    return getattr(model, "module", model)


def slim_layers(model):
    """``[(name, layer)]`` of the slimmable layers of ``model``, in module order (cached)."""
    model = _unwrap(model)
    cached = model.__dict__.get("_slim_layers")
    if cached is None:
        cached = [(n, m) for n, m in model.named_modules() if isinstance(m, SLIM_LAYERS)]
        model.__dict__["_slim_layers"] = cached
    return cached


# ---------------------------------------------------------------------------------------------
# Width configurations


def _is_number(value):
    """An int or a float, not a bool (JSON's true is no width)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def width_matrix(model, widths, one=False):
    """Validate ``widths`` and return a float64 (N, D) tensor of multipliers: ``widths`` is a
    number (a float, a NumPy scalar or a 0-d tensor: the same multiplier for every group, N = 1),
    a sequence of D multipliers (one per group, N = 1) or an (N, D) array/tensor of N
    configurations. ValueError naming the group for a bad value; with ``one``, also for N != 1."""
    groups = _unwrap(model).width_groups
    matrix = torch.as_tensor(widths, dtype=torch.float64)
    if matrix.dim() == 0 and not isinstance(widths, bool):  # JSON's true is no width
        matrix = torch.full((1, len(groups)), float(matrix), dtype=torch.float64)
    elif matrix.dim() == 1:
        matrix = matrix.unsqueeze(0)
    if matrix.dim() != 2 or matrix.shape[1] != len(groups) or (one and len(matrix) != 1):
        raise ValueError(f"expected {'one configuration of ' * one}{len(groups)} width "
                         f"multipliers (one per width group: {', '.join(g.name for g in groups)}),"
                         f" got shape {tuple(matrix.shape)}")
    bad = ~((matrix > 0) & (matrix <= 1))  # also catches NaN
    if bad.any():
        row, col = [int(i) for i in bad.nonzero()[0]]
        raise ValueError(f"width multiplier for group '{groups[col].name}' must be in (0, 1], "
                         f"got {matrix[row, col].item()!r}")
    return matrix


def _slot_channels(slots, matrix):
    """int64 (N, len(slots) + 1): each slot's channel count (times its ``scale``) under each
    configuration, then the constant 1 (the column of a fixed width in the cost terms)."""
    group, channels, divisor, scale = torch.tensor([tuple(s) for s in slots],
                                                   dtype=torch.long).reshape(-1, 4).T
    counts = round_channels(matrix[:, group], channels, divisor) * scale  # (N, slots)
    return torch.cat([counts, torch.ones(len(matrix), 1, dtype=torch.long)], dim=1)


def group_channels(model, widths):
    """``{group name: channels}`` for one configuration."""
    groups = _unwrap(model).width_groups
    slots = [ChannelSlot(i, g.channels, g.divisor) for i, g in enumerate(groups)]
    counts = _slot_channels(slots, width_matrix(model, widths, one=True))[0].tolist()
    return {g.name: c for g, c in zip(groups, counts)}


def channels_to_widths(model, channels):
    """Multipliers that reproduce ``{group name: channels}`` exactly (the inverse of
    ``group_channels``; a whole float such as 8.0 is a count). ValueError, one line, for a group
    missing or unknown or a count the group cannot take (naming the nearest it can)."""
    net = _unwrap(model)
    groups = net.width_groups
    if not isinstance(channels, dict):
        raise ValueError("'channels' must map group names to counts")
    unknown = sorted(set(channels) - {g.name for g in groups})
    missing = [g.name for g in groups if g.name not in channels]
    problems = [f"{what} groups " + ", ".join(found[:4])
                + (f" and {len(found) - 4} more" if len(found) > 4 else "")
                for what, found in (("unknown", unknown), ("missing", missing)) if found]
    if problems:
        raise ValueError(f"the groups do not fit {model_identity(net)['network']}: "
                         + "; ".join(problems))
    for group in groups:
        count, full = channels[group.name], group.channels
        possible = round_channels(torch.arange(1, full + 1) / full, full, group.divisor)
        possible = possible.unique().tolist()  # every count the group can take, ascending
        number = _is_number(count)
        whole = number and (not isinstance(count, float) or count.is_integer())  # 8.0 is 8
        if not (whole and int(count) in possible):
            below = [c for c in possible if number and c < count]
            above = [c for c in possible if number and c > count]
            near = " or ".join(map(str, below[-1:] + above[:1])) or f"{possible[0]}..{possible[-1]}"
            raise ValueError(f"group '{group.name}' has {count!r} channels, which it cannot take "
                             f"(nearest possible: {near}; full width {full})")
    return [channels[g.name] / g.channels for g in groups]  # each at most 1: a possible count


def layer_channels(model, widths, counts=None):
    """``{layer name: [c_in, c_out]}`` of every slimmable layer under ``widths`` (whose
    ``_slot_counts`` are ``counts`` when the caller has them)."""
    counts = _slot_counts(model, widths) if counts is None else counts
    return {name: [_width(m.in_slot, counts, full_in), _width(m.out_slot, counts, full_out)]
            for name, m in slim_layers(model) for full_in, full_out in [_full_in_out(m)]}


def _slots(model):
    """The ``ChannelSlot``s of the slimmable layers and of ``model.channel_parameters``, sorted.
    ``channel_parameters`` is ``{name: (slot, dim)}``: parameters multiplied straight into
    slimmable channels (ConvNeXt's layer_scale, narrowed to them by a converted network's graph)."""
    net = _unwrap(model)
    slots = [slot for _, m in slim_layers(net) for slot in (m.in_slot, m.out_slot)]
    slots += [slot for slot, _ in net.__dict__.get("channel_parameters", {}).values()]
    return sorted({part for slot in slots for part in slot_parts(slot)})


def _slot_counts(model, widths):
    """``{slot: features}`` of every ``ChannelSlot`` of ``_slots(model)`` under ``widths``."""
    slots = _slots(model)
    return dict(zip(slots, _slot_channels(slots, width_matrix(model, widths, one=True))[0].tolist()))


def _width(slot, counts, full):
    """The width in features of ``slot`` given the ``counts`` of its ``ChannelSlot``s; a slot
    ``None`` is a fixed width, ``full``."""
    if isinstance(slot, ChannelSlot):  # most layers: the fast path of set_widths
        return counts[slot]
    return full if slot is None else sum(_features(part, counts) for part in _parts(slot))


def concat_index(slot, counts):
    """The kept features of a ``ChannelConcat`` as an int64 index into its full width (the
    leading ``counts[part]`` features of each part, at the part's offset), or None at full width."""
    pieces, offset = [], 0
    for part in slot.parts:
        pieces.append(torch.arange(offset, offset + _features(part, counts)))
        offset += _features(part)
    index = torch.cat(pieces)
    return None if len(index) == offset else index


def _full_in_out(layer):
    if isinstance(layer, nn.Conv2d):
        return layer.in_channels, layer.out_channels
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    if isinstance(layer, nn.LayerNorm):
        return layer.normalized_shape[0], layer.normalized_shape[0]
    return layer.num_features, layer.num_features


def set_widths(model, widths):
    """Make ``model`` run at ``widths`` (a float, or one multiplier per width group); ValueError
    naming the group for a wrong length or a value outside (0, 1]."""
    counts = _slot_counts(model, widths)
    for name, layer in slim_layers(model):
        if isinstance(layer, (SlimConv2d, SlimLinear)):
            layer.active_out = _width(layer.out_slot, counts, _full_in_out(layer)[1])
        if isinstance(layer.in_slot, ChannelConcat):
            index = concat_index(layer.in_slot, counts)
            layer.in_index = None if index is None else index.to(layer.weight.device)
    _unwrap(model).current_widths = widths
    return model


# ---------------------------------------------------------------------------------------------
# Costs. Each is a sum of terms ``coefficient * c[a] * c[b]``, c the channel counts of the
# slots, so the costs of N configurations are one (N, terms) product. Plain torch layers count
# too, at their fixed width: an exported model is counted as it is.

COUNTED_LAYERS = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.LayerNorm)
# The layers of layer-by-layer execution that ``memory`` counts: convs, linears, pooling.
MEMORY_LAYERS = (nn.Conv2d, nn.Linear, nn.modules.pooling._MaxPoolNd,
                 nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
                 nn.modules.pooling._AdaptiveMaxPoolNd)
# The modules besides those that mmcv's FLOPs counter counts (``mmcv_flops``): per element.
MMCV_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU)
MMCV_POOLING = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d)


def image_channels(model):
    """Channels of the image the model takes: ``model.in_channels`` when the network declares it
    (every network of models.py does), else the first slimmable conv's input."""
    model = _unwrap(model)
    if getattr(model, "in_channels", None) is not None:
        return int(model.in_channels)
    first = next((m for _, m in slim_layers(model) if isinstance(m, SlimConv2d)), None)
    if first is None:
        raise ValueError("the model has no SlimConv2d: give it an in_channels attribute")
    return first.in_channels


def _columns(layer, index):
    """``(outputs, inputs)``, each a list of ``(column, k)``: ``layer`` has the sum over outputs
    of ``c[column] * k`` output channels, each computed with the sum over inputs of
    ``c[column] * k`` weights; c are the slot channel counts, ``index`` maps a slot to its column
    and a fixed width (None) to the column of the constant 1. A BN, a LayerNorm or a conv that
    follows its input (depthwise, grouped) has a fixed number of weights per output channel."""
    full_in, full_out = _full_in_out(layer)
    in_slot, out_slot = getattr(layer, "in_slot", None), getattr(layer, "out_slot", None)
    kernel = layer.kernel_size[0] * layer.kernel_size[1] if isinstance(layer, nn.Conv2d) else 1
    if getattr(layer, "follows_input", False) or isinstance(layer, (nn.BatchNorm2d, nn.LayerNorm)):
        inputs = [(index[None], kernel * getattr(layer, "group_width", 1))]
    elif in_slot is None:
        inputs = [(index[None], kernel * (full_in // getattr(layer, "groups", 1)))]
    else:
        inputs = _slot_columns(in_slot, index, kernel)
    outputs = [(index[None], full_out)] if out_slot is None else _slot_columns(out_slot, index, 1)
    return outputs, inputs


def _slot_columns(slot, index, k):
    """``[(column, k)]`` of a slot, a part of fixed width being ``k`` times its features."""
    return [(index[p], k) if isinstance(p, ChannelSlot) else (index[None], k * p)
            for p in _parts(slot)]


def _terms(tensor, slot, index, dim=1):
    """A tensor's elements as terms ``[(coefficient, column)]``: elements per channel times the
    column of each part of ``slot`` along ``dim``; all elements times the column of the constant
    1 when its width never changes (``slot`` None)."""
    if slot is None:
        return [(tensor.numel(), index[None])]
    full = sum(map(_features, _parts(slot)))
    if full != tensor.shape[dim]:
        raise ValueError(f"a tensor of {tensor.shape[dim]} channels follows a layer of {full}; "
                         f"declare the layer's slots")
    per_channel = tensor.numel() // tensor.shape[dim]
    return [(per_channel * k, column) for column, k in _slot_columns(slot, index, 1)]


def _call_slot(module, latest, call):
    """``(slot, dim)``: the width of what ``module`` made in its call number ``call``, along dim
    ``dim``: its ``out_slot`` (a counted layer), its ``call_slots`` entry (set by ``convert``,
    one per call) or else ``latest``, the out_slot of the latest counted layer."""
    slot = getattr(module, "out_slot", None) if isinstance(module, COUNTED_LAYERS) else latest
    dim = getattr(module, "channel_dim", -1) if isinstance(module, (nn.Linear, nn.LayerNorm)) else 1
    if "call_slots" in module.__dict__:
        slot, dim = module.call_slots[call % len(module.call_slots)]
    return slot, dim


def _probe(model, image, index):
    """Run ``model`` at full width on ``image`` (one image), hooks writing down as terms
    (coefficient, a, b) the MACs of each conv and linear call, what ``mmcv_flops`` adds, and per
    memory layer in execution order the tensors alive (a fourth row: the layer): three lists."""
    macs_terms, mmcv_terms, memory_terms, held = [], [], [], []  # held: (block, tensor, terms)
    latest, calls = [None], {}  # latest: out_slot of the latest counted layer that ran

    def before(block, inputs):  # a hand-written block that keeps its input (a residual)
        held.append((block, inputs[0], _terms(inputs[0], latest[0], index)))

    def after(m, inputs, output):
        counted = isinstance(m, COUNTED_LAYERS)
        calls[m] = call = calls.get(m, -1) + 1  # convert gives some modules one entry per call
        slot, dim = _call_slot(m, latest[0], call)
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            _, inputs_k = _columns(m, index)
            macs_terms.extend((elements * kb, a, b) for elements, a in _terms(output, slot, index, dim)
                              for b, kb in inputs_k)
            if isinstance(m, nn.Conv2d) and m.bias is not None:  # mmcv skips a linear's bias
                mmcv_terms.extend((e, a, index[None]) for e, a in _terms(output, slot, index, dim))
        elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm) + MMCV_ELEMENTWISE + MMCV_POOLING):
            # mmcv counts the input elements, twice for an affine BN or LayerNorm
            affine = getattr(m, "affine", False) or getattr(m, "elementwise_affine", False)
            in_slot = getattr(m, "in_slot", slot) if counted else slot
            mmcv_terms.extend((2 * e if affine else e, a, index[None])
                              for e, a in _terms(inputs[0], in_slot, index, dim))
        if isinstance(m, MEMORY_LAYERS):
            ptrs = {inputs[0].untyped_storage().data_ptr(), output.untyped_storage().data_ptr()}
            in_slot = getattr(m, "in_slot", None) if counted else slot
            alive = _terms(inputs[0], in_slot, index, dim) + _terms(output, slot, index, dim)
            listed = m.__dict__.get("kept_by_call")  # a converted network's, read off its graph
            alive += [t for tensor, s, d in (listed[call % len(listed)] if listed else ())
                      for t in _terms(tensor, s, index, d)]
            alive += [t for _, tensor, ts in held if tensor.untyped_storage().data_ptr() not in ptrs
                      for t in ts]
            layer = memory_terms[-1][3] + 1 if memory_terms else 0
            memory_terms.extend((elements, a, index[None], layer) for elements, a in alive)
        if counted:
            latest[0] = slot
        held[:] = [entry for entry in held if entry[0] is not m]  # a block releases its input

    hooks = [m.register_forward_hook(after) for m in model.modules()]
    hooks += [m.register_forward_pre_hook(before) for m in model.modules()
              if "input" in getattr(m, "keeps_alive", ())]
    previous, was_training = getattr(model, "current_widths", 1.0), model.training
    set_widths(model, 1.0)
    try:
        with torch.no_grad():
            model.eval()(image)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
        set_widths(model, previous)
    return macs_terms, mmcv_terms, memory_terms


def _cost_terms(model):
    """``(slots, macs, params, mmcv_flops, memory)``: the slots, then per cost an int64 tensor of
    rows (coefficient, a, b), a term being ``coefficient * c[a] * c[b]`` with c the slot channel
    counts and column ``len(slots)`` the constant 1; memory has a fourth row, the term's layer.
    Parameters are counted from the layers, the rest by one ``_probe`` of a zero image (1, image
    channels, input_size, input_size) in the model's dtype, on its device; cached for that
    shape, so changing ``model.input_size`` or ``model.in_channels`` rebuilds it (memory, though,
    counts a converted network's ``kept_by_call`` at the shapes they were listed at; ``memory``
    refuses another size)."""
    model = _unwrap(model)
    size = model.input_size  # an int, or (height, width) for a network converted at that size
    shape = (1, image_channels(model), *((size, size) if isinstance(size, int) else size))
    cached = model.__dict__.get("_cost_terms")
    if cached is not None and cached[0] == shape:
        return cached[1]
    layers = [m for m in model.modules() if isinstance(m, COUNTED_LAYERS)]
    slots = _slots(model)  # a plain torch layer has none: its width is fixed
    index = {**{s: i for i, s in enumerate(slots)}, None: len(slots)}
    params_terms = []
    for m in layers:
        outputs, inputs = _columns(m, index)
        if m.weight is not None:  # None for a BN without affine parameters
            params_terms.extend((ka * kb, a, b) for a, ka in outputs for b, kb in inputs)
        if m.bias is not None:
            params_terms.extend((ka, a, len(slots)) for a, ka in outputs)
    for name, (slot, dim) in model.__dict__.get("channel_parameters", {}).items():
        params_terms.extend((elements, a, len(slots))
                            for elements, a in _terms(model.get_parameter(name), slot, index, dim))
    counted = {id(p) for m in layers for p in m.parameters(recurse=False)} | {
        id(model.get_parameter(name)) for name in model.__dict__.get("channel_parameters", {})}
    params_terms.extend((p.numel(), len(slots), len(slots)) for p in model.parameters()
                        if id(p) not in counted)  # any other (a shared PReLU slope): fixed
    weight = next(model.parameters())
    macs_terms, mmcv_terms, memory_terms = _probe(
        model, torch.zeros(shape, dtype=weight.dtype, device=weight.device), index)
    terms = (slots, *(torch.tensor(t, dtype=torch.long).reshape(-1, 3).T
                      for t in (macs_terms, params_terms, mmcv_terms + macs_terms)),
             torch.tensor(memory_terms, dtype=torch.long).reshape(-1, 4).T)
    model.__dict__["_cost_terms"] = (shape, terms)
    return terms


def _evaluate_terms(model, widths, which):
    """The cost ``which`` of ``widths``, returned as ``macs`` says."""
    slots, macs_terms, params_terms, mmcv_terms, _ = _cost_terms(model)
    if which == "memory":
        total = memory_by_layer(model, widths).max(dim=1).values
    else:
        coef, a, b = {"macs": macs_terms, "params": params_terms, "mmcv_flops": mmcv_terms}[which]
        channels = _slot_channels(slots, width_matrix(model, widths))
        total = (channels[:, a] * channels[:, b] * coef).sum(dim=1)
    if torch.as_tensor(widths).dim() <= 1:  # one configuration
        return int(total[0])
    return total if torch.is_tensor(widths) else total.numpy()


def macs(model, widths=1.0):
    """Multiply-accumulates of conv and linear layers for one image at ``model.input_size``:
    what the slimmable papers (S-Nets, US-Nets, AutoSlim, Joslim) call FLOPs. One configuration
    (see ``width_matrix``) -> int; an (N, D) array -> N counts (a NumPy array, or a tensor for a
    tensor input); ValueError for bad widths. ``params``, ``mmcv_flops`` and ``memory`` take and
    return the same."""
    return _evaluate_terms(model, widths, "macs")


def params(model, widths=1.0):
    """Parameter count of the subnet at ``widths`` (conv/linear weights and biases, BN and
    LayerNorm affine, narrowed ``channel_parameters``; any other parameter whole)."""
    return _evaluate_terms(model, widths, "params")


def mmcv_flops(model, widths=1.0):
    """FLOPs for one image at ``model.input_size`` as mmcv 1.x's counter counts them
    (``get_model_complexity_info``; what mmrazor 0.x and mmcls report, e.g. "530M / 320M / 220M"
    for the AutoSlim-MobileNetV2 networks of 505M / 305M / 207M MACs). Per module call: a conv,
    its MACs plus its output elements if it has a bias; a linear layer, its MACs; BatchNorm, its
    input elements, twice if affine; ReLU, ReLU6, LeakyReLU, PReLU, ELU, their output elements;
    max and average pooling (adaptive too), their input elements; anything else (Hardswish,
    Sigmoid, residual additions, SE scaling), 0. mmcv sees modules only; the networks of
    models.py run every activation and pooling as a module, as mmcls's do. MobileNetV2: 6.5% above
    ``macs`` at full width (1.0x), 4.8-7.1% for the three AutoSlim networks."""
    return _evaluate_terms(model, widths, "mmcv_flops")


def memory(model, widths=1.0):
    """Peak activation memory of inference for one image at ``model.input_size``, in elements
    (times 4 bytes in float32, 1 in int8); weights are not included.

    The peak over the layers of layer-by-layer execution (Sandler et al., MobileNetV2, Sec. 5.1;
    MCUNet's "peak SRAM", Lin et al. NeurIPS'20) of the tensors alive while a layer (a conv, a
    linear or a pooling module; BN and activations run in place) runs: its input, its output and
    the tensors kept for later: a converted network's, listed per call (``kept_by_call``, each
    tensor its graph makes before the call and uses after it); a hand-written block's input when
    it declares ``keeps_alive = ("input",)`` (a residual addition), as wide as the latest conv,
    linear or norm layer's output. A tensor counts once. MobileNetV2 at 224, full width:
    1,505,280 elements (5.7 MiB in float32) at the stride-2 depthwise conv of ``features.2``
    (96x112x112 in, 96x56x56 out); MCUNetV2 (NeurIPS'21, Fig. 1) reports 1,404,928 (1372 kB in
    int8), our value at the expansion before it: its engine runs depthwise convs in place.
    ValueError too when a tensor's width cannot be told from the slots the network declares,
    and for a converted network whose ``input_size`` is no longer its ``kept_input_size``: its
    kept tensors are listed at the size it was converted at (convert it again at the other)."""
    return _evaluate_terms(model, widths, "memory")


def memory_by_layer(model, widths=1.0):
    """The elements alive while each layer runs (see ``memory``), layers in execution order:
    an int64 tensor (N, layers), N = 1 for one configuration. Its row maximum is ``memory``;
    its argmax says which layer sets the peak."""
    net = _unwrap(model)
    if getattr(net, "kept_input_size", net.input_size) != net.input_size:
        raise ValueError(f"memory of a converted network is counted at the input size it was "
                         f"converted at, {net.kept_input_size}: convert it again at "
                         f"{net.input_size} (models.get_model(..., input_size=...))")
    slots, _, _, _, (coef, a, _, layer) = _cost_terms(model)
    channels = _slot_channels(slots, width_matrix(model, widths))
    per_layer = torch.zeros(len(channels), int(layer.max()) + 1, dtype=torch.long)
    return per_layer.index_add_(1, layer, channels[:, a] * coef)


# The cost axes a width search can be run against: name -> function(model, widths) with the
# signature and return types of ``macs``. train.py --cost, evaluate.py and search.py read this.
COSTS = {"macs": macs, "params": params, "mmcv_flops": mmcv_flops, "memory": memory}


def cost(model, widths=1.0, kind="macs"):
    """The cost ``kind`` (a key of ``COSTS``) of ``widths``; ValueError for an unknown kind."""
    if kind not in COSTS:
        raise ValueError(f"unknown cost {kind!r}: one of {', '.join(COSTS)}")
    return COSTS[kind](model, widths)


# ---------------------------------------------------------------------------------------------
# BN calibration and export


def calibrate_bn(model, batches, norms=None, forward=None):
    """Recompute the running statistics of the BNs ``norms`` (default: every BN) for the current
    widths, as the exact average of the per-batch mean and (unbiased) variance over ``batches``
    (tensors or (input, target) pairs); the other BNs normalize with their own running statistics
    and keep them. ``forward(inputs)`` runs one batch (default: the model), e.g. a forward that
    starts at a middle block, as search.py's scorer does when only later BNs change.

    US-Nets and Joslim do this before evaluating any subnet: the running statistics left by
    training mix all widths and are wrong for each one of them. Returns the number of batches;
    ValueError, every statistic untouched, when ``batches`` is empty.
    """
    batches = iter(batches)
    first = next(batches, None)
    if first is None:
        raise ValueError("calibrate_bn needs at least one batch")
    net = _unwrap(model)
    every = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    norms = every if norms is None else list(norms)
    momenta = [m.momentum for m in norms]
    was_training = net.training
    device = next(net.parameters()).device
    net.train()
    for m in every:
        m.train(m in norms)  # the others normalize with their running statistics
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average instead of an exponential one
    count = 0
    with torch.no_grad():
        for batch in itertools.chain([first], batches):
            inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
            (forward or net)(inputs.to(device, non_blocking=True))
            count += 1
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    net.train(was_training)
    return count


@contextlib.contextmanager
def batch_statistics(model):
    """Evaluate with every BN normalizing by the current batch's own statistics, leaving the
    running statistics untouched, and everything else (dropout) in eval mode.

    How Joslim re-scores its history and AutoSlim's ``--bn batch`` search score a configuration
    without calibrating BN for it: fair when the batch is large enough.
    """
    net = _unwrap(model)
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    was_training = net.training
    net.eval()
    for m in norms:
        m.train()
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged
    try:
        with torch.no_grad():
            yield net
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)
        net.train(was_training)


def model_identity(model):
    """What a channel configuration must agree with: the network's name and its width multiplier
    (they fix each group's full channel count), and, for information, its input size, image
    channels and number of classes."""
    net = _unwrap(model)
    linears = [m for _, m in slim_layers(net) if isinstance(m, SlimLinear)]
    return {"network": getattr(net, "network_name", type(net).__name__),
            "width_mult": float(getattr(net, "width_mult", 1.0)),
            "input_size": getattr(net, "input_size", None),
            "in_channels": getattr(net, "in_channels", None),
            "num_classes": linears[-1].out_features if linears else None}


def config_record(model, widths, **extra):
    """One width configuration as a JSON-ready dict: the model's identity (``model_identity``),
    widths and channels per group, channels per layer, MACs, params, mmcv-style FLOPs
    (``mmcv_flops``) and any ``extra`` fields; ``load_config`` reads it back."""
    net = _unwrap(model)
    widths = width_matrix(net, widths, one=True)[0].tolist()
    return {**model_identity(net), "widths": widths, "channels": group_channels(net, widths),
            "macs": macs(net, widths), "params": params(net, widths),
            "mmcv_flops": mmcv_flops(net, widths), **extra, "layers": layer_channels(net, widths)}


def target_label(cost, millions):
    """``<cost>_<M>M``, the name of a configuration found for a target of M millions of ``cost``
    (search.py's file names, evaluate.py's tables), M in 4 significant digits, not decimals, so
    small costs such as CIFAR memory peaks stay apart: ("macs", 20) -> macs_20M, ("mmcv_flops",
    12.5) -> mmcv_flops_12.5M, ("memory", 0.024576) -> memory_0.02458M; whole from 1000 up."""
    return f"{cost}_{f'{millions:.0f}' if millions >= 1000 else f'{millions:.4g}'}M"


def save_config(path, model, widths, **extra):
    """Write ``config_record(model, widths, **extra)`` to ``path`` as JSON; returns the record.
    An ``extra`` JSON cannot hold (a NumPy integer, say) raises TypeError before ``path`` is
    touched."""
    record = config_record(model, widths, **extra)
    text = json.dumps(record, indent=1)
    with open(path, "w") as handle:
        handle.write(text)
    return record


def load_config(path, model):
    """Read a configuration written by ``save_config``, or any JSON object with ``channels`` (a
    count per group) or ``widths`` (one multiplier per group), or both if they agree; returns
    ``(widths, record)``, widths that reproduce the channels exactly. Raises ValueError with a
    one-line reason: an unreadable file, another network or width multiplier, a group missing
    or unknown, a count the group cannot take, channels and widths that disagree, a malformed
    value."""
    try:
        with open(path) as handle:
            record = json.load(handle)
    except (OSError, ValueError, RecursionError) as error:  # RecursionError: nested too deep
        raise ValueError(f"cannot read channel config {path}: {str(error)[:200]}") from None
    if not isinstance(record, dict) or not {"channels", "widths"} & set(record):
        raise ValueError(f"channel config {path} is not a JSON object with 'channels' or 'widths'")
    net = _unwrap(model)
    identity = model_identity(net)
    # A model built without models.get_model has no network name to compare with.
    for key in ("network", "width_mult") if hasattr(net, "network_name") else ("width_mult",):
        if key in record and record[key] != identity[key]:
            raise ValueError(f"channel config {path} is for {key} {record[key]!r}, this model "
                             f"has {identity[key]!r}")
    widths, groups = record.get("widths"), net.width_groups
    try:
        if "widths" in record:
            if not (isinstance(widths, list) and len(widths) == len(groups)
                    and all(map(_is_number, widths))):
                raise ValueError(f"'widths' must be a list of {len(groups)} numbers in (0, 1], "
                                 f"one per width group")
            widths = width_matrix(net, widths)[0].tolist()
        if "channels" in record:
            exact, wanted = channels_to_widths(net, record["channels"]), record["channels"]
            if widths is not None:  # other multipliers may give the same channels: compare those
                given = group_channels(net, widths)
                name = next((g.name for g in groups if given[g.name] != wanted[g.name]), None)
                if name is not None:
                    raise ValueError(f"its 'channels' and 'widths' disagree (group '{name}': "
                                     f"{int(wanted[name])} and {given[name]} channels)")
            widths = exact  # reproduces ``wanted`` exactly
    except ValueError as error:
        raise ValueError(f"channel config {path}: {error}") from None
    return widths, record


def export(model, widths):
    """A copy of ``model`` at ``widths`` whose slimmable layers are replaced by plain torch.nn
    layers holding the sliced weights and BN statistics (AutoSlim's "split checkpoint"), with
    exactly ``params(model, widths)`` parameters, the dtype and device of ``model``'s weights and,
    in eval mode, the outputs of ``model`` at ``widths``. Rebuild a saved one with
    ``export(get_model(name, num_classes), widths).load_state_dict(state)``."""
    source = _unwrap(model)
    counts = _slot_counts(source, widths)
    channels = layer_channels(source, widths, counts)
    # Deep-copy everything except the big slimmable layers, which are rebuilt below.
    memo = {id(m): None for _, m in slim_layers(source)}
    static = copy.deepcopy(source, memo)
    for key in ("_slim_layers", "_cost_terms", "current_widths", "channel_parameters"):
        static.__dict__.pop(key, None)
    for name, layer in slim_layers(source):
        parent, _, attr = name.rpartition(".")
        index = concat_index(layer.in_slot, counts) \
            if isinstance(layer.in_slot, ChannelConcat) else None
        setattr(static.get_submodule(parent), attr, _static_copy(layer, *channels[name], index))
    for name, module in static.named_modules():  # a converted network's widths, now fixed
        module.__dict__.pop("call_slots", None)
        listed = source.get_submodule(name).__dict__.get("kept_by_call")
        if listed:
            module.kept_by_call = [[(kept.narrow(dim, 0, _width(slot, counts, kept.shape[dim])),
                                     None, dim) for kept, slot, dim in call] for call in listed]
    for name, (slot, dim) in source.__dict__.get("channel_parameters", {}).items():
        parent, _, attr = name.rpartition(".")
        full = static.get_parameter(name)
        kept = full.detach().narrow(dim, 0, counts[slot]).clone()
        setattr(static.get_submodule(parent), attr, nn.Parameter(kept, full.requires_grad))
    static.train(source.training)
    return static


def _static_copy(layer, c_in, c_out, index=None):
    """The plain torch.nn layer of ``c_in`` -> ``c_out`` channels that ``layer`` runs as, holding
    the leading block of each of its parameters and buffers, after gathering the input channels
    ``index`` (a layer reading a concatenation). A converted LayerNorm becomes a copy of itself
    given back the class it was converted from (a user's subclass keeps its own attributes)."""
    if isinstance(layer, SlimBatchNorm2d):
        new = nn.BatchNorm2d(c_out, eps=layer.eps, momentum=layer.momentum, affine=layer.affine,
                             track_running_stats=layer.track_running_stats)
    elif isinstance(layer, SlimLayerNorm):
        new = copy.deepcopy(layer)
        new.__class__, new.normalized_shape = getattr(layer, "plain_class", nn.LayerNorm), (c_out,)
        for key in ("in_slot", "out_slot", "channel_dim", "plain_class"):
            new.__dict__.pop(key, None)
        for tensors in (new._parameters, new._buffers):  # each of the channels' size: c_out
            for key, tensor in tensors.items():
                if tensor is not None and tensor.shape[:1] == layer.normalized_shape:
                    kept = tensor.detach()[:c_out].clone()
                    tensors[key] = nn.Parameter(kept, tensor.requires_grad) \
                        if isinstance(tensor, nn.Parameter) else kept
    elif isinstance(layer, SlimLinear):
        new = nn.Linear(c_in, c_out, bias=layer.bias is not None)
    else:
        groups = c_out // layer.group_width if layer.follows_input else layer.groups
        new = nn.Conv2d(c_in, c_out, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                        groups=groups, bias=layer.bias is not None, padding_mode=layer.padding_mode)
    gather_dim = 1 if isinstance(layer, (SlimConv2d, SlimLinear)) else 0  # the input dim
    source = layer.state_dict()
    with torch.no_grad():
        for key, value in new.state_dict().items():  # weight[:c_out, :c_in // groups], ...
            tensor = source[key]
            if index is not None and tensor.dim() > gather_dim:
                tensor = tensor.index_select(gather_dim, index.to(tensor.device))
            value.copy_(tensor[tuple(slice(0, size) for size in value.shape)])
    new.train(layer.training)
    like = next((t for t in source.values() if t.is_floating_point()), None)  # none: a plain LN
    return new if like is None else new.to(like.device, like.dtype)  # as the source: half...
