"""Slim any network: width groups found from the model's graph.

A slimmable network needs to know which layers must agree on a width (its width groups, see
``slimmable``). Written by hand, that is a few lines per network; here it is read off one
``torch.fx`` trace of the model, the idea of mmrazor's ChannelAnalyzer and Torch-Pruning's
dependency graph (Fang et al., "DepGraph", CVPR'23), on the traced graph instead of autograd:

- every conv or linear output is a new *channel source*; BN, activations, dropout and pooling
  pass their input's channels on; a depthwise conv, or a grouped conv with as many outputs as
  inputs (ResNeXt, RegNet), follows its input (a grouped one shrinks by whole groups);
- an add or a multiply unites the sources of its operands (a residual stream; SE's rescale):
  the united sources are one width group (a union-find over sources);
- a concatenation lists its inputs' sources in order: a layer reading it gathers the kept
  channels of each (``slimmable.ChannelConcat``); a flatten of C x H x W multiplies a source's
  features by H * W; a permute moves the channel dim (ConvNeXt's channels-last blocks);
- the image and the logits never change; whatever the analysis does not understand (channel
  shuffle, a reshape that splits channels, a stored channel count, an unknown function) freezes
  the groups that reach it: their layers keep full width. Wrong groups never; frozen ones, said;
- for ``slimmable.memory``, each conv, linear or pooling call lists the tensors made before it
  and used after it (a residual's input, DenseNet's earlier features): its ``kept_by_call``.

The result keeps the user's own ``forward``: fx is used for analysis only, and each
``nn.Conv2d``, ``nn.BatchNorm2d``, ``nn.Linear`` and ``nn.LayerNorm`` is turned, in place, into
its slimmable counterpart (same names, same parameter objects, so a torchvision state dict still
loads with ``strict=True``). The one exception: a parameter multiplied straight into the
channels (ConvNeXt's ``layer_scale``) cannot slice itself, so such a network's class becomes a
subclass of its own whose forward is the traced graph of its mode (traced once in training mode,
once in eval mode: Python branches on ``self.training`` follow it), narrowing that parameter to its
operand's width (same object, same names). At full width the converted network computes exactly
what the original did (checked on the example by ``make_slimmable``).

Example::

    import torch, torchvision, convert, slimmable
    net = convert.make_slimmable(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64))
    print(len(net.width_groups), slimmable.macs(net, 1.0), slimmable.macs(net, 0.5))
    slimmable.set_widths(net, 0.5)
    small = slimmable.export(net.eval(), 0.5)           # plain torch layers only
    x = torch.randn(2, 3, 64, 64)
    print((small(x) - net(x)).abs().max())              # 0, or a rounding error
"""
import functools
import math
import operator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

import slimmable

# Modules and functions whose output has their input's channels, in the same order.
PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.GELU, nn.Hardswish,
                nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Mish, nn.Identity,
                nn.modules.dropout._DropoutNd, nn.modules.pooling._MaxPoolNd,
                nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
                nn.modules.pooling._AdaptiveMaxPoolNd)
PASS_FUNCTIONS = {F.relu, F.relu6, F.leaky_relu, F.elu, F.silu, F.gelu, F.hardswish,
                  F.hardsigmoid, F.sigmoid, F.tanh, F.mish, F.hardtanh, F.dropout, F.max_pool2d,
                  F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.interpolate,
                  torch.relu, torch.sigmoid, torch.tanh, torch.clone}
PASS_NAMES = {"stochastic_depth", "StochasticDepth"}  # torchvision.ops': a function fx keeps
# whole, and its module, kept whole too: its forward reads self.training, which a trace would fix
PASS_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "contiguous", "clone", "float",
                "to", "type_as", "detach"}
ELEMENTWISE = {operator.add, operator.iadd, operator.sub, operator.isub, operator.mul,
               operator.imul, operator.truediv, operator.itruediv, torch.add, torch.sub,
               torch.mul, torch.div}
ELEMENTWISE_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
NOT_TENSORS = {"size", "dim"}  # methods whose result carries no channels
UNKNOWN = "unknown"  # the layout of a tensor whose channels are no longer tracked


class Layout:
    """Where a tensor's channels are and where they come from: channel dim ``dim`` of ``ndim``;
    ``parts``, the concatenated sources in order, each ``(source, scale)`` (``scale`` features
    per channel after a flatten)."""

    def __init__(self, dim, ndim, parts):
        self.dim, self.ndim, self.parts = dim, ndim, tuple(parts)

    def moved(self, dim, ndim=None):
        return Layout(dim, self.ndim if ndim is None else ndim, self.parts)


class Sources:
    """Union-find over channel sources: their channel counts, divisors and the reason each
    frozen root is frozen (``(node name, None)`` for a root that is fixed: image, logits)."""

    def __init__(self):
        self.parent, self.channels, self.divisor, self.names, self.frozen = [], [], [], [], {}

    def new(self, channels, name):
        self.parent.append(len(self.parent))
        self.channels.append(int(channels))
        self.divisor.append(1)
        self.names.append(name)
        return len(self.parent) - 1

    def find(self, s):
        while self.parent[s] != s:
            self.parent[s] = s = self.parent[self.parent[s]]
        return s

    def unite(self, a, b, node):
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        if self.channels[a] != self.channels[b]:  # cannot share a width
            self.freeze([a, b], node, "joins different channel counts")
            return
        self.parent[b] = a
        self.divisor[a] = math.lcm(self.divisor[a], self.divisor[b])
        if b in self.frozen:
            self.frozen.setdefault(a, self.frozen[b])

    def freeze(self, sources, node, reason):
        for s in sources:
            self.frozen.setdefault(self.find(s), (node.name, reason))


def convertible(module):
    """Whether ``module`` becomes a slimmable layer: a plain Conv2d (zero padding), BatchNorm2d
    (with running statistics), Linear, or a LayerNorm over one dim (subclasses too)."""
    if isinstance(module, nn.LayerNorm):
        return len(module.normalized_shape) == 1
    return (type(module) is nn.Conv2d and module.padding_mode == "zeros") or type(module) is \
        nn.Linear or (type(module) is nn.BatchNorm2d and module.track_running_stats)


def _sources(layout):
    return [s for s, _ in layout.parts] if isinstance(layout, Layout) else []


def _shape(node):
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if hasattr(meta, "shape") else None


def _int_list(node, *keywords):
    """The sizes or dims of a view, reshape or permute: given one by one or as one sequence."""
    values = list(node.args[1:]) or [next((node.kwargs[k] for k in keywords if k in node.kwargs),
                                          ())]
    return list(values[0]) if len(values) == 1 and isinstance(values[0], (tuple, list)) else values


def _target_name(node):
    """What a call calls: a method's name, or a function's (``chunk``, not its repr)."""
    return node.target if node.op == "call_method" else getattr(node.target, "__name__",
                                                                 str(node.target))


def _argument(node, position, name, default=None):
    if len(node.args) > position:
        return node.args[position]
    return node.kwargs.get(name, default)


def _layer_norm_dim(module, x):
    """The channel dim a LayerNorm of one normalized dim normalizes on layout ``x``: -1 for the
    last dim, 1 for a LayerNorm subclass on NCHW channels (ConvNeXt's LayerNorm2d); else None."""
    if not isinstance(x, Layout):
        return None
    if x.dim == x.ndim - 1:
        return -1
    return 1 if type(module) is not nn.LayerNorm and x.dim == 1 and x.ndim == 4 else None


class _Tracer(fx.Tracer):
    """fx's tracer with every LayerNorm a leaf (ConvNeXt's LayerNorm2d permutes inside)."""

    def is_leaf_module(self, module, name):
        return (isinstance(module, nn.LayerNorm) or type(module).__name__ in PASS_NAMES
                or super().is_leaf_module(module, name))


def trace(model, example_input, training=True):
    """``model``'s graph, traced in training mode (in eval mode if not ``training``), each node's
    output shape on ``example_input`` in ``node.meta`` (fx's ShapeProp, in eval mode): a
    GraphModule sharing ``model``'s modules. ValueError, one line, if fx cannot trace or run it."""
    was_training = model.training
    try:
        graph = _Tracer().trace(model.train(training))
        traced = fx.GraphModule(model, graph)
        with torch.no_grad():
            ShapeProp(traced.eval()).propagate(example_input)
    except Exception as error:  # fx raises many kinds; the user needs the first line
        message = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise ValueError(f"cannot trace {type(model).__name__} with torch.fx: {message}") from None
    finally:
        model.train(was_training)
    return traced


class Analysis:
    """One pass over a traced graph: each node's channel ``layout`` (a ``Layout``, ``UNKNOWN``
    or None for what carries no channels), the ``sources`` union-find, each converted layer's
    calls in ``layers`` (name -> ``(in layout, out layout)``), each other module's layout per
    call in ``calls``, and ``scaled``: parameters multiplied into channels, ``(get_attr node,
    user node, parameter dim, operand node, operand dim)``."""

    def __init__(self, traced):
        self.traced, self.sources, self.layout = traced, Sources(), {}
        self.layers, self.calls, self.scaled = {}, {}, []
        # a get_attr of one of these is a parameter, not a buffer or a constant the trace folded
        self.parameter_names = {n for n, _ in traced.named_parameters(remove_duplicate=False)}
        for node in traced.graph.nodes:
            self.layout[node] = self.visit(node)

    def visit(self, node):
        shape = _shape(node)
        if node.op == "placeholder":
            if shape is None or len(shape) < 2:
                return None
            source = self.sources.new(shape[1], "input")
            self.sources.freeze([source], node, None)
            return Layout(1, len(shape), [(source, 1)])
        if node.op == "output":
            self.unknown(node, None)  # the logits: fixed, not frozen
            return None
        if node.op == "call_module":
            return self.visit_module(node, self.traced.get_submodule(node.target))
        if node.op in ("call_function", "call_method"):
            return self.visit_function(node)
        return None  # get_attr: a parameter or buffer, seen where it is used

    def _arg_layouts(self, node):
        """The layouts (``Layout``s and ``UNKNOWN``) of ``node``'s (nested) arguments."""
        found = []
        fx.node.map_aggregate(fx.node.map_arg((node.args, node.kwargs), self.layout.get),
                              lambda a: found.append(a) if isinstance(a, (Layout, str)) else a)
        return [f for f in found if f is UNKNOWN or isinstance(f, Layout)]

    def _input(self, node):
        return self.layout.get(node.args[0]) if node.args else None

    def unknown(self, node, reason):
        """Freeze every source that reaches ``node``; its output is no longer tracked."""
        self.sources.freeze([s for x in self._arg_layouts(node) for s in _sources(x)], node,
                            reason)
        return UNKNOWN

    def record(self, node, in_layout, out_layout):
        """A call of a converted layer; a second call of the same layer must agree with the first."""
        first = self.layers.setdefault(node.target, (in_layout, out_layout))
        for before, again in zip(first, (in_layout, out_layout)):
            if before is not again:
                self.unite(node, [before, again])

    def unite(self, node, layouts):
        """Tie layouts of the same structure part by part; freeze them all if they differ."""
        structures = {tuple((self.sources.channels[s], k) for s, k in x.parts)
                      if isinstance(x, Layout) else None for x in layouts}
        if len(structures) > 1 or None in structures:
            self.sources.freeze([s for x in layouts for s in _sources(x)], node,
                                "joins tensors of different channel layouts")
            return False
        for x in layouts[1:]:
            for (a, _), (b, _) in zip(layouts[0].parts, x.parts):
                self.sources.unite(a, b, node)
        return True

    def visit_module(self, node, module):
        x = self._input(node)
        if convertible(module) and isinstance(module, nn.Conv2d):
            return self.visit_conv(node, module, x)
        if convertible(module) and isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):
            tracked = isinstance(x, Layout) and x.dim == (1 if isinstance(module, nn.BatchNorm2d)
                                                          else x.dim)
            if not tracked or any(scale != 1 for _, scale in x.parts) or (
                    isinstance(module, nn.LayerNorm) and not _layer_norm_dim(module, x)):
                x = self.unknown(node, f"{type(module).__name__} on untracked channels")
            elif isinstance(module, nn.LayerNorm) and len(x.parts) > 1:
                self.sources.freeze(_sources(x), node, "LayerNorm on a concatenation")
            self.record(node, x, x)
            return x
        if convertible(module) and isinstance(module, nn.Linear):
            if not isinstance(x, Layout) or x.dim != x.ndim - 1:
                x = self.unknown(node, "Linear on untracked features")
            ndim = len(_shape(node))
            out = Layout(ndim - 1, ndim, [(self.sources.new(module.out_features, node.target), 1)])
            self.record(node, x, out)
            return out
        if isinstance(module, nn.Flatten):
            return self.flatten(node, x, module.start_dim, module.end_dim)
        if isinstance(module, PASS_MODULES) or type(module).__name__ in PASS_NAMES or (
                isinstance(module, nn.PReLU) and module.num_parameters == 1):  # one shared slope
            self.calls.setdefault(node.target, []).append(x)
            return x
        return self.unknown(node, f"module {type(module).__name__}")

    def visit_conv(self, node, conv, x):
        if not isinstance(x, Layout) or x.dim != 1 or any(scale != 1 for _, scale in x.parts):
            x = self.unknown(node, "conv on untracked channels") if x is not UNKNOWN else x
        if conv.groups > 1 and conv.in_channels == conv.out_channels:  # follows its input:
            # depthwise or grouped, its outputs are its inputs' channels, group by group
            if isinstance(x, Layout) and len(x.parts) > 1:
                self.sources.freeze(_sources(x), node, "grouped conv on a concatenation")
            elif isinstance(x, Layout):
                root = self.sources.find(x.parts[0][0])
                self.sources.divisor[root] = math.lcm(self.sources.divisor[root],
                                                      conv.in_channels // conv.groups)
            self.record(node, x, x)
            return x
        out = Layout(1, len(_shape(node)), [(self.sources.new(conv.out_channels, node.target), 1)])
        if conv.groups > 1:  # in != out: the grouping ties widths no width group can express
            self.sources.freeze(_sources(x) + _sources(out), node,
                                "grouped conv with different input and output channels")
        self.record(node, x, out)
        return out

    def visit_function(self, node):
        target, method, name = node.target, node.op == "call_method", _target_name(node)
        x = self._input(node)
        if (method and target in NOT_TENSORS) or target is getattr:
            return None  # a size or a shape
        if target is operator.getitem:
            if isinstance(x, tuple) and isinstance(node.args[1], int):
                return x[node.args[1]]
            return self.unknown(node, "indexing a tensor") if isinstance(x, Layout) else x
        if (method and target in ELEMENTWISE_METHODS) or target in ELEMENTWISE:
            return self.elementwise(node)
        if (method and target in PASS_METHODS) or target in PASS_FUNCTIONS or name in PASS_NAMES:
            return x
        if target in (torch.cat, torch.concat):
            return self.cat(node)
        moves = {"flatten": self.flatten, "view": self.reshape, "reshape": self.reshape,
                 "permute": self.permute, "transpose": self.permute, "mean": self.reduce,
                 "sum": self.reduce, "amax": self.reduce, "amin": self.reduce}
        if name in moves:  # where the channels go: nowhere when none are tracked
            return moves[name](node, x) if isinstance(x, Layout) else x
        if name in ("chunk", "split"):
            return self.split(node, x)
        if not self._arg_layouts(node):
            return None
        return self.unknown(node, f"{'method' if method else 'function'} {name}")

    def elementwise(self, node):
        """Add, multiply...: the operands carrying the output's channels are one width group;
        an operand of one channel broadcasts; a parameter of the channels' size is narrowed
        to them (``scaled``; the channels it scales at each use, one group); anything else of
        that size freezes them."""
        out_shape = _shape(node)
        if out_shape is None:
            return None
        operands = [a for a in node.args[:2] if isinstance(a, fx.Node)]
        if any(self.layout.get(a) is UNKNOWN for a in operands):
            return self.unknown(node, "meets an untracked tensor")
        carriers, others = [], []
        for a in operands:
            layout, shape = self.layout.get(a), _shape(a)
            if shape is None:
                continue
            offset = len(out_shape) - len(shape)
            if isinstance(layout, Layout) and shape[layout.dim] == out_shape[layout.dim + offset]:
                carriers.append(layout.moved(layout.dim + offset, len(out_shape)))
            elif not isinstance(layout, Layout):
                others.append((a, shape, offset))
        if not carriers:
            return None
        result = carriers[0]
        if len({c.dim for c in carriers}) > 1 or not self.unite(node, carriers):
            return self.unknown(node, "joins tensors of different channel layouts")
        for a, shape, offset in others:
            dim = result.dim - offset
            if dim < 0 or shape[dim] == 1:
                continue  # broadcast along the channels
            if a.op == "get_attr" and len(result.parts) == 1 and a.target in self.parameter_names:
                partner = next(b for b in operands if b is not a)
                # a parameter scaling two tensors ties their channels, as an add does
                earlier = [self.layout[user] for p, user, *_ in self.scaled if p.target == a.target]
                self.unite(node, earlier[:1] + [result])
                self.scaled.append((a, node, dim, partner, self.layout[partner].dim))
            else:
                self.sources.freeze(_sources(result), node, "meets a fixed tensor of its channels")
        return result

    def cat(self, node):
        tensors, dim = node.args[0], _argument(node, 1, "dim", 0)
        layouts = [self.layout.get(t) for t in tensors]
        if not all(isinstance(x, Layout) for x in layouts) or len({x.dim for x in layouts}) > 1:
            return self.unknown(node, "concatenates untracked channels")
        first = layouts[0]
        if dim % first.ndim == first.dim:  # along the channels: the parts in order
            return Layout(first.dim, first.ndim, [p for x in layouts for p in x.parts])
        return first if self.unite(node, layouts) else UNKNOWN

    def flatten(self, node, x, start=None, end=None):
        """Merge dims start..end (a flatten call's own when None): a channel dim with only ones
        before it in the range stays a channel dim, its sources now ``scale`` times as many
        features (channel-major)."""
        if not isinstance(x, Layout):
            return x
        if start is None:
            start, end = _argument(node, 1, "start_dim", 0), _argument(node, 2, "end_dim", -1)
        shape = _shape(node.args[0])
        start, end = start % x.ndim, end % x.ndim
        if x.dim < start:
            return x.moved(x.dim, x.ndim - (end - start))
        if x.dim > end:
            return x.moved(x.dim - (end - start), x.ndim - (end - start))
        if any(shape[d] != 1 for d in range(start, x.dim)):
            return self.unknown(node, "flattens channels into a dim before them")
        factor = math.prod(shape[x.dim + 1:end + 1])
        return Layout(start, x.ndim - (end - start), [(s, k * factor) for s, k in x.parts])

    def reshape(self, node, x):
        """A view or reshape: tracked when it merges a range of dims the way a flatten does or
        leaves the channel dim alone, and its size there is read at run time (not a stored int)."""
        before, after = _shape(node.args[0]), _shape(node)
        sizes = _int_list(node, "shape", "size")
        prefix = next((i for i, (a, b) in enumerate(zip(before, after)) if a != b),
                      min(len(before), len(after)))
        suffix = next((i for i, (a, b) in enumerate(zip(before[::-1], after[::-1])) if a != b),
                      min(len(before), len(after)) - prefix)
        if x.dim < prefix:
            out_dim = x.dim
        elif x.dim >= len(before) - suffix:
            out_dim = x.dim + len(after) - len(before)
        elif len(after) - suffix - prefix == 1:
            out_dim = prefix
        else:
            return self.unknown(node, f"{_target_name(node)} splits or mixes the channels")
        if len(sizes) == len(after) and isinstance(sizes[out_dim], int) and sizes[out_dim] != -1:
            return self.unknown(node, f"{_target_name(node)} to a stored channel count "
                                      f"{sizes[out_dim]}")
        if prefix <= x.dim < len(before) - suffix:
            return self.flatten(node, x, prefix, len(before) - suffix - 1)
        return x.moved(out_dim, len(after))

    def permute(self, node, x):
        dims = [d % x.ndim for d in _int_list(node, "dims")]
        if getattr(node.target, "__name__", node.target) == "transpose":  # the two dims swap
            return x.moved({dims[0]: dims[1], dims[1]: dims[0]}.get(x.dim, x.dim))
        return x.moved(dims.index(x.dim))

    def reduce(self, node, x):
        dims = _argument(node, 1, "dim")
        dims = [d % x.ndim for d in ((dims,) if isinstance(dims, int) else dims or ())]
        if not dims or x.dim in dims:
            return self.unknown(node, f"{_target_name(node)} over the channels")
        if _argument(node, 2, "keepdim", False):
            return x
        return x.moved(x.dim - sum(d < x.dim for d in dims), x.ndim - len(dims))

    def split(self, node, x):
        count = len(node.meta.get("tensor_meta") or ())
        dim = _argument(node, 2, "dim", 0)
        if isinstance(x, Layout) and dim % x.ndim != x.dim:
            return (x,) * count
        return (self.unknown(node, f"{_target_name(node)} along the channels"),) * count


def width_groups(analysis, divisor=1):
    """``(groups, slot, frozen)``: the ``WidthGroup``s, in the order their first layer runs
    (each named after that layer); ``slot(layout)``, the ``ChannelSlot`` (one part) or
    ``ChannelConcat`` of a layout, None when fixed; one line per frozen group. A root of one
    channel has nothing to slim."""
    sources, groups, group_of, frozen = analysis.sources, [], {}, {}  # group_of: root -> slot
    for s in range(len(sources.parent)):
        root = sources.find(s)
        name, channels = sources.names[s], sources.channels[root]
        if root in group_of or root in frozen or channels == 1:
            continue
        if root in sources.frozen:
            node, reason = sources.frozen[root]
            if reason is not None:  # None: the image or the logits, fixed by definition
                frozen[root] = f"froze {name} ({channels} channels) at node {node}: {reason}"
            continue
        # full width stays reachable: 26 channels under divisor 8 (RegNetY's SE) take even counts
        group_of[root] = slimmable.add_group(groups, name, channels, math.gcd(
            channels, math.lcm(divisor, sources.divisor[root])))

    def slot(layout):
        if not isinstance(layout, Layout):
            return None
        roots = [(sources.find(source), scale) for source, scale in layout.parts]
        parts = [group_of[r]._replace(scale=k) if r in group_of else sources.channels[r] * k
                 for r, k in roots]
        if all(isinstance(p, int) for p in parts):
            return None
        return parts[0] if len(parts) == 1 else slimmable.ChannelConcat(tuple(parts))
    return groups, slot, list(frozen.values())


def _make_slim(layer, in_layout, out_layout, slot):
    """Turn a plain layer into its slimmable counterpart in place, with the slots of the layouts
    of its call: its class changes; its parameters, buffers and name stay."""
    in_slot, out_slot = slot(in_layout), slot(out_layout)
    if isinstance(layer, nn.Conv2d):
        layer.__class__ = slimmable.SlimConv2d
        layer._set_slots(in_slot, out_slot)
        return
    if isinstance(layer, nn.LayerNorm):
        layer.plain_class, layer.channel_dim = type(layer), _layer_norm_dim(layer, in_layout) or -1
        layer.__class__ = slimmable.SlimLayerNorm
    else:
        layer.__class__ = {nn.BatchNorm2d: slimmable.SlimBatchNorm2d,
                           nn.Linear: slimmable.SlimLinear}[type(layer)]
    layer.in_slot, layer.out_slot = in_slot, out_slot
    if isinstance(layer, nn.Linear):
        layer.active_out = layer.out_features


def make_slimmable(model, example_input, log=print, divisor=1):
    """Convert ``model`` (an ``nn.Module`` taking one image batch (N, C, H, W)) into a slimmable
    network, in place, its width groups found from one fx trace on ``example_input``; returns
    it (its forward the traced graph when a parameter multiplies channels directly, see the
    module docstring). Sets ``width_groups``, ``in_channels`` (C),
    ``input_size`` ((H, W), where costs are counted), ``kept_input_size`` (the same: the size its
    memory is counted at) and ``frozen`` (one line per frozen group, each also given to ``log``).
    ``divisor``: every group's channel counts are multiples of it (8 for torchvision's ImageNet
    networks), or of its group width for a grouped conv; of their greatest common divisor with
    the group's full count where that is no multiple of them. ValueError, one line (the model
    left as it was), when fx cannot trace the model, it has no layer to slim or no width group
    left (each frozen), it is already slimmable, a child module has the name of an attribute
    set here, its eval-mode output changes between two runs, or its parameters multiplied into
    the channels differ between training and eval mode; after the conversion, when its traced
    forward computes otherwise than its own at full width. RuntimeError for any other
    difference there (a bug)."""
    if any(isinstance(m, slimmable.SLIM_LAYERS) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} is already slimmable: convert it once")
    taken = sorted({"width_groups", "frozen", "in_channels", "input_size", "kept_input_size"}
                   & set(model._modules))
    if taken:
        raise ValueError(f"{type(model).__name__} has a child module named {taken[0]}, an "
                         f"attribute make_slimmable sets: rename the child")
    expected = _full_width_output(model, example_input)
    if not _equal(expected, _full_width_output(model, example_input)):
        raise ValueError(f"{type(model).__name__}'s eval-mode output changes between two runs on "
                         f"the same input: make its forward deterministic in eval mode")
    analysis, in_eval, (groups, slot, frozen) = _analyse(model, example_input, divisor)
    _record_kept_tensors(model, analysis, example_input, slot)
    for name, module in list(model.named_modules()):
        if convertible(module):
            _make_slim(module, *analysis.layers.get(name, (None, None)), slot)
        elif name in analysis.calls:  # for slimmable's cost probe: the width of each call
            module.call_slots = [(slot(x), x.dim if isinstance(x, Layout) else 1)
                                 for x in analysis.calls[name]]
    model = _narrow_scaled_parameters(model, analysis, in_eval, slot)
    model.width_groups, model.frozen = groups, frozen
    model.in_channels = int(example_input.shape[1])
    height, width = example_input.shape[-2:]
    model.input_size = int(height) if height == width else (int(height), int(width))
    model.kept_input_size = model.input_size
    for line in model.frozen:
        log(line)
    for key in ("_slim_layers", "_cost_terms"):
        model.__dict__.pop(key, None)
    slimmable.set_widths(model, 1.0)
    if not _equal(_full_width_output(model, example_input), expected):
        if "channel_parameters" in model.__dict__:  # the user's Python the trace cannot see
            raise ValueError(f"{type(model).__name__}'s forward as torch.fx traced it computes "
                             f"otherwise than its own: let it branch on self.training only")
        raise RuntimeError("the converted model's full-width output differs from the original's "
                           "(a bug in convert.py)")
    return model


def _analyse(model, example_input, divisor):
    """``(analysis, in_eval, width_groups(analysis, divisor))``: the analysis of the
    training-mode trace, and of the eval-mode one where a parameter multiplies channels (None
    elsewhere). ValueError, one line, for a model ``make_slimmable`` cannot slim."""
    analysis = Analysis(trace(model, example_input))
    groups, slot, frozen = width_groups(analysis, divisor)
    name = type(model).__name__
    if not analysis.layers:
        raise ValueError(f"{name} has no Conv2d, BatchNorm2d, Linear or LayerNorm that its "
                         f"forward calls")
    if not groups:
        why = f"each froze, the first: {frozen[0]}" if frozen else "its layers' widths are " \
            "the image's and the output's"
        raise ValueError(f"{name} has no width group to slim ({why}): no width of it could "
                         f"change")
    in_eval = Analysis(trace(model, example_input, training=False)) if analysis.scaled else None
    if in_eval and [(p.target, d) for p, _, d, _, _ in analysis.scaled] != \
            [(p.target, d) for p, _, d, _, _ in in_eval.scaled]:
        raise ValueError(f"{name} multiplies parameters into its channels differently in "
                         f"training and eval mode: do the same in both")
    return analysis, in_eval, (groups, slot, frozen)


def _equal(outputs, expected):
    return len(outputs) == len(expected) and all(map(torch.equal, outputs, expected))


def _record_kept_tensors(model, analysis, example_input, slot):
    """For ``slimmable.memory``: on each conv, linear and pooling module, ``kept_by_call``: per
    call of it in the (training-mode) graph, the tensors made before it and used after it besides
    its input and output (a residual's input, a projection block's main path, DenseNet's earlier
    features, Inception's finished branches), each ``(meta tensor of its full-width shape, slot,
    channel dim)``. One per storage, told by a full-width run keeping every value (no address
    reused): an in-place ReLU's output is its input; what shares the storage of the input or
    output is not counted again (the other half of ShuffleNetV2's chunk: read low there)."""
    was_training, nodes = model.training, list(analysis.traced.graph.nodes)
    # Not trace's ShapeProp run: that one is at the caller's batch and frees values as it goes.
    interpreter = fx.Interpreter(analysis.traced.eval(), garbage_collect_values=False)
    with torch.no_grad():
        interpreter.run(example_input[:1])
    model.train(was_training)
    where, values = {n: i for i, n in enumerate(nodes)}, interpreter.env
    storage = {n: values[n].untyped_storage().data_ptr() for n in nodes
               if torch.is_tensor(values[n])}
    maker, last_use = {}, {}  # per storage: the node that made it, the last node that reads it
    for node, address in storage.items():
        maker.setdefault(address, node)
        last_use[address] = max([last_use.get(address, -1)] + [where[u] for u in node.users])
    for i, node in enumerate(nodes):
        module = model.get_submodule(node.target) if node.op == "call_module" else None
        if not isinstance(module, slimmable.MEMORY_LAYERS):
            continue
        own = {storage.get(n) for n in node.all_input_nodes + [node]}
        kept = [(n, analysis.layout.get(n)) for address, n in maker.items()
                if where[n] < i < last_use[address] and address not in own
                and n.op != "get_attr"]  # a parameter, or a view of one, is no activation
        module.__dict__.setdefault("kept_by_call", []).append([(
            torch.empty(values[n].shape, device="meta"), slot(x),
            x.dim if isinstance(x, Layout) else 1) for n, x in kept])


def _full_width_output(model, example_input):
    """The eval-mode output(s) of ``model`` on ``example_input``, as a list of tensors."""
    was_training, outputs = model.training, []
    with torch.no_grad():
        fx.node.map_aggregate(model.eval()(example_input),
                              lambda t: outputs.append(t) if torch.is_tensor(t) else t)
    model.train(was_training)
    return outputs


def _narrow_scaled_parameters(model, analysis, in_eval, slot):
    """Where a parameter multiplies slimmable channels directly (ConvNeXt's ``layer_scale``),
    give ``model`` the traced graphs as its forward, the training-mode one (``analysis``'s) or
    the eval-mode one (``in_eval``'s) as ``model.training`` says, that parameter narrowed in
    each to its operand's channels; ``channel_parameters`` tells ``slimmable`` each one's slot
    and dim."""
    channel_parameters = {}
    for parameter, _, dim, operand, _ in analysis.scaled:
        if slot(analysis.layout[operand]) is not None:
            channel_parameters[parameter.target] = (slot(analysis.layout[operand]), dim)
    if not channel_parameters:
        return model
    train_forward, source = _narrowed_forward(analysis, channel_parameters)
    eval_forward, _ = _narrowed_forward(in_eval, channel_parameters)

    @functools.wraps(train_forward)  # its signature, for a trace of the converted model
    def forward(self, *args, **kwargs):
        return (train_forward if self.training else eval_forward)(self, *args, **kwargs)
    model.__class__ = type(type(model).__name__, (type(model),), {
        "forward": forward,
        "__doc__": "The network, its forward the graph traced in its mode; in training mode:\n"
                   + source})
    model.channel_parameters = channel_parameters
    return model


def _narrowed_forward(analysis, narrowed):
    """``(forward, source)`` of the analysed graph, each use of a parameter named in ``narrowed``
    narrowed to its operand's channels; ``forward(model, *inputs)`` reaches the model's modules
    and parameters by their names (what fx.GraphModule does)."""
    graph = analysis.traced.graph
    for parameter, user, dim, operand, operand_dim in analysis.scaled:
        if parameter.target in narrowed:
            with graph.inserting_before(user):
                size = graph.call_method("size", (operand, operand_dim))
                narrow = graph.call_method("narrow", (parameter, dim, 0, size))
            user.replace_input_with(parameter, narrow)
    code = graph.python_code(root_module="self")
    namespace = dict(code.globals)
    exec(code.src, namespace)
    return namespace["forward"], code.src
