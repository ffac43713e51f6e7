"""Slimmable layers: one set of weights, many widths.

A slimmable network (Yu et al., "Slimmable Neural Networks", ICLR'19; "Universally Slimmable
Networks", ICCV'19) runs at any per-layer width by using the *first k* channels of every layer.
Width search (Joslim, AutoSlim) then asks which widths to use at each cost. This file holds
everything that is about widths and nothing that is about a particular network:

- ``SlimConv2d``, ``SlimBatchNorm2d``, ``SlimLinear``: subclasses of the torch layers whose forward
  slices the weights to the active width. Parameter and buffer names are torch's, so a full-width
  ``state_dict()`` is an ordinary one. The input width is read from the input tensor; the output
  width is set by ``set_widths``. BN is *shared* across widths and sliced (US-Nets); training
  always uses batch statistics, and ``calibrate_bn`` recomputes the running statistics of one
  configuration before it is evaluated.
- Width groups. Layers that must agree on a channel count (tied by a residual add, or a depthwise
  conv and the layer feeding it) share one ``WidthGroup``. A model lists its groups in
  ``model.width_groups``; a width configuration is one multiplier in (0, 1] per group.
  Each layer names the ``ChannelSlot`` of its input and output: a slot is a group plus a full
  channel count (usually the group's own; an SE squeeze layer uses its block's multiplier on its
  own smaller count). ``None`` means the width never changes (the image input, the logits).
- Rounding. ``channels = round_channels(multiplier, full, divisor)``. With ``divisor == 1``
  (CIFAR ResNets) it is round-half-up of ``multiplier * full``, at least 1. With ``divisor == 8``
  (ImageNet networks) it is torchvision's ``_make_divisible``: the nearest multiple of 8, at least
  8, bumped up one step if that lost more than 10%. Both are clamped to ``full`` and monotone, so
  the cost of a configuration never decreases when a multiplier grows.
- Cost. ``macs`` and ``params`` are analytic: every conv/linear contributes
  ``coefficient * c_in * c_out`` (a bilinear form in the slot channel counts), so the cost of N
  configurations is one (N, terms) product, with no forward pass. Plain torch layers count at
  their fixed width, so an exported model is counted as it is. "FLOPs" in the slimmable
  literature are these multiply-accumulates of conv and linear layers. ``mmcv_flops`` is the
  other convention, mmcv's counter (mmrazor, mmcls): MACs plus BN, activations and pooling,
  about 5% more on MobileNetV2 (AutoSlim's 505M network is mmrazor's "530M").
- Memory. ``memory`` is the peak activation memory of layer-by-layer inference, in elements:
  per layer a sum of (pixels x one slot's channels), so also analytic; residual blocks and
  squeeze-excitation declare the tensors they keep alive in ``keeps_alive``.
- ``export``: an ordinary model whose leaves are plain ``nn.Conv2d``/``nn.BatchNorm2d``/``nn.Linear``
  holding the sliced weights and statistics (AutoSlim's "split checkpoint").

Example::

    import torch, models, slimmable
    net = models.get_model("slim_resnet20", num_classes=10)
    slimmable.set_widths(net, 0.5)                      # every group at half width
    print(slimmable.macs(net, 0.5), slimmable.params(net, 0.5))
    small = slimmable.export(net.eval(), 0.5)           # plain torch layers only
    x = torch.randn(2, 3, 32, 32)
    print((small(x) - net(x)).abs().max())              # ~1e-7
"""
import contextlib
import copy
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
    """The width of one layer input or output: group ``group`` applied to ``channels`` full channels."""
    group: int
    channels: int
    divisor: int = 1


def add_group(groups, name, channels, divisor=1):
    """Append a ``WidthGroup`` to ``groups`` and return the slot of its full width (model builders)."""
    groups.append(WidthGroup(name, int(channels), divisor))
    return ChannelSlot(len(groups) - 1, int(channels), divisor)


def divisible(values, divisor):
    """torchvision's ``_make_divisible`` on a tensor: the nearest multiple of ``divisor``, at least
    ``divisor``, bumped up one step if that lost more than 10% of the value."""
    values = torch.as_tensor(values, dtype=torch.float64)
    rounded = (torch.floor((values + divisor / 2) / divisor) * divisor).clamp(min=divisor)
    return torch.where(rounded < 0.9 * values, rounded + divisor, rounded)


def round_channels(multipliers, full, divisor=1):
    """Channel count(s) for multiplier(s) of ``full`` channels (tensor in, int64 tensor out)."""
    value = torch.as_tensor(multipliers, dtype=torch.float64) * full
    if divisor == 1:
        channels = torch.floor(value + 0.5).clamp(min=1)
    else:
        channels = divisible(value, divisor)
    return channels.clamp(max=full).long()


# ---------------------------------------------------------------------------------------------
# Layers


class SlimConv2d(nn.Conv2d):
    """``nn.Conv2d`` that uses ``weight[:active_out, :c_in]``; c_in is read from the input.

    A depthwise conv (``groups == in_channels == out_channels``) follows its input: it uses the
    first c_in filters with ``groups = c_in``.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1,
                 bias=False, in_slot: Optional[ChannelSlot] = None,
                 out_slot: Optional[ChannelSlot] = None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, groups=groups,
                         bias=bias)
        self.depthwise = groups > 1 and groups == in_channels == out_channels
        if groups > 1 and not self.depthwise:
            raise ValueError("SlimConv2d supports dense or depthwise convolutions only")
        self.in_slot = in_slot
        self.out_slot = in_slot if self.depthwise else out_slot
        self.active_out = out_channels

    def forward(self, x):
        c_in = x.shape[1]
        if self.depthwise:
            sliced = c_in != self.out_channels  # a full-width view would still cost a gradient copy
            weight = self.weight[:c_in] if sliced else self.weight
            bias = self.bias[:c_in] if sliced and self.bias is not None else self.bias
            groups = c_in
        else:
            c_out = self.active_out
            weight = self.weight
            if c_out != self.out_channels or c_in != self.in_channels:
                weight = weight[:c_out, :c_in]
            bias = self.bias[:c_out] if self.bias is not None else None
            groups = 1
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)


class SlimBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` shared across widths: uses the first c channels of its affine
    parameters and running statistics, c read from the input."""

    def __init__(self, num_features, slot: Optional[ChannelSlot] = None, eps=1e-5, momentum=0.1):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.in_slot = self.out_slot = slot

    def forward(self, x):
        c = x.shape[1]
        if c == self.num_features:
            return super().forward(x)
        # The same bookkeeping as nn.BatchNorm2d.forward, on channel-prefix views; the in-place
        # running-stat update of F.batch_norm writes through the views into the shared buffers.
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch_stats = self.training or not self.track_running_stats
        return F.batch_norm(x, self.running_mean[:c], self.running_var[:c], self.weight[:c],
                            self.bias[:c], use_batch_stats, factor, self.eps)


class SlimLinear(nn.Linear):
    """``nn.Linear`` that uses ``weight[:active_out, :c_in]``; c_in is read from the input."""

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
        return F.linear(x, self.weight[:c_out, :c_in], bias)


SLIM_LAYERS = (SlimConv2d, SlimBatchNorm2d, SlimLinear)


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


def width_matrix(model, widths):
    """Validate ``widths`` and return a float64 (N, D) tensor of multipliers (N = 1 for one config).

    ``widths`` is a float (the same multiplier for every group), a sequence of D multipliers, or
    an (N, D) array/tensor of N configurations.
    """
    groups = _unwrap(model).width_groups
    if isinstance(widths, (int, float)) and not isinstance(widths, bool):
        matrix = torch.full((1, len(groups)), float(widths), dtype=torch.float64)
    else:
        matrix = torch.as_tensor(widths, dtype=torch.float64)
        if matrix.dim() == 1:
            matrix = matrix.unsqueeze(0)
        if matrix.dim() != 2 or matrix.shape[1] != len(groups):
            raise ValueError(f"expected {len(groups)} width multipliers (one per width group: "
                             f"{', '.join(g.name for g in groups)}), got shape {tuple(matrix.shape)}")
    bad = ~((matrix > 0) & (matrix <= 1))  # also catches NaN
    if bad.any():
        row, col = [int(i) for i in bad.nonzero()[0]]
        raise ValueError(f"width multiplier for group '{groups[col].name}' must be in (0, 1], "
                         f"got {matrix[row, col].item()!r}")
    return matrix


def _slot_channels(slots, matrix):
    """int64 (N, len(slots)) channel counts of each slot under each configuration."""
    columns = [round_channels(matrix[:, s.group], s.channels, s.divisor) for s in slots]
    return torch.stack(columns, dim=1) if columns else torch.zeros(len(matrix), 0, dtype=torch.long)


def group_channels(model, widths):
    """``{group name: channels}`` for one configuration."""
    groups = _unwrap(model).width_groups
    matrix = width_matrix(model, widths)
    slots = [ChannelSlot(i, g.channels, g.divisor) for i, g in enumerate(groups)]
    counts = _slot_channels(slots, matrix)[0].tolist()
    return {g.name: c for g, c in zip(groups, counts)}


def channels_to_widths(model, channels):
    """Multipliers that reproduce ``{group name: channels}`` exactly (the inverse of group_channels)."""
    groups = _unwrap(model).width_groups
    missing = [g.name for g in groups if g.name not in channels]
    if missing:
        raise ValueError(f"channel config lacks groups: {', '.join(missing)}")
    return [min(1.0, channels[g.name] / g.channels) for g in groups]


def _layer_channels(model, widths):
    """``{layer: (c_in, c_out)}`` for one configuration, from the declared slots."""
    layers = slim_layers(model)
    slots = sorted({s for _, m in layers for s in (m.in_slot, m.out_slot) if s is not None})
    counts = dict(zip(slots, _slot_channels(slots, width_matrix(model, widths))[0].tolist()))
    result = {}
    for _, m in layers:
        full_in, full_out = _full_in_out(m)
        c_in = counts[m.in_slot] if m.in_slot is not None else full_in
        c_out = counts[m.out_slot] if m.out_slot is not None else full_out
        result[m] = (c_in, c_out)
    return result


def _full_in_out(layer):
    if isinstance(layer, nn.Conv2d):
        return layer.in_channels, layer.out_channels
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    return layer.num_features, layer.num_features


COUNTED_LAYERS = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)  # slimmable or plain: both are counted
# The layers of layer-by-layer execution that ``memory`` counts: convs, linears, pooling.
MEMORY_LAYERS = (nn.Conv2d, nn.Linear, nn.modules.pooling._MaxPoolNd,
                 nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
                 nn.modules.pooling._AdaptiveMaxPoolNd)
# The modules besides those that mmcv's FLOPs counter counts (``mmcv_flops``): per element.
MMCV_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU)
MMCV_POOLING = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d)


def set_widths(model, widths):
    """Make ``model`` run at ``widths`` (a float, or one multiplier per width group).

    Raises ``ValueError`` naming the group for a wrong length or a value outside (0, 1].
    """
    for layer, (_, c_out) in _layer_channels(model, widths).items():
        if not isinstance(layer, SlimBatchNorm2d):
            layer.active_out = c_out
    _unwrap(model).current_widths = widths
    return model


def layer_channels(model, widths):
    """``{layer name: [c_in, c_out]}`` of every slimmable layer under ``widths`` (for configs/logs)."""
    by_layer = _layer_channels(model, widths)
    return {name: list(by_layer[m]) for name, m in slim_layers(model)}


# ---------------------------------------------------------------------------------------------
# Cost: MACs and parameters as bilinear forms in the slot channel counts


def image_channels(model):
    """Channels of the image the model takes: ``model.in_channels`` when the network declares it
    (every network of models.py does: 3 for RGB, 1 for grey), else the first conv's input."""
    model = _unwrap(model)
    if hasattr(model, "in_channels"):
        return int(model.in_channels)
    first = next((m for _, m in slim_layers(model) if isinstance(m, SlimConv2d)), None)
    if first is None:
        raise ValueError("the model has no SlimConv2d: give it an in_channels attribute")
    return first.in_channels


def _cost_terms(model):
    """(slots, macs_terms, params_terms, mmcv_terms, memory_terms); a term is
    ``coefficient * c[a] * c[b]`` where c are the slot channel counts and index ``len(slots)``
    stands for the constant 1; a memory term has a fourth row, the index of its layer in
    execution order. Built from one full-width forward of a ``(1, image_channels, input_size,
    input_size)`` zero image that records each layer's resolution, each activation or pooling
    call and the tensors held across each layer; cached on the model for that input shape, so
    changing ``model.input_size`` or ``model.in_channels`` rebuilds it."""
    model = _unwrap(model)
    probe_shape = (1, image_channels(model), model.input_size, model.input_size)
    cached = model.__dict__.get("_cost_terms")
    if cached is not None and cached[0] == probe_shape:
        return cached[1]
    # Plain torch layers count too, at their fixed width: an exported model, or a network that
    # mixes slimmable and plain layers, is counted as it is.
    layers = [m for m in model.modules() if isinstance(m, COUNTED_LAYERS)]
    sizes, calls = {}, []  # calls: every layer, activation and pooling call, in forward order
    tensors_of_layer = []  # per memory layer, [(elements, slot)]
    held = []  # (owner module, tensor, (elements, slot)) alive across the layers inside owner
    latest = [None]  # out_slot of the latest counted layer that ran: the width of what it made

    def activation(tensor, slot):  # (elements per channel, slot), or (elements, None): fixed
        if slot is None:
            return tensor.numel(), None
        if slot.channels != tensor.shape[1]:
            raise ValueError(f"memory: a tensor of {tensor.shape[1]} channels follows a layer of "
                             f"{slot.channels}; declare the layer's slots")
        return tensor.numel() // tensor.shape[1], slot

    def on_counted(m, inputs, output):
        latest[0] = getattr(m, "out_slot", None)
        sizes.setdefault(m, (inputs[0].shape[2:], output.shape[2:]))

    def on_call(m, inputs, output):
        calls.append((m, inputs[0].shape))

    def on_memory_layer(m, inputs, output):
        if isinstance(m, COUNTED_LAYERS):  # its own slots; a plain one has a fixed width
            ends = [activation(inputs[0], getattr(m, "in_slot", None)),
                    activation(output, getattr(m, "out_slot", None))]
        else:  # pooling keeps the width of what it pools
            ends = [activation(inputs[0], latest[0]), activation(output, latest[0])]
        alive = {inputs[0].untyped_storage().data_ptr(), output.untyped_storage().data_ptr()}
        ends += [term for _, tensor, term in held  # a held tensor that is the input counts once
                 if tensor.untyped_storage().data_ptr() not in alive]
        tensors_of_layer.append(ends)

    def on_block_start(m, inputs):
        if "input" in m.keeps_alive:
            held.append((m, inputs[0], activation(inputs[0], latest[0])))

    def on_block_end(m, inputs, output):
        held[:] = [entry for entry in held if entry[0] is not m]

    def keeper(owner):
        def on_kept_output(m, inputs, output):
            held.append((owner, output, activation(output, getattr(m, "out_slot", None))))
        return on_kept_output

    hooks = [m.register_forward_hook(on_counted) for m in layers]
    hooks += [m.register_forward_hook(on_call) for m in model.modules()
              if isinstance(m, COUNTED_LAYERS + MMCV_ELEMENTWISE + MMCV_POOLING)]
    hooks += [m.register_forward_hook(on_memory_layer) for m in model.modules()
              if isinstance(m, MEMORY_LAYERS)]
    for owner in [m for m in model.modules() if getattr(m, "keeps_alive", ())]:
        hooks += [owner.register_forward_pre_hook(on_block_start),
                  owner.register_forward_hook(on_block_end)]
        hooks += [owner.get_submodule(name).register_forward_hook(keeper(owner))
                  for name in owner.keeps_alive if name != "input"]
    previous = getattr(model, "current_widths", 1.0)
    was_training = model.training
    set_widths(model, 1.0)
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(probe_shape, device=device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
        set_widths(model, previous)

    def slot(m, side):  # a plain layer's widths never change
        return getattr(m, side, None)

    slots = sorted({s for m in layers for s in (slot(m, "in_slot"), slot(m, "out_slot"))
                    if s is not None})
    one = len(slots)
    index = {s: i for i, s in enumerate(slots)}
    macs_terms, params_terms, mmcv_terms = [], [], []

    def factor(slot, full):  # (slot index, constant multiplier)
        return (index[slot], 1) if slot is not None else (one, full)

    def pixels_of(shape):
        return int(shape[0] * shape[1]) if len(shape) == 2 else 1

    for m in layers:
        full_in, full_out = _full_in_out(m)
        if isinstance(m, nn.BatchNorm2d):
            a, k = factor(slot(m, "out_slot"), full_out)
            if m.affine:
                params_terms.append((2 * k, a, one))
            if m in sizes:  # a layer that never runs costs no operations
                mmcv_terms.append(((2 if m.affine else 1) * pixels_of(sizes[m][0]) * k, a, one))
            continue
        if isinstance(m, nn.Conv2d):
            kernel = m.kernel_size[0] * m.kernel_size[1]
            pixels = pixels_of(sizes[m][1])
        else:
            kernel, pixels = 1, 1
        a, ka = factor(slot(m, "out_slot"), full_out)
        if getattr(m, "depthwise", False):
            b, kb = one, 1  # one filter per channel: cost linear in the width
        else:
            b, kb = factor(slot(m, "in_slot"), full_in // getattr(m, "groups", 1))
        macs_terms.append((kernel * pixels * ka * kb, a, b))
        mmcv_terms.append((kernel * pixels * ka * kb, a, b))
        params_terms.append((kernel * ka * kb, a, b))
        if m.bias is not None:
            params_terms.append((ka, a, one))
            if isinstance(m, nn.Conv2d):  # mmcv counts a conv's bias, not a linear layer's
                mmcv_terms.append((pixels * ka, a, one))
    # An activation or pooling call counts its input elements; its channels are those of the
    # conv/BN/linear layer that ran last before it (checked: the counts must agree).
    last = None
    for m, shape in calls:
        if isinstance(m, COUNTED_LAYERS):
            last = m
            continue
        source = slot(last, "out_slot") if last is not None else None
        if source is not None and _full_in_out(last)[1] != shape[1]:
            raise RuntimeError(f"cannot tell the channels of {type(m).__name__}: its input has "
                               f"{shape[1]}, the layer before it {_full_in_out(last)[1]}")
        a, k = factor(source, int(shape[1]))
        mmcv_terms.append((pixels_of(shape[2:]) * k, a, one))
    memory_terms = [(elements, index[s] if s is not None else one, one, layer)
                    for layer, ends in enumerate(tensors_of_layer) for elements, s in ends]
    # As long tensors (coefficient, slot a, slot b[, layer]) per count, for the vectorized
    # evaluation.
    terms = (slots, *(torch.tensor(t, dtype=torch.long).reshape(-1, 3).T
                      for t in (macs_terms, params_terms, mmcv_terms)),
             torch.tensor(memory_terms, dtype=torch.long).reshape(-1, 4).T)
    model.__dict__["_cost_terms"] = (probe_shape, terms)
    return terms


def _channels_and_one(slots, matrix):
    """int64 (N, len(slots) + 1): the slot channel counts, then the constant 1."""
    return torch.cat([_slot_channels(slots, matrix), torch.ones(len(matrix), 1, dtype=torch.long)],
                     dim=1)


def _evaluate_terms(model, widths, which):
    slots, macs_terms, params_terms, mmcv_terms, _ = _cost_terms(model)
    if which == "memory":
        total = memory_by_layer(model, widths).max(dim=1).values
    else:
        coef, a, b = {"macs": macs_terms, "params": params_terms, "mmcv_flops": mmcv_terms}[which]
        channels = _channels_and_one(slots, width_matrix(model, widths))
        total = (channels[:, a] * channels[:, b] * coef).sum(dim=1)
    if torch.is_tensor(widths) and widths.dim() == 2:
        return total
    if isinstance(widths, (int, float)) or torch.as_tensor(widths).dim() == 1:
        return int(total[0])
    return total.numpy()


def macs(model, widths=1.0):
    """Multiply-accumulates of conv and linear layers for one image at ``model.input_size``:
    what the slimmable papers (S-Nets, US-Nets, AutoSlim, Joslim) call FLOPs.

    One configuration → int. An (N, D) array → N counts (a NumPy array, or a tensor for a tensor
    input), computed analytically without running the network.
    """
    return _evaluate_terms(model, widths, "macs")


def params(model, widths=1.0):
    """Parameter count of the subnet at ``widths`` (conv/linear weights and biases, BN affine)."""
    return _evaluate_terms(model, widths, "params")


def mmcv_flops(model, widths=1.0):
    """FLOPs for one image at ``model.input_size`` as mmcv's counter counts them
    (``mmcv.cnn.utils.flops_counter.get_model_complexity_info``, mmcv 1.x; what mmrazor 0.x and
    mmcls report, e.g. AutoSlim-MobileNetV2 "530M / 320M / 220M"). Per module call:

    - conv: output elements x kernel_h x kernel_w x in_channels / groups, plus the output
      elements again if it has a bias (so its MACs, plus the bias);
    - linear: input elements x out_features (its MACs; the bias is not counted);
    - BatchNorm: input elements, twice if affine;
    - ReLU, ReLU6, LeakyReLU, PReLU, ELU: output elements;
    - max / average pooling, adaptive ones included: input elements;
    - anything else (Hardswish, Hardsigmoid, Sigmoid, Dropout, residual additions, SE scaling): 0.

    mmcv only sees modules. Every activation and pooling of the networks in models.py runs as a
    module, as in their mmcls counterparts, so this is what mmcv counts on the equivalent mmcls
    network (MobileNetV2: ConvModule + ReLU6, the neck's global average pooling, the linear head).
    About 5% above ``macs`` for MobileNetV2. Same signature and return types as ``macs``;
    ValueError for widths outside (0, 1].
    """
    return _evaluate_terms(model, widths, "mmcv_flops")


def memory(model, widths=1.0):
    """Peak activation memory of inference for one image at ``model.input_size``, in elements
    (bytes = elements x element size: 4 in float32, 1 in int8). Weights are not included.

    Definition: the peak over operations of the tensors alive at once (Sandler et al.,
    MobileNetV2, Sec. 5.1), for layer-by-layer execution in the order of the network's forward,
    every layer output materialized (MCUNet's "peak SRAM", Lin et al. NeurIPS'20). A layer is a
    conv, a linear or a pooling module; BN and activations are applied in place, fused into the
    conv before them. While a layer runs, memory holds its input, its output, and every tensor a
    later step still needs: a residual block's input (kept for the skip addition, which adds in
    place into the block's output), a squeeze-excitation's input (kept for the channel rescale),
    a projection block's main-path output while its shortcut conv runs. A module declares what
    it keeps in ``keeps_alive``: ``"input"`` and/or names of children whose outputs it keeps
    until it returns. A tensor counts once, whatever its roles. Every addend is (pixels x the
    channels of one slot), so N configurations are one (N, layers) matrix and a max, with no
    forward pass (the pixels come from the probe forward of ``_cost_terms``).

    Example: MobileNetV2 at 224, full width, peaks at 1,505,280 elements (5.7 MiB in float32),
    at the stride-2 depthwise conv of ``features.2`` (96x112x112 in, 96x56x56 out). MCUNetV2
    (Lin et al. NeurIPS'21, Fig. 1) reports 1372 kB in int8 = 1,404,928 elements, our value at
    the 16 -> 96 expansion before it: MCUNet's engine runs depthwise convs in place.

    One configuration → int. An (N, D) array → N values (a NumPy array, or a tensor for a tensor
    input). Raises ValueError for bad widths (see ``width_matrix``), or when a tensor's width
    cannot be told from the slots the network declares.
    """
    return _evaluate_terms(model, widths, "memory")


def memory_by_layer(model, widths=1.0):
    """The elements alive while each layer runs (see ``memory``), layers in execution order:
    an int64 tensor (N, layers), N = 1 for one configuration. Its row maximum is ``memory``;
    its argmax says which layer sets the peak."""
    slots, _, _, _, (coef, a, _, layer) = _cost_terms(model)
    channels = _channels_and_one(slots, width_matrix(model, widths))
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


def calibrate_bn(model, batches):
    """Recompute every BN's running statistics for the current widths, as the exact average of
    the per-batch mean and (unbiased) variance over ``batches`` (tensors or (input, target) pairs).

    US-Nets and Joslim do this before evaluating any subnet: the running statistics left by
    training mix all widths and are wrong for each one of them. Returns the number of batches.
    """
    net = _unwrap(model)
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    was_training = net.training
    device = next(net.parameters()).device
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average instead of an exponential one
    count = 0
    net.train()
    with torch.no_grad():
        for batch in batches:
            inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
            net(inputs.to(device, non_blocking=True))
            count += 1
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    net.train(was_training)
    if count == 0:
        raise ValueError("calibrate_bn needs at least one batch")
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
    identity = {"network": getattr(net, "network_name", type(net).__name__),
                "width_mult": float(getattr(net, "width_mult", 1.0)),
                "input_size": getattr(net, "input_size", None),
                "in_channels": getattr(net, "in_channels", None),
                "num_classes": linears[-1].out_features if linears else None}
    return identity


IDENTITY_CHECKED = ("network", "width_mult")  # the fields load_config refuses to see differ


def config_record(model, widths, **extra):
    """One width configuration as a JSON-ready dict: the model's identity (``model_identity``),
    widths and channels per group, channels per layer, MACs, params, mmcv-style FLOPs
    (``mmcv_flops``) and any ``extra`` fields; ``load_config`` reads it back."""
    net = _unwrap(model)
    widths = width_matrix(net, widths)[0].tolist()
    return {**model_identity(net), "widths": widths, "channels": group_channels(net, widths),
            "macs": macs(net, widths), "params": params(net, widths),
            "mmcv_flops": mmcv_flops(net, widths), **extra, "layers": layer_channels(net, widths)}


def save_config(path, model, widths, **extra):
    """Write ``config_record(model, widths, **extra)`` to ``path`` as JSON; returns the record."""
    record = config_record(model, widths, **extra)
    with open(path, "w") as handle:
        json.dump(record, handle, indent=1)
    return record


def possible_channels(group):
    """Every channel count ``group`` (a WidthGroup) can take, ascending."""
    full = group.channels
    return sorted(set(round_channels(torch.arange(1, full + 1) / full, full,
                                     group.divisor).tolist()))


def load_config(path, model):
    """Read a configuration written by ``save_config`` (or any JSON object with ``channels`` per
    group, or ``widths``: one multiplier per group); returns ``(widths, record)`` whose widths
    reproduce the recorded channels exactly. Raises ValueError with a one-line reason: an
    unreadable file, another network or width multiplier, a group missing or unknown, a count
    the group cannot take (naming the nearest it can), a malformed value."""
    try:
        with open(path) as handle:
            record = json.load(handle)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read channel config {path}: {error}") from None
    if not isinstance(record, dict):
        raise ValueError(f"channel config {path} is not a JSON object with 'channels' or 'widths'")
    net = _unwrap(model)
    identity = model_identity(net)
    for key in IDENTITY_CHECKED:
        if key in record and record[key] != identity[key] and \
                (key != "network" or hasattr(net, "network_name")):
            raise ValueError(f"channel config {path} is for {key} {record[key]!r}, this model "
                             f"has {identity[key]!r}")
    groups = net.width_groups
    if "channels" in record:
        channels = record["channels"]
        if not isinstance(channels, dict):
            raise ValueError(f"channel config {path}: 'channels' must map group names to counts")
        unknown = sorted(set(channels) - {g.name for g in groups})
        missing = [g.name for g in groups if g.name not in channels]
        if unknown or missing:
            def names(found):
                return ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4
                                               else "")
            raise ValueError(f"channel config {path} does not fit {identity['network']}: "
                             + "; ".join(part for part in (
                                 f"unknown groups {names(unknown)}" if unknown else "",
                                 f"missing groups {names(missing)}" if missing else "")
                                 if part))
        for group in groups:
            count = channels[group.name]
            possible = possible_channels(group)
            if isinstance(count, bool) or not isinstance(count, int) or count not in possible:
                below = [c for c in possible if isinstance(count, (int, float)) and c < count]
                above = [c for c in possible if isinstance(count, (int, float)) and c > count]
                near = " or ".join(str(c) for c in (below[-1:] + above[:1])) or \
                    f"{possible[0]}..{possible[-1]}"
                raise ValueError(f"channel config {path}: group '{group.name}' has {count!r} "
                                 f"channels, which it cannot take (nearest possible: {near}; "
                                 f"full width {group.channels})")
        widths = channels_to_widths(net, channels)
        if group_channels(net, widths) != {g.name: channels[g.name] for g in groups}:
            raise ValueError(f"channel config {path}: its channels do not round-trip (a bug)")
    elif "widths" in record:
        widths = record["widths"]
        if not isinstance(widths, list) or len(widths) != len(groups) or not all(
                isinstance(w, (int, float)) and not isinstance(w, bool) for w in widths):
            raise ValueError(f"channel config {path}: 'widths' must be a list of "
                             f"{len(groups)} numbers in (0, 1], one per width group")
    else:
        raise ValueError(f"channel config {path} has neither 'channels' nor 'widths'")
    try:
        widths = width_matrix(net, widths)[0].tolist()
    except ValueError as error:
        raise ValueError(f"channel config {path}: {error}") from None
    return widths, record


def export(model, widths):
    """A copy of ``model`` at ``widths`` whose slimmable layers are replaced by plain torch.nn
    layers holding the sliced weights and BN statistics (AutoSlim's "split checkpoint").

    The copy has exactly ``params(model, widths)`` parameters, the dtype and device of
    ``model``'s weights and, in eval mode, the outputs of ``model`` at ``widths``. Rebuild a
    saved one with
    ``export(get_model(name, num_classes), widths).load_state_dict(state)``.
    """
    source = _unwrap(model)
    channels = _layer_channels(source, widths)
    # Deep-copy everything except the big slimmable layers, which are rebuilt below.
    memo = {id(m): None for m in channels}
    static = copy.deepcopy(source, memo)
    for key in ("_slim_layers", "_cost_terms", "current_widths"):
        static.__dict__.pop(key, None)
    by_name = dict(source.named_modules())
    for name, layer in slim_layers(source):
        c_in, c_out = channels[layer]
        parent_name, _, attr = name.rpartition(".")
        parent = static.get_submodule(parent_name) if parent_name else static
        setattr(parent, attr, _static_copy(by_name[name], c_in, c_out))
    static.train(source.training)
    return static


def _static_copy(layer, c_in, c_out):
    with torch.no_grad():
        if isinstance(layer, SlimBatchNorm2d):
            new = nn.BatchNorm2d(c_out, eps=layer.eps, momentum=layer.momentum)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(new, key).copy_(getattr(layer, key)[:c_out])
            new.num_batches_tracked.copy_(layer.num_batches_tracked)
        elif isinstance(layer, SlimLinear):
            new = nn.Linear(c_in, c_out, bias=layer.bias is not None)
            new.weight.copy_(layer.weight[:c_out, :c_in])
            if layer.bias is not None:
                new.bias.copy_(layer.bias[:c_out])
        else:
            groups = c_out if layer.depthwise else 1
            new = nn.Conv2d(c_in, c_out, layer.kernel_size, layer.stride, layer.padding,
                            layer.dilation, groups=groups, bias=layer.bias is not None)
            new.weight.copy_(layer.weight[:c_out, :c_in // groups])
            if layer.bias is not None:
                new.bias.copy_(layer.bias[:c_out])
    new.train(layer.training)
    return new.to(device=layer.weight.device, dtype=layer.weight.dtype)  # as the source: half...
