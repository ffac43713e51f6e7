"""Evaluate a trained slimmable network: its cost-vs-accuracy Pareto front, files, plots, subnets.

A slimmable network is judged by a curve: the best top-1 accuracy it reaches at each cost.
The cost is the run's ``--cost`` (a key of ``slimmable.COSTS``; ``--cost`` here overrides it):
multiply-accumulates ("MACs", the papers' "FLOPs") by default, or parameters, or the peak
activation memory of inference (``slimmable.memory``). Below, "MACs" stands for that cost.
For a run of train.py this script

1. takes candidate configurations. Joslim (Chin et al., ECML-PKDD'21): the non-dominated
   (cost, loss) entries of the sampler's history. Slim (US-Nets): 40 uniform widths evenly
   spaced in MACs, found by bisection (channel rounding makes MACs only roughly quadratic in
   the multiplier). AutoSlim (method ``random``): search.py's ``runs/NAME/search/*.json``
   (without them, the 40 uniform widths). All three add the smallest and the full network.
   ``fixed``: the retrained configurations, every one reported (each is a model of its own,
   trained for its target). ``--configs FILE...``: any channel configs;
2. calibrates BN for each one: training leaves running statistics that mix every width, so each
   candidate gets its own, averaged over the same ``--calib_batches`` training batches;
3. selects the front on held-out data: every candidate is scored on the ``val`` split (carved
   out of the training set) and the non-dominated ones by (MACs, held-out top-1 error) are
   kept. The reference selected on the test set, which flatters the front (digest Sec. 8.7);
4. reports the front on the test split, top-1 and top-5, and the area under the test top-1
   error step curve over MACs ratios [smallest, 1], divided by that range (lower is better;
   digest Sec. 6). The full network is always reported when it is a candidate.

Files in ``results/``: ``NAME_eval_pareto.txt`` (the reference's format: 3 rows, cost ratio
ascending to 1.0, test top-1 %, test top-5 %; ``numpy.loadtxt`` gives shape (3, K)),
``NAME_eval_pareto.json`` (see ``evaluate_run``) and the plot ``NAME_pareto.svg``.

    python train.py --name demo --epochs 1
    python evaluate.py --name demo                        # front, area, files in results/
    python evaluate.py --name demo --export subnets       # a standalone model per front point
    python evaluate.py --subnet subnets/demo_00_7.36M.pt  # test one of them (or several: a table)
    python evaluate.py --compare demo slim_demo           # several fronts on one plot, a table
    torchrun --nproc_per_node=2 evaluate.py --name demo   # candidates shared out over processes

A subnet file is a plain dict, ``state_dict`` of the static model plus its channel config
(``network, num_classes, model_options, widths, channels, macs, params``), rebuilt with
models.py and slimmable.py alone (all that ``load_subnet`` does)::

    saved = torch.load("subnets/demo_00_7.36M.pt", weights_only=True)
    net = slimmable.export(models.get_model(saved["network"], saved["num_classes"],
                                            **saved["model_options"]), saved["widths"])
    net.load_state_dict(saved["state_dict"])   # plain nn.Conv2d / BatchNorm2d / Linear
"""
import argparse
import glob
import io
import json
import math
import os
import sys
import time
from xml.sax.saxutils import escape

# idle OpenMP threads sleep: spinning ones stall beside other processes (README, "CPU
# contention"; train.py has a thread tuner instead); a user's value wins
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import numpy as np  # noqa: E402
import torch
import torch.distributed as dist
import torch.nn.functional as F

import data
import models
import runs
import slimmable
from runs import Fail, first_line
from sampler import area_under_front, pareto_front

RUNS_DIR, RESULTS_DIR = "runs", "results"
UNIFORM_COUNT = 40                       # Slim's evaluation grid (PareCO's evaluation)
CALIBRATION_IMAGES = 2048                # AutoSlim and mmrazor calibrate BN on about 2k images
MATCHED_RATIOS = (0.25, 0.5, 0.75, 1.0)  # where --compare reads top-1 off each front
# How each cost is printed and plotted (values in millions); slimmable.COSTS lists the costs.
COST_NAMES = {"macs": ("MACs", "MACs (millions)"), "params": ("params", "parameters (millions)"),
              "mmcv_flops": ("mmcv FLOPs", "FLOPs, mmcv's convention (millions)"),
              "memory": ("memory", "peak activation memory (millions of elements, batch 1)")}
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.error = lambda message: parser.exit(2, f"error: {message}\n")
    add = parser.add_argument
    add("--name", default="demo", help="run to evaluate: runs/NAME/checkpoint.pt (default: demo)")
    add("--network", choices=list(models.NETWORKS), metavar="NAME",
        help="network of the run (default: the checkpoint's; another one is an error)")
    add("--batch_size", type=int, metavar="N",
        help="images per calibration and evaluation batch (default: the run's training batch)")
    add("--lower_channel", type=float, metavar="M", help="multiplier of the smallest network, "
        "also the low end of the area (default: the run's; another one is an error)")
    add("--calib_batches", type=int, metavar="N", help="training batches that calibrate BN for "
        f"each configuration, the same for all (default: about {CALIBRATION_IMAGES} images)")
    add("--cost", choices=list(slimmable.COSTS), help="the cost axis of the front, area and "
        "plot (default: the run's --cost, else macs)")
    add("--configs", nargs="+", default=[], metavar="FILE", help="evaluate these JSON channel "
        "configs instead of the run's candidates (files results/NAME_configs_*)")
    add("--export", metavar="DIR", help="save each front configuration as a standalone model in DIR")
    add("--subnet", nargs="+", metavar="FILE", help="test models saved by --export on the test "
        "split; several files end with one table (target, MACs, params, top-1)")
    add("--compare", nargs="+", metavar="NAME", help="plot the fronts of these runs on one SVG, "
        "print their areas and top-1 at matched cost ratios (runs without results are evaluated)")
    add("--out", metavar="PATH", help="--compare: SVG path (default: results/compare_NAMES.svg)")
    add("--device", default="auto", help="auto (CUDA when available), cpu, cuda")
    add("--threads", type=int, default=0, help="CPU threads per process (0: cores / processes)")
    data.add_data_args(parser)
    parser.epilog = ("Data flags, --network, --batch_size, --lower_channel and --cost default to "
                     "the values the run was trained with. Those that describe the trained run ("
                     + ", ".join(f"--{flag}" for flag in RUN_FLAGS) + ") must equal its values "
                     "when given (the reference's eval_checkpoints.py repeats the training "
                     "flags); --datapath, --batch_size and the split sizes may differ.")
    return parser


FLAG_RULES = {  # flag: (test of its value, what it must be), checked by parse_args; unset: None
    "batch_size": (lambda v: v >= 1, "at least 1"),
    "lower_channel": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "calib_batches": (lambda v: v >= 1, "at least 1"),
    "threads": (lambda v: v >= 0, "0 (automatic) or more"),
    "device": (lambda v: v in ("auto", "cpu", "cuda") or v.startswith("cuda:"),
               "auto, cpu, cuda or cuda:N"),
}
# Flags that describe the trained run rather than this evaluation: given, they must agree with
# the checkpoint (run_settings), else the front would be measured on another setting.
RUN_FLAGS = ("network", "dataset", "lower_channel", "image_size", "scale_ratio", "slim_dataaug")


def parse_args(argv=None, defaults=None, run=None):
    """The flags of ``argv`` over ``defaults`` (a dict), every value checked here, in one place:
    an invalid one, or one of ``RUN_FLAGS`` that differs from ``run`` (``(name, the run's
    recorded flags)``), ends the process with one line and exit status 2."""
    parser = build_parser()
    parser.set_defaults(**(defaults or {}))
    args = parser.parse_args(argv if argv is not None else [])
    problem = data.flag_problem(args, FLAG_RULES)
    if problem:
        parser.error(problem)
    name, recorded = run or (None, {})
    for flag in RUN_FLAGS:  # a checkpoint from an older version may not record every flag
        if flag in recorded and getattr(args, flag) != recorded[flag]:
            parser.error(f"run {name} was trained with --{flag} {recorded[flag]}, not "
                         f"{getattr(args, flag)}: leave --{flag} out or give the run's value")
    problem = data.check_data_args(args)
    if problem:
        parser.error(problem)
    return args


def data_flags():
    probe = argparse.ArgumentParser(add_help=False)
    data.add_data_args(probe)
    return set(vars(probe.parse_args([])))


def load_checkpoint(name):
    path = os.path.join(RUNS_DIR, name, "checkpoint.pt")
    if not os.path.exists(path):
        raise Fail(f"no checkpoint at {path}; train it first: python train.py --name {name}")
    try:
        checkpoint = runs.load_checkpoint(path)
    except Exception as error:  # a truncated or foreign file
        raise Fail(f"cannot read checkpoint {path}: {first_line(error)}") from None
    required = {"model", "network", "num_classes", "method"}
    if not isinstance(checkpoint, dict) or not required <= set(checkpoint):
        raise Fail(f"{path} is not a checkpoint written by train.py")
    return checkpoint


def checkpoint_stamp(name):
    """[size, modification time in ns] of runs/NAME/checkpoint.pt, or None when it is gone. A
    result file records the stamp of the checkpoint it evaluated; ``compare`` re-evaluates a run
    whose checkpoint has been rewritten since (retrained, resumed) instead of plotting stale
    figures."""
    path = os.path.join(RUNS_DIR, name, "checkpoint.pt")
    if not os.path.exists(path):
        return None
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns]


def run_settings(name, argv=None, overrides=None):
    """``(args, checkpoint)`` for run ``name``: flags given in ``argv`` or ``overrides`` win
    over the values recorded at training (data flags, network, batch size, lower channel),
    except ``RUN_FLAGS``, which must equal them (``parse_args``)."""
    checkpoint = load_checkpoint(name)
    recorded = dict(checkpoint.get("args") or {}, network=checkpoint["network"])
    if "lower_channel" in checkpoint:
        recorded["lower_channel"] = checkpoint["lower_channel"]
    inherited = data_flags() | {"network", "batch_size", "lower_channel", "cost"}
    args = parse_args(argv, {key: recorded[key] for key in inherited if key in recorded},
                      (name, recorded))
    vars(args).update({**(overrides or {}), "name": name})
    if args.lower_channel is None:
        args.lower_channel = 0.42
    args.batch_size = args.batch_size or 128
    args.cost = args.cost or "macs"  # runs from before train.py had --cost
    if args.cost not in slimmable.COSTS:
        raise Fail(f"run {name} was trained against cost {args.cost!r}, unknown here; pass "
                   f"--cost ({', '.join(slimmable.COSTS)})")
    return args, checkpoint


# ---------------------------------------------------------------------------------------------
# Which configurations


def uniform_configs(net, lower, count=UNIFORM_COUNT, kind="macs"):
    """``count`` uniform configurations (one multiplier for every group) whose cost ``kind``
    (MACs by default) is evenly spaced from the smallest network (``lower``) to the full one:
    ``(configs (count, D), targets)``.

    Bisection on the cost, which never decreases with the multiplier, brackets each target
    between two channel-rounding steps; the nearer one is kept.
    """
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


def candidate_configs(net, checkpoint, args, say):
    """The configurations to score on held-out data, and a phrase saying where they came from."""
    num_groups, method = len(net.width_groups), checkpoint["method"]
    ends = [[args.lower_channel] * num_groups, [1.0] * num_groups]
    if args.configs:
        return [config_widths(path, net) for path in args.configs], f"{len(args.configs)} files"
    if method == "joslim":
        state = runs.as_numpy(checkpoint.get("sampler") or {})
        configs = np.asarray(state.get("configs", []), float).reshape(-1, num_groups)
        losses = np.asarray(state.get("losses", []), float).reshape(-1)
        scored = np.isfinite(losses)  # the last proposals of a run are never scored
        costs = np.asarray(slimmable.cost(net, configs[scored], args.cost), float) \
            if scored.any() else np.zeros(0)
        front = configs[scored][pareto_front(costs, losses[scored])]
        return ends + front.tolist(), (f"the smallest, the full network and {len(front)} "
                                       f"non-dominated of {int(scored.sum())} scored history entries")
    if method == "fixed":
        return [list(map(float, c)) for c in checkpoint.get("fixed_configs") or []], \
            "the retrained --channel_config configurations"
    if method == "random":
        paths = searched_configs(args.name)
        if paths:
            return ends + [config_widths(path, net) for path in paths], \
                f"the smallest, the full network and {len(paths)} searched configurations"
        say(f"note: no runs/{args.name}/search/<cost>_<M>M.json yet (search.py writes AutoSlim's "
            f"widths there); evaluating {UNIFORM_COUNT} uniform widths instead")
    return ends + uniform_configs(net, args.lower_channel, kind=args.cost)[0].tolist(), \
        f"{UNIFORM_COUNT} uniform widths evenly spaced in {COST_NAMES.get(args.cost, (args.cost,))[0]}"


def searched_configs(name):
    """search.py's configurations of run ``name``: ``runs/NAME/search/<cost>_<M>M.json`` for
    every cost of ``slimmable.COSTS`` (and ``FLOPS_<M>M.json``, its name before costs had one)."""
    folder = os.path.join(RUNS_DIR, name, "search")
    patterns = [f"{kind}_*M.json" for kind in slimmable.COSTS] + ["FLOPS_*M.json"]
    return sorted({path for pattern in patterns
                   for path in glob.glob(os.path.join(folder, pattern))})


def describe(net, widths, full_macs, kind="macs", full_cost=None):
    """The cost side of one configuration, JSON-ready: every cost of ``slimmable.COSTS`` (MACs,
    params, mmcv-style FLOPs, peak activation memory in elements), ``macs_ratio`` and
    ``cost_ratio``, the ratio of cost ``kind`` to ``full_cost`` (the full network's; MACs by
    default)."""
    widths = slimmable.width_matrix(net, widths)[0].tolist()
    record = {"widths": widths, "channels": slimmable.group_channels(net, widths)}
    record.update({name: int(function(net, widths)) for name, function in slimmable.COSTS.items()})
    record["macs_ratio"] = record["macs"] / full_macs
    record["cost_ratio"] = record[kind] / (full_cost or full_macs)
    return record


# ---------------------------------------------------------------------------------------------
# Measuring one configuration; sharing the work out over torchrun's processes


def draw_batches(loader, count, device, seed=0):
    """The first ``count`` batches of ``loader``, the same on every call and every rank."""
    batches = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for batch in loader:
            batches.append((batch[0].to(device), batch[1].to(device)))
            if len(batches) == count:
                break
    if dist.is_initialized():  # data workers may augment differently per machine: rank 0's win
        for tensor in [t for batch in batches for t in batch]:
            dist.broadcast(tensor, 0)
    return batches


def accuracy(net, loader, device):
    """Top-1 and top-5 (%), mean cross-entropy and image count of ``net`` (eval mode) on ``loader``."""
    correct1 = correct5 = loss = count = 0
    net.eval()
    with torch.no_grad():
        for batch in loader:
            inputs, targets = batch[0].to(device), batch[1].to(device)
            logits = net(inputs).float()
            hits = logits.topk(min(5, logits.shape[1]), dim=1).indices == targets[:, None]
            correct1 += hits[:, 0].sum().item()
            correct5 += hits.any(dim=1).sum().item()
            loss += F.cross_entropy(logits, targets, reduction="sum").item()
            count += len(targets)
    if count == 0:
        raise Fail("an evaluation split is empty; check --val_size and the dataset flags")
    return {"top1": 100 * correct1 / count, "top5": 100 * correct5 / count, "loss": loss / count,
            "images": count}


def calibrated(net, widths, calibration_batches):
    """``net`` at ``widths``, its BN statistics recomputed on the calibration batches, eval mode."""
    slimmable.set_widths(net, widths)
    slimmable.calibrate_bn(net, calibration_batches)
    return net.eval()


def use_cuda(device_flag):
    wanted = device_flag.startswith("cuda") or (device_flag == "auto" and torch.cuda.is_available())
    if wanted and not torch.cuda.is_available():
        raise Fail("--device cuda asked for, but no CUDA device is available")
    return wanted


def setup_distributed(args):
    """``(device, rank, world size)`` (data.setup_distributed), with this script's thread count."""
    # alone, it keeps its caller's thread count (bench.py, tests)
    return runs.start(args.device, args.threads, set_threads=False)


def share_out(measure, count, rank, world_size):
    """``{i: measure(i)}`` for every i < count: rank r measures i = r, r + W, ...; all ranks get all."""
    mine = {i: measure(i) for i in range(rank, count, world_size)}
    if world_size == 1:
        return mine
    everyone = [None] * world_size
    dist.all_gather_object(everyone, mine)
    return {i: result for part in everyone for i, result in part.items()}


# ---------------------------------------------------------------------------------------------
# One run


def evaluate_run(name, overrides=None, argv=None):
    """Evaluate run ``name`` (flags from ``argv`` or ``overrides``, e.g. ``{"calib_batches": 2}``),
    write its result files and return the JSON content (on rank 0; None on the other ranks):

    ``name, network, method, num_classes, model_options, dataset, lower_channel, calib_batches,
    calib_images, source, cost, full_cost, full_macs, full_params, smallest_ratio, area,
    seconds, checkpoint_stamp, points, candidates``. ``cost`` names the front's axis (a key of
    ``slimmable.COSTS``) and ``full_cost`` is the full network's. A point (front member, by
    ascending cost): ``widths``, ``channels`` (per group), ``macs``, ``params``, ``memory``,
    ``macs_ratio``, ``cost_ratio`` (to ``full_cost``), ``held_out`` and
    ``test`` (each ``{top1, top5, loss, images}``), ``on_held_out_front`` (False only for the
    full network when a cheaper candidate beats it on held-out data) and ``subnet`` (the --export
    file or None). A candidate: the same without ``test`` and ``subnet``. ``area``: mean test
    top-1 error (%) of the step curve over cost ratios [smallest_ratio, 1].
    """
    stamp = checkpoint_stamp(name)
    args, checkpoint = run_settings(name, argv, overrides)
    start = time.time()
    # Built before the process group exists, so that every process sees the whole splits
    # (data.py shards them under torch.distributed): a process evaluates whole configurations.
    args.pin_memory = args.pin_memory and use_cuda(args.device)
    loaders = data.get_loaders(args, args.batch_size, eval_batch_size=args.batch_size)
    device, rank, world_size = setup_distributed(args)
    say = print if rank == 0 else (lambda *a, **k: None)
    net = models.get_model(checkpoint["network"], checkpoint["num_classes"],
                           **(checkpoint.get("model_options") or {}))
    net.load_state_dict({k.removeprefix("module."): v for k, v in checkpoint["model"].items()})
    net.to(device)
    if loaders.num_classes != checkpoint["num_classes"]:
        raise Fail(f"the data has {loaders.num_classes} classes, run {name} was trained on "
                   f"{checkpoint['num_classes']}; pass the run's --dataset")
    if loaders.val is None or len(loaders.val.dataset) == 0:
        raise Fail("no held-out split to select the front on; pass --val_size N (N > 0)")
    full_macs, kind = slimmable.macs(net, 1.0), args.cost
    full_cost = slimmable.cost(net, 1.0, kind)
    configs, source = candidate_configs(net, checkpoint, args, say)
    if not configs:
        raise Fail(f"run {name} has no configurations to evaluate; pass --configs FILE...")
    retrained = checkpoint["method"] == "fixed" and not args.configs
    sources = (checkpoint.get("fixed_sources") or []) if retrained else []
    candidates = {}
    for index, widths in enumerate(configs):  # of configs with the same channels, keep the first
        record = describe(net, widths, full_macs, kind, full_cost)
        if index < len(sources):  # older checkpoints: target_mflops, in MACs
            origin = sources[index]
            record.update(config_file=origin["file"], cost=origin.get("cost", "macs"),
                          target=origin.get("target", origin.get("target_mflops")))
        candidates.setdefault(tuple(record["channels"].values()), record)
    candidates = list(candidates.values())
    calib_count = args.calib_batches or math.ceil(CALIBRATION_IMAGES / args.batch_size)
    calibration = draw_batches(loaders.train, calib_count, device)
    if not calibration:
        raise Fail("the training split is smaller than one batch; lower --batch_size")
    unfinished = "" if checkpoint.get("finished", True) else \
        f" (unfinished, step {checkpoint.get('step')})"
    say(f"{name}: {checkpoint['method']} run of {args.network}{unfinished}; {len(candidates)} "
        f"candidates: {source}; BN calibrated on {len(calibration)} training batches; front "
        f"selected on {len(loaders.val.dataset)} held-out images, reported on "
        f"{len(loaders.test.dataset)} test images")

    phase_start = time.time()

    def progress(phase, i, count, record, result):
        """``phase [i+1/count] MACs ... top-1 ...``, then this process's elapsed time and the
        time its remaining configurations will take at its mean pace so far."""
        done, mine = (i - rank) // world_size + 1, len(range(rank, count, world_size))
        elapsed = time.time() - phase_start
        print(f"  {phase} [{i + 1}/{count}] MACs {record['macs'] / 1e6:.2f}M "
              f"({100 * record['macs_ratio']:.1f}%) top-1 {result['top1']:.2f}  "
              f"{elapsed:.0f} s, eta {elapsed / done * (mine - done):.0f} s", flush=True)

    def held_out(i):
        result = accuracy(calibrated(net, candidates[i]["widths"], calibration), loaders.val, device)
        progress("held-out", i, len(candidates), candidates[i], result)
        return result

    for i, result in share_out(held_out, len(candidates), rank, world_size).items():
        candidates[i]["held_out"] = result
    front = set(pareto_front([c[kind] for c in candidates],
                             [100 - c["held_out"]["top1"] for c in candidates]).tolist())
    full = {i for i, c in enumerate(candidates) if c["macs"] == full_macs}  # the reference's anchor
    # Retrained configurations are separate models, each trained for its own target: all of them
    # are reported (and exported), dominated or not.
    reported = set(range(len(candidates))) if retrained else front | full
    chosen = sorted(reported, key=lambda i: (candidates[i][kind], candidates[i]["macs"]))

    def test(k):
        widths = candidates[chosen[k]]["widths"]
        result = {"test": accuracy(calibrated(net, widths, calibration), loaders.test, device)}
        progress("test", k, len(chosen), candidates[chosen[k]], result["test"])
        if args.export:  # the statistics just calibrated go into the standalone model
            result["state_dict"] = {key: value.cpu() for key, value in
                                    slimmable.export(net, widths).state_dict().items()}
        return result

    phase_start = time.time()
    tested = share_out(test, len(chosen), rank, world_size)
    if rank != 0:
        return None
    points = []
    for k, i in enumerate(chosen):
        point = {**candidates[i], "test": tested[k]["test"], "on_held_out_front": i in front}
        point["subnet"] = save_subnet(args, checkpoint, k, point, tested[k]["state_dict"]) \
            if args.export else None
        points.append(point)
    smallest_ratio = slimmable.cost(net, args.lower_channel, kind) / full_cost
    ratios = [p["cost_ratio"] for p in points]
    area = area_under_front(ratios, [100 - p["test"]["top1"] for p in points], smallest_ratio, 1.0)
    result = {"name": name, "network": args.network, "method": checkpoint["method"],
              "num_classes": checkpoint["num_classes"],
              "model_options": checkpoint.get("model_options") or {}, "dataset": loaders.dataset,
              "lower_channel": args.lower_channel, "calib_batches": len(calibration),
              "calib_images": sum(len(y) for _, y in calibration), "source": source,
              "cost": kind, "full_cost": full_cost, "full_macs": full_macs,
              "full_params": slimmable.params(net, 1.0),
              "full_mmcv_flops": slimmable.mmcv_flops(net, 1.0),
              "smallest_ratio": smallest_ratio, "area": area, "seconds": time.time() - start,
              "checkpoint_stamp": stamp, "points": points, "candidates": candidates,
              "training_curves": checkpoint.get("curves") or []}
    write_results(result, os.path.join(RESULTS_DIR, name + ("_configs" if args.configs else "")))
    return result


def cost_kind(result):
    """The cost a result's front is drawn against (results before --cost: macs)."""
    return result.get("cost", "macs")


def full_cost(result):
    return result.get("full_cost", result["full_macs"])


def cost_ratio(point):
    return point.get("cost_ratio", point["macs_ratio"])


def write_results(result, stem):
    """The reference's 3-row text file, the JSON, the SVG plot; a table and the area on stdout."""
    points, kind = result["points"], cost_kind(result)
    name, x_label = COST_NAMES.get(kind, (kind, f"{kind} (millions)"))
    table = np.array([[cost_ratio(p) for p in points], [p["test"]["top1"] for p in points],
                      [p["test"]["top5"] for p in points]])
    text = io.StringIO()
    np.savetxt(text, table)
    runs.write_atomic(f"{stem}_eval_pareto.txt", text.getvalue())
    runs.write_json(f"{stem}_eval_pareto.json", result)
    curves = [{"label": "test top-1, front selected on held-out", "end": full_cost(result) / 1e6,
               "points": [(p[kind] / 1e6, p["test"]["top1"]) for p in points]},
              {"label": "held-out top-1, every candidate", "dots_only": True,
               "points": [(c[kind] / 1e6, c["held_out"]["top1"]) for c in result["candidates"]]}]
    svg = front_svg(curves, f"{result['name']}: {result['method']} {result['network']}, "
                            f"area {result['area']:.2f} (mean test top-1 error %)", x_label)
    runs.write_atomic(f"{stem}_pareto.svg", svg)
    curves = result.get("training_curves") or []
    if curves:
        svg = training_curves_svg([("", curves)], f"{result['name']}: training curves")
        runs.write_atomic(f"{stem}_curves.svg", svg)
    macs_column = kind != "macs"  # the front's cost first (a count), then MACs too
    print((f"{name:>12}" if macs_column else f"{name:>10}") + f"{'ratio':>8}"
          + (f"{'MACs':>10}" if macs_column else "")
          + f"{'params':>11}{'mmcv FLOPs':>12}{'held-out top-1':>16}{'test top-1':>12}"
          + f"{'test top-5':>12}")
    for p in points:
        print((f"{p[kind]:>12,}" if macs_column else f"{p[kind] / 1e6:>9.2f}M")
              + f"{cost_ratio(p):>8.3f}"
              + (f"{p['macs'] / 1e6:>9.2f}M" if macs_column else "") + f"{p['params']:>11,}"
              + f"{p['mmcv_flops'] / 1e6:>11.2f}M"
              f"{p['held_out']['top1']:>16.2f}{p['test']['top1']:>12.2f}{p['test']['top5']:>12.2f}"
              + ("" if p["on_held_out_front"] else "  (full network, dominated on held-out)"))
    print(f"area under the test top-1 error front: {result['area']:.3f} (% error averaged over "
          f"{name} ratios {result['smallest_ratio']:.3f}..1; lower is better)")
    exported = [p["subnet"] for p in points if p["subnet"]]
    print(f"wrote {stem}_eval_pareto.txt, .json, {stem}_pareto.svg"
          + (f", {stem}_curves.svg" if curves else "")
          + (f" and {len(exported)} subnets in {os.path.dirname(exported[0])}" if exported else "")
          + f" ({result['seconds']:.1f} s)")


# ---------------------------------------------------------------------------------------------
# Standalone subnets (AutoSlim's "split checkpoint", the reference's "test a subnet")


def save_subnet(args, checkpoint, index, point, state_dict):
    """One file per front point: the static model's state_dict plus its channel config."""
    path = os.path.join(args.export, f"{args.name}_{index:02d}_{point['macs'] / 1e6:.2f}M.pt")
    data_args = {key: getattr(args, key) for key in sorted(data_flags())
                 if isinstance(getattr(args, key, None), (int, float, str))}
    record = {"state_dict": state_dict, "network": args.network,
              "num_classes": checkpoint["num_classes"],
              "model_options": checkpoint.get("model_options") or {}, "run": args.name,
              **{key: point[key] for key in ("widths", "channels", "macs", "params", "mmcv_flops",
                                             "held_out", "test", "cost", "target", "config_file")
                 if key in point}, "data": data_args}
    runs.save_checkpoint(path, record)
    return path


SUBNET_KEYS = {"network", "num_classes", "model_options", "widths", "state_dict"}


def load_subnet(path):
    """``(model, record)``: the plain torch model saved by ``--export`` (eval mode) and its dict."""
    not_a_subnet = f"{path} is not a subnet file written by evaluate.py --export"
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise Fail(f"no subnet file at {path}") from None
    except Exception:  # truncated, or a pickle that is not plain tensors and containers
        raise Fail(not_a_subnet) from None
    if not isinstance(record, dict) or not SUBNET_KEYS <= set(record):
        raise Fail(not_a_subnet)
    try:
        net = slimmable.export(models.get_model(record["network"], record["num_classes"],
                                                **record["model_options"]), record["widths"])
        net.load_state_dict(record["state_dict"])
    except Exception as error:  # missing, truncated or foreign
        raise Fail(f"cannot load subnet {path}: {first_line(error)}") from None
    return net.eval(), record


def evaluate_subnet(path, argv=None, loaders_cache=None):
    """Test a saved subnet on the test split (data flags: as recorded, unless given in ``argv``).
    ``loaders_cache``: a dict that keeps the loaders of each set of data flags between calls."""
    net, record = load_subnet(path)
    args = parse_args(argv, record.get("data", {}))
    batch_size = args.batch_size or 128
    args.pin_memory = args.pin_memory and use_cuda(args.device)
    key = (batch_size, tuple(sorted((k, str(getattr(args, k))) for k in data_flags())))
    cache = {} if loaders_cache is None else loaders_cache
    if key not in cache:  # subnets exported from one run share their data
        cache[key] = data.get_loaders(args, batch_size, eval_batch_size=batch_size)
    loaders = cache[key]  # the whole test split
    device = setup_distributed(args)[0]
    result = accuracy(net.to(device), loaders.test, device)
    counted = sum(p.numel() for p in net.parameters())
    print(f"{path}: {record['network']} at {record['macs'] / 1e6:.2f}M MACs, {counted:,} params; "
          f"test top-1 {result['top1']:.2f}, top-5 {result['top5']:.2f} on {result['images']} "
          f"{loaders.dataset} images")
    return {**result, "macs": record["macs"], "params": counted,
            "mmcv_flops": slimmable.mmcv_flops(net),
            "cost": record.get("cost", "macs" if record.get("target_mflops") else None),
            "target": record.get("target", record.get("target_mflops"))}


def evaluate_subnets(paths, argv=None):
    """``evaluate_subnet`` for each file; with several, one table at the end (the last step of
    AutoSlim's pipeline: target, MACs, params and test accuracy of each standalone model)."""
    loaders_cache = {}
    rows = [(path, evaluate_subnet(path, argv, loaders_cache)) for path in paths]
    if len(rows) > 1:
        print(f"\n{'subnet':<40}{'target':>22}{'MACs':>10}{'params':>11}{'mmcv_flops':>12}"
              f"{'top-1':>8}{'top-5':>8}")
        for path, row in rows:  # the target named as search.py names its files: mmcv_flops_530M
            target = f"{row['cost']}_{row['target']:g}M" if row["target"] else "-"
            print(f"{os.path.basename(path):<40}{target:>22}{row['macs'] / 1e6:>9.2f}M"
                  f"{row['params']:>11,}{row['mmcv_flops'] / 1e6:>11.2f}M{row['top1']:>8.2f}"
                  f"{row['top5']:>8.2f}")
    return rows


# ---------------------------------------------------------------------------------------------
# Plots: plain SVG text


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


def front_svg(curves, title, x_label="MACs (millions)", y_label="top-1 accuracy (%)", y=0,
              legend_top=False):
    """An SVG plot of curves ``{"label", "points": [(macs_millions, top1)], "end", "dots_only",
    "line"}``: each one's points and (unless dots_only) its step curve up to ``end``, or the
    straight lines through its points when ``line``; axes, ticks, legend. ``y``: the plot's
    offset when it is nested in another SVG (``panels_svg``); ``legend_top``: the legend in the
    top right corner (falling curves) instead of the bottom right."""
    width, height, left, right, top, bottom = 760, 480, 72, 24, 44, 56
    xs = [x for c in curves for x, _ in c["points"]] + [c.get("end", 0.0) for c in curves]
    ys = [y for c in curves for _, y in c["points"]] or [0.0]
    x_high, pad = max(xs + [1e-9]) * 1.04, max(max(ys) - min(ys), 2.0) * 0.08
    y_low, y_high = max(0.0, min(ys) - pad), min(100.0, max(ys) + pad)

    def sx(x):
        return round(left + (width - left - right) * x / x_high, 1)

    def sy(y):
        return round(height - bottom - (height - top - bottom) * (y - y_low) / (y_high - y_low), 1)

    middle = (top + height - bottom) / 2
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" y="{y}" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           tag("rect", width=width, height=height, fill="white"),
           tag("text", title, x=width / 2, y=24, text_anchor="middle", font_size=15)]
    for tick in nice_ticks(0.0, x_high):
        out += [tag("line", x1=sx(tick), y1=top, x2=sx(tick), y2=height - bottom, stroke="#e5e5e5"),
                tag("text", f"{tick:g}", x=sx(tick), y=height - bottom + 16, text_anchor="middle")]
    for tick in nice_ticks(y_low, y_high):
        out += [tag("line", x1=left, y1=sy(tick), x2=width - right, y2=sy(tick), stroke="#e5e5e5"),
                tag("text", f"{tick:g}", x=left - 6, y=sy(tick) + 4, text_anchor="end")]
    out += [tag("rect", x=left, y=top, width=width - left - right, height=height - top - bottom,
                fill="none", stroke="black"),
            tag("text", x_label, x=(left + width - right) / 2, y=height - 14, text_anchor="middle"),
            tag("text", y_label, x=18, y=middle, text_anchor="middle",
                transform=f"rotate(-90 18 {middle})")]
    legend_x, legend_y = width - right - 310, height - bottom - 10 - 18 * len(curves)
    if legend_top:
        legend_y = top + 8
    out.append(tag("rect", x=legend_x, y=legend_y, width=302, height=18 * len(curves) + 4,
                   fill="white", fill_opacity=0.85, stroke="#cccccc"))
    solid = 0
    for index, curve in enumerate(curves):
        dots_only = curve.get("dots_only", False)
        color = "#999999" if dots_only else COLORS[solid % len(COLORS)]
        solid += not dots_only
        out.append(f'<g class="{"dots" if dots_only else "run"}" fill="{color}">')
        if not dots_only and curve["points"]:
            line = curve["points"] if curve.get("line") else \
                step_curve(curve["points"], curve.get("end", 0.0))
            path = " ".join(f"{sx(x)},{sy(y)}" for x, y in line)
            out.append(tag("polyline", class_="front", points=path, fill="none", stroke=color,
                           stroke_width=2))
        out += [tag("circle", cx=sx(x), cy=sy(y), r=2.5 if dots_only or curve.get("line") else 4)
                for x, y in curve["points"]]
        row_y = legend_y + 16 + 18 * index
        out += [tag("circle", cx=legend_x + 12, cy=row_y - 4, r=4),
                tag("text", curve["label"], x=legend_x + 22, y=row_y, fill="black"), "</g>"]
    return "\n".join(out + ["</svg>"]) + "\n"


def panels_svg(panels, title):
    """Plots stacked in one SVG: ``panels`` is a list of ``(y_label, curves)`` drawn by
    ``front_svg`` against the training step, each titled ``title``."""
    plots = [front_svg(curves, title, "training step", y_label, y=480 * k,
                       legend_top="loss" in y_label) for k, (y_label, curves) in enumerate(panels)]
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="760" height="{480 * len(plots)}">\n'
            + "".join(plots) + "</svg>\n")


def training_curves_svg(runs, title):
    """The training curves of train.py's ``runs/NAME/curves.json``: the full and the smallest
    network's training loss, then their held-out top-1, against the step. ``runs``: a list of
    ``(label, points)``; one run draws both networks, several runs draw one line each per
    network and panel."""
    panels = []
    for y_label, key in (("training loss (full: labels; smallest: its students' loss)", "loss"),
                         ("held-out top-1 (%, BN batch statistics)", "top1")):
        curves = []
        for label, points in runs:
            for end in ("full", "smallest"):
                values = [(p["step"], p[f"{end}_{key}"]) for p in points if f"{end}_{key}" in p]
                if values:
                    curves.append({"label": f"{label} {end}".strip(), "points": values,
                                   "line": True})
        if curves:
            panels.append((y_label, curves))
    return panels_svg(panels, title)


# ---------------------------------------------------------------------------------------------
# Several runs


def top1_at(points, ratio):
    """The step curve at ``ratio``: best test top-1 among points with cost ratio <= ratio, or None."""
    affordable = [p["test"]["top1"] for p in points if cost_ratio(p) <= ratio + 1e-9]
    return max(affordable) if affordable else None


def compare(names, out_path=None, overrides=None, argv=None):
    """Plot the test fronts of runs ``names`` on one SVG; print their areas and top-1 at matched
    MACs. Runs without ``results/NAME_eval_pareto.json``, or whose checkpoint was rewritten after
    it (see ``checkpoint_stamp``), are evaluated first (``overrides`` and ``argv`` as for
    ``evaluate_run``); a result whose run directory is gone is plotted as it is. Returns one
    row per run (rank 0; [] on the others):
    ``{"name", "network", "method", "area", "top1_at": {ratio: top1 or None}}``. All fronts
    must be against one cost: a result against another cost than an explicit ``--cost`` is
    evaluated again; runs that still differ are refused (``Fail``)."""
    wanted = (overrides or {}).get("cost") or build_parser().parse_args(argv or []).cost
    results = []
    for name in names:
        path = os.path.join(RESULTS_DIR, f"{name}_eval_pareto.json")
        if os.path.exists(path):
            with open(path) as handle:
                result = json.load(handle)
            stamp = checkpoint_stamp(name)
            if stamp is None or (result.get("checkpoint_stamp") == stamp
                                 and wanted in (None, cost_kind(result))):
                results.append(result)
                continue
            print(f"{path} is older than runs/{name}/checkpoint.pt, or against another cost: "
                  f"evaluating it again")
        results.append(evaluate_run(name, overrides, argv))
    if any(result is None for result in results):  # not rank 0 of a torchrun job
        return []
    kinds = sorted({cost_kind(r) for r in results})
    if len(kinds) > 1:
        raise Fail(f"the runs' fronts are against different costs ({', '.join(kinds)}); pass "
                   f"--cost {kinds[0]} to compare them on one axis")
    kind = kinds[0]
    name, x_label = COST_NAMES.get(kind, (kind, f"{kind} (millions)"))
    out_path = out_path or os.path.join(RESULTS_DIR, f"compare_{'_'.join(names)}.svg")
    curves = [{"label": f"{r['name']} ({r['method']}, area {r['area']:.2f})",
               "end": full_cost(r) / 1e6,
               "points": [(p[kind] / 1e6, p["test"]["top1"]) for p in r["points"]]} for r in results]
    svg = front_svg(curves, f"test top-1 vs {name} (fronts selected on held-out data)", x_label)
    runs.write_atomic(out_path, svg)
    rows = [{"name": r["name"], "network": r["network"], "method": r["method"], "area": r["area"],
             "top1_at": {level: top1_at(r["points"], level) for level in MATCHED_RATIOS}}
            for r in results]
    width = max([len("run")] + [len(row["name"]) for row in rows]) + 2
    print(f"{'run':<{width}}{'network':<24}{'method':<8}{'area':>8}"
          + "".join(f"{f'top1@{100 * level:g}%':>12}" for level in MATCHED_RATIOS))
    for row in rows:
        print(f"{row['name']:<{width}}{row['network']:<24}{row['method']:<8}{row['area']:>8.3f}"
              + "".join(f"{'-' if v is None else f'{v:.2f}':>12}" for v in row["top1_at"].values()))
    print(f"area: mean test top-1 error (%) over {name} ratios [smallest, 1], lower is better; "
          f"top1@X%: best test top-1 within X% of the full network's {name}. Plot: {out_path}")
    return rows


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    # Which job only: the values are checked by parse_args over the run's (or subnet's)
    # recorded flags, since a data flag can be valid for one dataset and not another.
    args = build_parser().parse_args(argv)
    try:
        if args.subnet:
            evaluate_subnets(args.subnet, argv)
        elif args.compare:
            compare(args.compare, args.out, argv=argv)
        else:
            evaluate_run(args.name, argv=argv)
    except (Fail, data.DataError) as error:
        print(f"error: {first_line(error)}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
