"""Evaluate a trained slimmable network: its cost-vs-accuracy Pareto front, files, plots, subnets.

A slimmable network is judged by a curve: the best top-1 accuracy it reaches at each cost.
The cost is the run's ``--cost`` (a key of ``slimmable.COSTS``; ``--cost`` here overrides it):
multiply-accumulates ("MACs", the papers' "FLOPs") by default, or parameters, mmcv-style FLOPs,
or the peak activation memory of inference. Below, "MACs" stands for that cost. For a run of
train.py this script

1. takes candidate configurations. Joslim (Chin et al., ECML-PKDD'21): the non-dominated
   (cost, loss) entries of the sampler's history. Slim (US-Nets): 40 uniform widths evenly
   spaced in MACs. AutoSlim (method ``random``): search.py's ``runs/NAME/search/*.json``
   (without them, the 40 uniform widths). All three add the smallest and the full network.
   ``fixed``: the retrained configurations, every one reported (each is a model of its own,
   trained for its target). ``--configs FILE...``: any channel configs;
2. calibrates BN for each one: training leaves running statistics that mix every width, so each
   candidate gets its own, averaged over the same ``--calib_batches`` training batches;
3. selects the front on held-out data: the candidates non-dominated by (MACs, top-1 error on
   the ``val`` split, carved out of the training set). The Joslim reference selected on the
   test set, which flatters the front;
4. reports the front on the test split, top-1 and top-5, and its area: the mean of the test
   top-1 error step curve over MACs ratios [smallest, 1] (lower is better; the number Joslim
   minimizes). The full network is always reported when it is a candidate.

Files in ``results/``: ``NAME_eval_pareto.txt`` (the Joslim reference's format: 3 rows, cost
ratio ascending to 1.0, test top-1 %, test top-5 %; ``numpy.loadtxt`` gives shape (3, K)),
``NAME_eval_pareto.json`` (see ``evaluate_run``), the plots ``NAME_pareto.svg`` and
``NAME_curves.svg`` (the training curves train.py recorded).

    python train.py --name demo --epochs 1
    python evaluate.py --name demo                        # front, area, files in results/
    python evaluate.py --name demo --export subnets       # a standalone model per front point
    python evaluate.py --subnet subnets/demo_00_7.36M.pt  # test one of them (or several: a table)
    python evaluate.py --compare demo slim_demo           # several fronts on one plot, a table
    torchrun --nproc_per_node=2 evaluate.py --name demo   # candidates shared out over processes

A subnet file is a plain dict, ``state_dict`` of the static model plus its channel config
(``network, num_classes, model_options, widths, channels, macs, params, data``), rebuilt with
models.py and slimmable.py alone (as ``evaluate_subnet`` does)::

    saved = torch.load("subnets/demo_00_7.36M.pt", weights_only=True)
    net = slimmable.export(models.get_model(saved["network"], saved["num_classes"],
                                            **saved["model_options"]), saved["widths"])
    net.load_state_dict(saved["state_dict"])   # plain nn.Conv2d / BatchNorm2d / Linear
"""
import glob
import io
import itertools
import json
import math
import os
import sys
import time
from xml.sax.saxutils import escape

# idle OpenMP threads sleep: spinning ones stall beside other processes on shared cores (train.py
# has a thread tuner instead); a user's value wins
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import numpy as np  # noqa: E402
import torch
import torch.distributed as dist

import data
import models
import runs
import slimmable
from runs import Fail, first_line
from sampler import area_under_front, pareto_front

RESULTS_DIR = "results"
UNIFORM_COUNT = 40                       # Slim's evaluation grid (PareCO's evaluation)
CALIBRATION_IMAGES = 2048                # AutoSlim and mmrazor calibrate BN on about 2k images
MATCHED_RATIOS = (0.25, 0.5, 0.75, 1.0)  # where --compare reads top-1 off each front
# How each cost is printed and plotted (values in millions); slimmable.COSTS lists the costs.
COST_NAMES = {"macs": ("MACs", "MACs (millions)"), "params": ("params", "parameters (millions)"),
              "mmcv_flops": ("mmcv FLOPs", "FLOPs, mmcv's convention (millions)"),
              "memory": ("memory", "peak activation memory (millions of elements, batch 1)")}
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
# Flags that describe the trained run rather than this evaluation: given, they must agree with
# the checkpoint (parse_args), else the front would be measured on another setting; so must
# data.HELD_OUT_FLAGS, else on other images or on images the run trained on.
RUN_FLAGS = ("network", "lower_channel", "image_size", "scale_ratio", "slim_dataaug")
SUBNET_KEYS = ("network", "num_classes", "model_options", "widths", "state_dict", "macs", "data")


def build_parser():
    parser = runs.parser(__doc__)
    add = parser.add_argument
    add("--name", type=runs.run_name, default="demo",
        help="run to evaluate: runs/NAME/checkpoint.pt (default: demo)")
    add("--network", type=models.network_flag, metavar="NAME",
        help="network of the run (default: the checkpoint's; another one is an error)")
    add("--batch_size", type=runs.number(int, 1), default=128, metavar="N", help="images per "
        "calibration and evaluation batch (default: the run's training batch; --subnet: 128)")
    add("--lower_channel", type=runs.number(float, 0, 1, low_open=True), metavar="M", help="the "
        "smallest network's multiplier, the area's low end (default and only value: the run's)")
    add("--calib_batches", type=runs.number(int, 1), metavar="N", help="training batches that "
        f"calibrate BN for every configuration (default: about {CALIBRATION_IMAGES} images)")
    add("--cost", choices=list(slimmable.COSTS), help="the cost axis of the front, area and "
        "plot (default: the run's --cost)")
    add("--configs", nargs="+", default=[], metavar="FILE", help="evaluate these JSON channel "
        "configs instead of the run's candidates (files results/NAME_configs_*)")
    add("--uniform_points", type=runs.number(int, 2), default=UNIFORM_COUNT, metavar="N", help="a "
        f"slim run, or an unsearched random one: N uniform widths (default: {UNIFORM_COUNT})")
    add("--export", metavar="DIR", help="save each front configuration as a standalone model in DIR")
    add("--subnet", nargs="+", metavar="FILE", help="test models saved by --export on the test "
        "split; several files end with one table (target, MACs, params, top-1)")
    add("--compare", nargs="+", type=runs.run_name, metavar="NAME", help="these runs' fronts on "
        "one SVG, their areas and top-1 at matched cost ratios (runs without results: evaluated)")
    add("--out", metavar="PATH", help="--compare: SVG path (default: results/compare_NAMES.svg)")
    runs.add_process_flags(parser)
    data.add_data_args(parser)
    parser.epilog = ("Data flags, --network, --batch_size, --lower_channel and --cost default to "
                     "the values the run was trained with. Those that describe the trained run ("
                     + ", ".join(f"--{flag}" for flag in RUN_FLAGS + data.HELD_OUT_FLAGS)
                     + ") must equal its values "
                     "when given, and --val_size may not exceed the run's (a larger "
                     "held-out split would hold images it trained on); --datapath, --batch_size, "
                     "--train_size and --synthetic_test may differ.")
    return parser


def parse_args(argv=None, defaults=None, run=None):
    """The flags of ``argv`` over ``defaults`` (a dict). A value argparse refuses, one of
    ``RUN_FLAGS`` that differs from ``run`` (``(what trained, e.g. "run demo", its recorded
    flags)``; None: not given), data flags that would hold out other images than the run's
    (``data.held_out_problem``), or data flags that do not go together end the process with one
    line and exit status 2."""
    parser = build_parser()
    parser.set_defaults(**(defaults or {}))
    args = parser.parse_args(argv or [])
    name, recorded = run or (None, {})
    for flag in RUN_FLAGS:
        if flag in recorded and getattr(args, flag) not in (None, recorded[flag]):
            parser.error(f"{name} was trained with --{flag} {recorded[flag]}, not "
                         f"{getattr(args, flag)}: leave --{flag} out or give its value")
    if problem := (run and data.held_out_problem(args, recorded, name)) \
            or data.check_data_args(args):
        parser.error(problem)
    args.pin_memory = args.pin_memory and args.device != "cpu"  # pinning serves GPU copies only
    return args


def checkpoint_stamp(name):
    """[size, modification time in ns] of runs/NAME/checkpoint.pt, or None when it is gone: a
    result records it, and ``compare`` re-evaluates a run whose checkpoint was rewritten since."""
    try:
        stat = os.stat(runs.checkpoint_path(name))
    except FileNotFoundError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


# --- Which configurations --------------------------------------------------------------------


def uniform_configs(net, lower, count=UNIFORM_COUNT, kind="macs"):
    """``(configs (count, D), targets)``: ``count`` uniform configurations (one multiplier for
    every group) whose cost ``kind`` is evenly spaced from the smallest network (``lower``) to the
    full one. Channel rounding makes MACs only roughly quadratic in the multiplier, so bisection
    on the cost (never decreasing in it) brackets each target between two rounding steps; the
    nearer one is kept."""
    num_groups = len(net.width_groups)

    def cost(multipliers):
        return np.asarray(slimmable.cost(net, np.repeat(multipliers[:, None], num_groups, 1), kind),
                          float)

    targets = np.linspace(slimmable.cost(net, lower, kind), slimmable.cost(net, 1.0, kind), count)
    below, above = np.full(count, float(lower)), np.ones(count)  # cost(below) <= target <= cost(above)
    for _ in range(50):
        middle = (below + above) / 2
        reached = cost(middle) >= targets
        above, below = np.where(reached, middle, above), np.where(reached, below, middle)
    chosen = np.where(targets - cost(below) <= cost(above) - targets, below, above)
    return np.repeat(chosen[:, None], num_groups, 1), targets


def config_widths(path, net):
    try:
        return slimmable.load_config(path, net)[0]
    except ValueError as error:
        raise Fail(first_line(error)) from None


def candidate_configs(net, checkpoint, args):
    """The configurations to score on held-out data, and a phrase saying where they came from."""
    num_groups, method = len(net.width_groups), checkpoint["method"]
    ends = [[args.lower_channel] * num_groups, [1.0] * num_groups]
    if args.configs:
        return [config_widths(path, net) for path in args.configs], f"{len(args.configs)} files"
    if method == "fixed":
        return checkpoint["fixed_configs"], "the retrained --channel_config configurations"
    if method == "joslim":
        configs = np.asarray(checkpoint["sampler"]["configs"], float).reshape(-1, num_groups)
        losses = np.asarray(checkpoint["sampler"]["losses"], float).reshape(-1)
        scored = np.isfinite(losses)  # the last proposals of a run are never scored (NaN)
        front = configs[pareto_front(slimmable.cost(net, configs, args.cost),
                                     np.where(scored, losses, np.nan))]  # NaN: left out
        return ends + front.tolist(), (f"the smallest, the full network and {len(front)} "
                                       f"non-dominated of {int(scored.sum())} scored history entries")
    folder = os.path.join(runs.run_folder(args.name), "search")  # search.py's AutoSlim widths
    searched = sorted(glob.glob(os.path.join(folder, "*.json")))
    if method == "random" and searched:
        return ends + [config_widths(path, net) for path in searched], \
            f"the smallest, the full network and {len(searched)} searched configurations"
    note = f" (no {folder}/<cost>_<M>M.json yet: search.py writes them)" \
        if method == "random" else ""
    uniform = uniform_configs(net, args.lower_channel, args.uniform_points, args.cost)[0]
    return ends + uniform.tolist(), \
        f"{args.uniform_points} uniform widths evenly spaced in {COST_NAMES[args.cost][0]}{note}"


def candidate_records(net, checkpoint, args):
    """``(candidates, source)``: a JSON-ready record (see ``evaluate_run``) of each configuration
    of ``candidate_configs``, the first of those with the same channels."""
    configs, source = candidate_configs(net, checkpoint, args)
    retrained = checkpoint["method"] == "fixed" and not args.configs
    sources = checkpoint["fixed_sources"] if retrained else []
    full_macs, full_cost = slimmable.macs(net, 1.0), slimmable.cost(net, 1.0, args.cost)
    candidates = {}
    for index, widths in enumerate(configs):
        widths = slimmable.width_matrix(net, widths)[0].tolist()
        record = {"widths": widths, "channels": slimmable.group_channels(net, widths),
                  **{kind: int(cost(net, widths)) for kind, cost in slimmable.COSTS.items()}}
        record.update(macs_ratio=record["macs"] / full_macs,
                      cost_ratio=record[args.cost] / full_cost)
        if index < len(sources):
            record.update(config_file=sources[index]["file"], cost=sources[index]["cost"],
                          target=sources[index]["target"])
        candidates.setdefault(tuple(record["channels"].values()), record)
    return list(candidates.values()), source


# --- Measuring configurations, shared out over torchrun's processes --------------------------


def draw_batches(loader, count, device):
    """The first ``count`` batches of ``loader`` on ``device``, the same on every call and rank."""
    batches = [(x.to(device), y.to(device)) for x, y in data.first_batches(loader, count, seed=0)]
    if dist.is_initialized():  # data workers may augment differently per machine: rank 0's win
        for tensor in [t for batch in batches for t in batch]:
            dist.broadcast(tensor, 0)  # in place, on the device (no pickling of the images)
    return batches


def accuracy(net, loader, device):
    """Top-1 and top-5 (%), mean cross-entropy and image count of ``net`` (eval mode) on ``loader``."""
    correct1 = correct5 = loss = count = 0
    with torch.no_grad():
        for batch in loader:
            inputs, targets = batch[0].to(device), batch[1].to(device)
            logits = net(inputs).float()
            hits = logits.topk(min(5, logits.shape[1]), dim=1).indices == targets[:, None]
            correct1 += hits[:, 0].sum().item()
            correct5 += hits.any(dim=1).sum().item()
            loss += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
            count += len(targets)
    if count == 0:
        raise Fail("an evaluation split is empty; check --val_size and the dataset flags")
    return {"top1": 100 * correct1 / count, "top5": 100 * correct5 / count, "loss": loss / count,
            "images": count}


def measure(phase, records, loader, net, calibration, device, rank=0, world_size=1, export=False):
    """``{i: accuracy on loader}`` of ``net`` at each ``records[i]["widths"]``, its BN statistics
    recomputed on the ``calibration`` batches first; rank r measures i = r, r + W, ... and every
    rank gets all. ``export``: each result also holds the static subnet's ``state_dict``."""
    started, mine, results = time.time(), range(rank, len(records), world_size), {}
    for done, i in enumerate(mine, 1):
        widths = records[i]["widths"]
        slimmable.set_widths(net, widths)
        slimmable.calibrate_bn(net, calibration)
        results[i] = accuracy(net.eval(), loader, device)
        elapsed = time.time() - started
        print(f"  {phase} [{i + 1}/{len(records)}] MACs {millions(records[i]['macs'])} "
              f"({100 * records[i]['macs_ratio']:.1f}%) top-1 {results[i]['top1']:.2f}  "
              f"{elapsed:.0f} s, eta {elapsed / done * (len(mine) - done):.0f} s", flush=True)
        if export:
            results[i]["state_dict"] = {key: value.cpu() for key, value in
                                        slimmable.export(net, widths).state_dict().items()}
    return runs.gather_dict(results)


# --- One run ---------------------------------------------------------------------------------


def evaluate_run(name, argv=None):
    """Evaluate run ``name`` (flags from ``argv``, e.g. ``["--calib_batches", "2"]``), write its
    result files and return the JSON content (on rank 0; None on the other ranks):

    ``name, network, method, num_classes, model_options, dataset, lower_channel, calib_batches,
    calib_images, source, cost, full_cost, full_macs, full_params, full_mmcv_flops,
    smallest_ratio, area, seconds, checkpoint_stamp, points, candidates, training_curves``.
    ``cost`` names the front's axis (a key of ``slimmable.COSTS``), ``full_cost`` is the full
    network's. A candidate: ``widths``, ``channels`` (per group), every cost of ``slimmable.COSTS``
    (``macs``, ``params``, ``mmcv_flops``, ``memory`` in elements), ``macs_ratio`` and
    ``cost_ratio`` (to the full network's), ``held_out`` (``{top1, top5, loss, images}``); a
    retrained one also ``config_file`` and search.py's ``cost`` and ``target`` (millions of that
    cost, or None). A point (a tested candidate, by ascending cost) adds ``test``,
    ``on_held_out_front`` (False for a candidate tested although a cheaper one beats it on
    held-out data: the full network, or a configuration retrained by --method fixed) and
    ``subnet`` (the --export file or None). ``area``: mean test top-1 error (%) of the step
    curve over cost ratios [smallest_ratio, 1], or None where that is empty.
    """
    stamp, start = checkpoint_stamp(name), time.time()
    args, checkpoint, net, loaders, device, rank, world_size = load_run(name, argv)
    candidates, source = candidate_records(net, checkpoint, args)
    calibration = draw_batches(loaders.train, args.calib_batches or
                               math.ceil(CALIBRATION_IMAGES / args.batch_size), device)
    if not calibration:
        raise Fail("the training split is smaller than one batch; lower --batch_size")
    if rank == 0:
        unfinished = "" if checkpoint["finished"] else f" (unfinished, step {checkpoint['step']})"
        print(f"{name}: {checkpoint['method']} run of {args.network}{unfinished}; "
              f"{len(candidates)} candidates: {source}; BN calibrated on {len(calibration)} "
              f"training batches; front selected on {len(loaders.val.dataset)} held-out images, "
              f"reported on {len(loaders.test.dataset)} test images")
    shared = dict(net=net, calibration=calibration, device=device, rank=rank, world_size=world_size)
    for i, result in measure("held-out", candidates, loaders.val, **shared).items():
        candidates[i]["held_out"] = result
    front = set(pareto_front([c[args.cost] for c in candidates],
                             [100 - c["held_out"]["top1"] for c in candidates]).tolist())
    # Also tested: the full network (the Joslim reference's anchor) and every retrained
    # configuration (one with a config_file), a model of its own trained for its target.
    chosen = sorted(front | {i for i, c in enumerate(candidates)
                             if c["macs_ratio"] == 1.0 or "config_file" in c},
                    key=lambda i: (candidates[i][args.cost], candidates[i]["macs"]))
    tested = measure("test", [candidates[i] for i in chosen], loaders.test,
                     export=bool(args.export), **shared)
    if rank != 0:
        return None
    result = result_record(args, checkpoint, net, candidates, chosen, front, tested, {
        "dataset": loaders.dataset, "calib_batches": len(calibration),
        "calib_images": sum(len(y) for _, y in calibration), "source": source,
        "seconds": time.time() - start, "checkpoint_stamp": stamp})
    write_results(result, os.path.join(RESULTS_DIR, name + ("_configs" if args.configs else "")))
    return result


def load_run(name, argv):
    """``(args, checkpoint, net, loaders, device, rank, world size)`` of run ``name``: flags in
    ``argv`` over those recorded at training (``RUN_FLAGS`` must equal them), its trained network
    on its device and its data; refused before any work when they do not fit, there is no
    held-out split to select on, or the result folders cannot be written."""
    path = runs.checkpoint_path(name)
    if not os.path.exists(path):
        raise Fail(f"no checkpoint at {path}; train it first: python train.py --name {name}")
    checkpoint = runs.load_checkpoint(path, ("model", "network", "num_classes", "method", "args"))
    recorded = checkpoint["args"]
    # --network is not inherited: argparse would check the recorded one as if the user gave it
    inherited = data.data_flag_names() | {"batch_size", "lower_channel", "cost"}
    args = parse_args(argv, {key: recorded[key] for key in inherited if key in recorded},
                      (f"run {name}", recorded))
    args.name, args.network = name, args.network or checkpoint["network"]
    if args.export and os.path.exists(args.export) and not os.path.isdir(args.export):
        raise Fail(f"--export {args.export} is a file; pass a folder (made when missing)")
    for folder in [RESULTS_DIR] + ([args.export] if args.export else []):
        runs.writable(folder)  # refused now, not after the whole evaluation
    # Built before the process group exists, so that every process sees the whole splits
    # (data.py shards them under torch.distributed): a process evaluates whole configurations.
    loaders = data.get_loaders(args, args.batch_size, eval_batch_size=args.batch_size)
    device, rank, world_size = runs.start(args.device, args.threads, set_threads=False)
    try:
        net = models.get_model(checkpoint["network"], checkpoint["num_classes"],
                               **checkpoint["model_options"])
    except ValueError as error:  # e.g. the FILE.py of a --network FILE.py:FUNCTION run is gone
        raise Fail(f"cannot rebuild the network of run {name}: {error}") from None
    runs.load_weights(net, checkpoint["model"], path)
    if loaders.num_classes != checkpoint["num_classes"]:
        raise Fail(f"the data has {loaders.num_classes} classes, run {name} was trained on "
                   f"{checkpoint['num_classes']}; pass the run's --dataset")
    if loaders.val is None:
        raise Fail("no held-out split to select the front on; pass --val_size N (N > 0)")
    return args, checkpoint, net.to(device), loaders, device, rank, world_size


def result_record(args, checkpoint, net, candidates, chosen, front, tested, facts):
    """``evaluate_run``'s result: the tested points (indices ``chosen`` of ``candidates``, those
    in ``front`` non-dominated on held-out data), with --export each saved as a subnet file (the
    static model's state_dict plus its channel config), the area under their test top-1 error
    front, the run's identity and the ``facts`` of this evaluation (data, calibration, time)."""
    data_args = {key: getattr(args, key) for key in sorted(data.data_flag_names())
                 if isinstance(getattr(args, key), (int, float, str))}
    points = []
    for k, i in enumerate(chosen):
        state_dict = tested[k].pop("state_dict", None)
        point = {**candidates[i], "test": tested[k], "on_held_out_front": i in front,
                 "subnet": None}
        if args.export:
            point["subnet"] = os.path.join(args.export,
                                           f"{args.name}_{k:02d}_{millions(point['macs'])}.pt")
            runs.save_checkpoint(point["subnet"], {
                "state_dict": state_dict, "network": args.network,
                "num_classes": checkpoint["num_classes"],
                "model_options": checkpoint["model_options"], "run": args.name,
                **{key: point[key] for key in ("widths", "channels", "macs", "params", "mmcv_flops",
                                               "held_out", "test", "cost", "target", "config_file")
                   if key in point}, "data": data_args})
        points.append(point)
    kind, full_cost = args.cost, slimmable.cost(net, 1.0, args.cost)
    smallest_ratio = slimmable.cost(net, args.lower_channel, kind) / full_cost
    errors = [100 - p["test"]["top1"] for p in points]
    # --lower_channel 1: the smallest network is the full one, [smallest, 1] holds no range
    area = area_under_front([p["cost_ratio"] for p in points], errors, smallest_ratio, 1.0) \
        if smallest_ratio < 1 else None
    return {"name": args.name, "network": args.network, "method": checkpoint["method"],
            "num_classes": checkpoint["num_classes"], "model_options": checkpoint["model_options"],
            "lower_channel": args.lower_channel, **facts, "cost": kind, "full_cost": full_cost,
            "full_macs": slimmable.macs(net, 1.0), "full_params": slimmable.params(net, 1.0),
            "full_mmcv_flops": slimmable.mmcv_flops(net, 1.0), "smallest_ratio": smallest_ratio,
            "area": area, "points": points, "candidates": candidates,
            "training_curves": checkpoint["curves"]}


def area_text(result, digits=2):
    return "none" if result["area"] is None else f"{result['area']:.{digits}f}"


def millions(count):
    return f"{count / 1e6:.2f}M"


def test_curve(result, label):
    """``front_svg``'s curve of a result's tested points: (cost in millions, test top-1 %)."""
    return {"label": label, "end": result["full_cost"] / 1e6, "points": [
        (p[result["cost"]] / 1e6, p["test"]["top1"]) for p in result["points"]]}


def print_table(columns, rows):
    """``rows`` (lists of strings) under ``columns`` (``(header, width)``): each cell right-aligned
    in its width, left-aligned where the width is negative."""
    for cells in [[header for header, _ in columns], *rows]:
        print("".join(f"{cell:<{-width}}" if width < 0 else f"{cell:>{width}}"
                      for cell, (_, width) in zip(cells, columns)))


def write_results(result, stem):
    """The reference's 3-row text file, the JSON, the SVG plots; a table and the area on stdout."""
    points, kind = result["points"], result["cost"]
    name, x_label = COST_NAMES[kind]
    text = io.StringIO()
    np.savetxt(text, np.array([[p["cost_ratio"], p["test"]["top1"], p["test"]["top5"]]
                               for p in points]).T)
    runs.write_atomic(f"{stem}_eval_pareto.txt", text.getvalue())
    runs.write_json(f"{stem}_eval_pareto.json", result)
    curves = [test_curve(result, "test top-1, front selected on held-out"),
              {"label": "held-out top-1, every candidate", "dots_only": True,
               "points": [(c[kind] / 1e6, c["held_out"]["top1"]) for c in result["candidates"]]}]
    runs.write_atomic(f"{stem}_pareto.svg", front_svg(curves, (
        f"{result['name']}: {result['method']} {result['network']}, area {area_text(result)} "
        f"(mean test top-1 error %)"), x_label))
    if result["training_curves"]:
        runs.write_atomic(f"{stem}_curves.svg", training_curves_svg(
            result["training_curves"], f"{result['name']}: training curves"))
    other = kind != "macs"  # the front's cost first (a count), then MACs too
    print_table([(name, 12 if other else 10), ("ratio", 8)] + [("MACs", 10)] * other + [
        ("params", 11), ("mmcv FLOPs", 12), ("held-out top-1", 16), ("test top-1", 12),
        ("test top-5", 12), ("", 0)], [
        [f"{p[kind]:,}" if other else millions(p[kind]), f"{p['cost_ratio']:.3f}"]
        + [millions(p["macs"])] * other + [f"{p['params']:,}", millions(p["mmcv_flops"])]
        + [f"{top1:.2f}" for top1 in (p["held_out"]["top1"], p["test"]["top1"], p["test"]["top5"])]
        + ["" if p["on_held_out_front"] else "  (tested although dominated on held-out)"]
        for p in points])
    span = f"% error averaged over {name} ratios {result['smallest_ratio']:.3f}..1; lower is " \
        "better" if result["area"] is not None else "the smallest network costs as much as the " \
        f"full one: no range of {name} ratios to average over"
    print(f"area under the test top-1 error front: {area_text(result, 3)} ({span})")
    exported = [p["subnet"] for p in points if p["subnet"]]
    print(f"wrote {stem}_eval_pareto.txt, .json, {stem}_pareto.svg"
          + (f", {stem}_curves.svg" if result["training_curves"] else "")
          + (f" and {len(exported)} subnets in {os.path.dirname(exported[0])}" if exported else "")
          + f" ({result['seconds']:.1f} s)")


# --- Standalone subnets (AutoSlim's "split checkpoint", the Joslim reference's "test a subnet")


def evaluate_subnet(path, argv=None, loaders_cache=None):
    """Test a subnet saved by ``--export`` on the test split (data flags: as recorded, unless
    given in ``argv``). ``loaders_cache``: a dict that keeps the loaders of each set of data flags
    between calls."""
    record = runs.load_checkpoint(path, SUBNET_KEYS,
                                  "a subnet file written by evaluate.py --export")
    try:  # the recipe of this file's docstring: plain torch layers
        net = slimmable.export(models.get_model(record["network"], record["num_classes"],
                                                **record["model_options"]), record["widths"])
        net.load_state_dict(record["state_dict"])
    except Exception as error:  # missing, truncated or foreign
        raise Fail(f"cannot load subnet {path}: {first_line(error)}") from None
    args = parse_args(argv, record["data"], (f"subnet {path}", record["data"]))
    cache = {} if loaders_cache is None else loaders_cache
    key = repr(sorted(record["data"].items()))
    if key not in cache:  # subnets exported from one run share their data (argv is the same)
        cache[key] = data.get_loaders(args, args.batch_size, eval_batch_size=args.batch_size)
    device = runs.start(args.device, args.threads, set_threads=False)[0]
    result = accuracy(net.eval().to(device), cache[key].test, device)  # the whole test split
    counted = sum(p.numel() for p in net.parameters())
    print(f"{path}: {record['network']} at {millions(record['macs'])} MACs, {counted:,} params; "
          f"test top-1 {result['top1']:.2f}, top-5 {result['top5']:.2f} on {result['images']} "
          f"{cache[key].dataset} images")
    return {**result, "macs": record["macs"], "params": counted,
            "mmcv_flops": slimmable.mmcv_flops(net), "cost": record.get("cost"),
            "target": record.get("target")}


def evaluate_subnets(paths, argv=None):
    """``evaluate_subnet`` for each file; with several, one table at the end (the last step of
    AutoSlim's pipeline: target, MACs, params and test accuracy of each standalone model)."""
    loaders_cache = {}
    rows = [(path, evaluate_subnet(path, argv, loaders_cache)) for path in paths]
    if len(rows) > 1:
        print()
        print_table([("subnet", -40), ("target", 22), ("MACs", 10), ("params", 11),
                     ("mmcv_flops", 12), ("top-1", 8), ("top-5", 8)], [
            [os.path.basename(path),
             slimmable.target_label(row["cost"], row["target"]) if row["target"] else "-",
             millions(row["macs"]), f"{row['params']:,}", millions(row["mmcv_flops"]),
             f"{row['top1']:.2f}", f"{row['top5']:.2f}"] for path, row in rows])
    return rows


# --- Plots: plain SVG text -------------------------------------------------------------------


def nice_ticks(low, high, count=6):
    """Round tick values (1, 2, 2.5 or 5 times a power of ten) covering [low, high]."""
    raw = max(high - low, 1e-9) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9)
    return [round((first + k) * step, 10) for k in range(int((high - first * step) / step + 1e-9) + 1)]


def step_curve(points, right_end=0.0):
    """The staircase of the best accuracy at each cost (a worse, costlier point does not lower it)."""
    path, best = [], None
    for x, y in sorted(points):
        if best is None or y > best:
            path += ([(x, best)] if best is not None else []) + [(x, y)]
            best = y
    return path + [(max(right_end, path[-1][0]), best)] if path else path


def tag(name, text=None, **attributes):
    """One SVG element; ``text_anchor="end"`` is written text-anchor, ``class_`` class."""
    written = " ".join(f'{key.rstrip("_").replace("_", "-")}="{value}"'
                       for key, value in attributes.items())
    return f"<{name} {written}/>" if text is None else f"<{name} {written}>{escape(str(text))}</{name}>"


def front_svg(curves, title, x_label="MACs (millions)", y_label="top-1 accuracy (%)", offset=0,
              legend_top=False):
    """An SVG plot of curves ``{"label", "points": [(x, y)], "end", "dots_only", "line"}``: each
    one's points and (unless dots_only) its step curve up to x = ``end``, or the straight lines
    through its points when ``line``; axes, ticks, legend (top right when ``legend_top``, for
    falling curves; else bottom right). ``offset``: the plot's y inside ``panels_svg``."""
    width, height, left, right, top, bottom = 760, 480, 72, 24, 44, 56
    xs = [x for c in curves for x, _ in c["points"]] + [c.get("end", 0.0) for c in curves]
    ys = [y for c in curves for _, y in c["points"]] or [0.0]
    x_high, pad = max(xs + [1e-9]) * 1.04, max(max(ys) - min(ys), 2.0) * 0.08
    y_low, y_high = max(0.0, min(ys) - pad), min(100.0, max(ys) + pad)

    def sx(x):
        return round(left + (width - left - right) * x / x_high, 1)

    def sy(y):
        return round(height - bottom - (height - top - bottom) * (y - y_low) / (y_high - y_low), 1)

    middle, grid, legend_height = (top + height - bottom) / 2, "#e5e5e5", 18 * len(curves)
    legend_x = width - right - 310
    legend_y = top + 8 if legend_top else height - bottom - 10 - legend_height
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" y="{offset}" width="{width}" '
           f'height="{height}" font-family="sans-serif" font-size="12">',
           tag("rect", width=width, height=height, fill="white"),
           tag("text", title, x=width / 2, y=24, text_anchor="middle", font_size=15)]
    for t in nice_ticks(0.0, x_high):
        out += [tag("line", x1=sx(t), y1=top, x2=sx(t), y2=height - bottom, stroke=grid),
                tag("text", f"{t:g}", x=sx(t), y=height - bottom + 16, text_anchor="middle")]
    for t in nice_ticks(y_low, y_high):
        out += [tag("line", x1=left, y1=sy(t), x2=width - right, y2=sy(t), stroke=grid),
                tag("text", f"{t:g}", x=left - 6, y=sy(t) + 4, text_anchor="end")]
    out += [tag("rect", x=left, y=top, width=width - left - right, height=height - top - bottom,
                fill="none", stroke="black"),
            tag("text", x_label, x=(left + width - right) / 2, y=height - 14, text_anchor="middle"),
            tag("text", y_label, x=18, y=middle, text_anchor="middle",
                transform=f"rotate(-90 18 {middle})"),
            tag("rect", x=legend_x, y=legend_y, width=302, height=legend_height + 4,
                fill="white", fill_opacity=0.85, stroke="#cccccc")]
    colors = itertools.cycle(COLORS)  # grey dots take no color
    for index, curve in enumerate(curves):
        dots_only, line = curve.get("dots_only", False), curve.get("line", False)
        color = "#999999" if dots_only else next(colors)
        out.append(f'<g class="{"dots" if dots_only else "run"}" fill="{color}">')
        if not dots_only and curve["points"]:
            path = curve["points"] if line else step_curve(curve["points"], curve.get("end", 0.0))
            out.append(tag("polyline", class_="front", points=" ".join(
                f"{sx(x)},{sy(y)}" for x, y in path), fill="none", stroke=color, stroke_width=2))
        out += [tag("circle", cx=sx(x), cy=sy(y), r=2.5 if dots_only or line else 4)
                for x, y in curve["points"]]
        row_y = legend_y + 16 + 18 * index
        out += [tag("circle", cx=legend_x + 12, cy=row_y - 4, r=4),
                tag("text", curve["label"], x=legend_x + 22, y=row_y, fill="black"), "</g>"]
    return "\n".join(out + ["</svg>"]) + "\n"


def panels_svg(panels, title):
    """``front_svg`` plots against the training step, one per ``(y_label, curves)`` of ``panels``,
    stacked in one SVG, each titled ``title``."""
    plots = [front_svg(curves, title, "training step", y_label, offset=480 * k,
                       legend_top="loss" in y_label) for k, (y_label, curves) in enumerate(panels)]
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="760" height="{480 * len(plots)}">\n'
            + "".join(plots) + "</svg>\n")


def training_curves_svg(points, title):
    """train.py's training curves (the points of ``runs/NAME/curves.json``), two plots stacked:
    the full and the smallest network's training loss, then their held-out top-1, by step."""
    panels = []
    for y_label, key in (("training loss (full: labels; smallest: its students' loss)", "loss"),
                         ("held-out top-1 (%, BN batch statistics)", "top1")):
        curves = [{"label": end, "line": True, "points": [(p["step"], p[f"{end}_{key}"])
                                                          for p in points if f"{end}_{key}" in p]}
                  for end in ("full", "smallest")]
        panels.append((y_label, [curve for curve in curves if curve["points"]]))
    return panels_svg([(y_label, curves) for y_label, curves in panels if curves], title)


# --- Several runs ----------------------------------------------------------------------------


def top1_at(points, ratio):
    """The step curve at ``ratio``: best test top-1 among points with cost ratio <= ratio, or None."""
    affordable = [p["test"]["top1"] for p in points if p["cost_ratio"] <= ratio + 1e-9]
    return max(affordable) if affordable else None


def compare(names, out_path=None, argv=None):
    """Plot the test fronts of runs ``names`` on one SVG; print their areas and top-1 at matched
    cost ratios; return one row per run, ``{"name", "network", "method", "area", "top1_at":
    {ratio: top1 or None}}`` (rank 0; [] on the others). A run is evaluated first (``argv`` as
    for ``evaluate_run``) without ``results/NAME_eval_pareto.json``, when its checkpoint was
    rewritten since (``checkpoint_stamp``) or the result is against another cost than an explicit
    ``--cost``; one whose run folder is gone is plotted as it is. Fronts against different
    costs are refused (``Fail``)."""
    wanted = build_parser().parse_args(argv or []).cost
    results = []
    for name in names:
        path, stamp = os.path.join(RESULTS_DIR, f"{name}_eval_pareto.json"), checkpoint_stamp(name)
        try:  # a result file that cannot be read is evaluated again
            with open(path) as handle:
                saved = json.load(handle)
        except (OSError, ValueError, RecursionError):
            saved = None
        if saved and stamp is not None and (saved["checkpoint_stamp"] != stamp
                                            or wanted not in (None, saved["cost"])):
            print(f"{path} is older than runs/{name}/checkpoint.pt, or against another cost: "
                  f"evaluating it again")
            saved = None
        results.append(saved or evaluate_run(name, argv))
    if any(result is None for result in results):  # not rank 0 of a torchrun job
        return []
    kinds = sorted({r["cost"] for r in results})
    if len(kinds) > 1:
        raise Fail(f"the runs' fronts are against different costs ({', '.join(kinds)}); pass "
                   f"--cost {kinds[0]} to compare them on one axis")
    cost_name, x_label = COST_NAMES[kinds[0]]
    out_path = out_path or os.path.join(RESULTS_DIR, f"compare_{'_'.join(names)}.svg")
    curves = [test_curve(r, f"{r['name']} ({r['method']}, area {area_text(r)})") for r in results]
    runs.write_atomic(out_path, front_svg(
        curves, f"test top-1 vs {cost_name} (fronts selected on held-out data)", x_label))
    rows = [{"name": r["name"], "network": r["network"], "method": r["method"], "area": r["area"],
             "top1_at": {level: top1_at(r["points"], level) for level in MATCHED_RATIOS}}
            for r in results]
    width = max([len("run")] + [len(row["name"]) for row in rows]) + 2
    print_table([("run", -width), ("network", -24), ("method", -8), ("area", 8)]
                + [(f"top1@{100 * level:g}%", 12) for level in MATCHED_RATIOS], [
        [row["name"], row["network"], row["method"], area_text(row, 3)]
        + ["-" if v is None else f"{v:.2f}" for v in row["top1_at"].values()] for row in rows])
    print(f"area: mean test top-1 error (%) over {cost_name} ratios [smallest, 1], lower is "
          f"better; top1@X%: best test top-1 within X% of the full network's {cost_name}. "
          f"Plot: {out_path}")
    return rows


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)  # which job only: parsed again over the recorded flags
    job = (evaluate_subnets, args.subnet, argv) if args.subnet else \
        (compare, args.compare, args.out, argv) if args.compare else (evaluate_run, args.name, argv)
    return runs.cli(*job, user_errors=(data.DataError,),
                    interrupted="interrupted: rerun to evaluate again")


if __name__ == "__main__":
    sys.exit(main())
