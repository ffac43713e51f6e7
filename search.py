"""AutoSlim's greedy width search: slim a trained supernet one channel step at a time.

AutoSlim (Yu & Huang, arXiv 1903.11728, Sec. 3) trains one supernet on random per-group widths
(``train.py --method random``), then searches it greedily. Start from the full network; at every
step try slimming each width group by one step, score every candidate on held-out images, and
keep the best (highest top-1; ties go to the lower loss, then to the earlier group). Each time the
cost falls to or below a target, that configuration is written out; the search stops after the
smallest target. Retrain the configurations afterwards (``train.py --method fixed``).

Choices, and the bugs of earlier versions they avoid (digest of the method, Sec. 3):

- Targets name their convention. ``--cost macs`` (default): multiply-accumulates of conv and
  linear layers, what the AutoSlim paper calls FLOPs (its MobileNetV2 networks: 505M, 305M,
  207M). ``--cost mmcv_flops``: mmcv's counter, which adds BN, activations and pooling, and
  which mmrazor's labels use (the same networks: 530M, 320M, 220M). The two differ by about 5%,
  so "--target_flops 530" would be ambiguous and is refused. ``--target_ratios`` are fractions
  of the full network's cost in ``--cost``.
- Steps. Group g moves on the grid ``round(k/12 * C_g)`` (``--steps``), rounded as the network
  rounds channels (``slimmable.round_channels``), duplicates removed (mmrazor 1.x keeps repeated
  levels, so some of its "steps" remove nothing and still cost an evaluation), and never below
  the supernet's trained range: the lowest level is ``round(lower_channel * C_g)``.
- Held-out images. The score is measured on ``data.py``'s ``val`` split, carved out of the
  *training* set with test-time transforms; mmrazor scores on the test set, which leaks it.
- BN. The running statistics left by training average over all widths and are wrong for a
  non-uniform one. ``--bn calibrate`` recomputes them per candidate on fixed training batches
  (US-Nets Sec. 3.3); ``--bn batch`` normalizes every scoring batch by its own statistics.
- Speed. Slimming group g changes nothing before the first layer that uses g, so every candidate
  resumes the forward pass at the latest block boundary before that layer, from activations of
  the current configuration computed once per step (1.9x faster on a ResNet-20). Under
  torchrun, rank r scores candidates r, r + W, ... and the scores are gathered, so every rank
  picks the same winner.

Files, in ``runs/NAME/search/``: ``<cost>_<M>M.json`` per target, e.g. ``macs_20M.json``
(``slimmable.save_config``, the format ``train.py --channel_config`` and ``evaluate.py --configs``
read; the record holds ``cost`` and ``target`` in millions, and MACs, params and mmcv FLOPs),
``search.state`` (JSON, rewritten atomically after every step: rerunning the same command
resumes), ``log.txt``.

    python train.py --name sn --method random --epochs 30 --lower_channel 0.1667  # the supernet
    python search.py --name sn --target_ratios 0.75 0.5 0.3         # fractions of the full MACs
    python search.py --name sn --cost macs --targets 30 20 12.5 --restart      # millions of MACs
    python train.py --name sn_fixed --method fixed --channel_config runs/sn/search/macs_*.json
    torchrun --nproc_per_node=4 search.py --name sn --cost mmcv_flops --targets 31 21 13

From Python (the flags are keyword arguments)::

    import search
    result = search.run_search("sn", target_ratios=[0.75, 0.5, 0.3], search_images=500)
    for record in result["records"]:
        print(record["file"], record["macs"], record["mmcv_flops"], record["heldout_top1"])
"""
import argparse
import glob
import itertools
import json
import os
import sys
import time

# idle OpenMP threads sleep: spinning ones stall beside other processes (README, "CPU
# contention"; train.py has a thread tuner instead); a user's value wins
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import data
import models
import runs
import slimmable
from runs import Fail

STATE_FILE = "search.state"  # not *.json: evaluate.py reads runs/NAME/search/*.json as configs


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.error = lambda message: parser.exit(2, f"error: {message}\n")
    add = parser.add_argument
    add("--name", default="demo", help="run to search: reads runs/NAME/checkpoint.pt, writes "
        "runs/NAME/search/ (default: demo)")
    add("--cost", default="macs", choices=list(slimmable.COSTS),
        help="the convention of the targets: macs (default; conv + linear multiply-accumulates, "
             "the AutoSlim paper's FLOPs: its MobileNetV2 networks are 505M, 305M, 207M), "
             "mmcv_flops (mmcv's counter, MACs plus BN, activations and pooling: mmrazor's "
             "labels 530M, 320M, 220M for the same networks), params")
    add("--targets", type=float, nargs="+", metavar="M",
        help="targets in millions of --cost per image, e.g. --cost macs --targets 505 305 207 "
             "or --cost mmcv_flops --targets 530 320 220")
    add("--target_ratios", type=float, nargs="+", metavar="R",
        help="targets as fractions of the full network's --cost, e.g. 0.75 0.5 0.3 (may be "
             "given with --targets)")
    add("--target_flops", nargs="*", metavar="M",
        help="refused: ambiguous between MACs and mmcv-style FLOPs (about 5%% apart); use "
             "--cost macs|mmcv_flops --targets M...")
    add("--steps", type=int, default=12,
        help="levels per group: k/STEPS of its full width, k = 1..STEPS, cut at the trained "
             "minimum (default 12 as AutoSlim's code; its paper: 10)")
    add("--bn", default="batch", choices=["batch", "calibrate"],
        help="BN statistics of a candidate (never the running statistics left by training). "
             "batch (default): every scoring batch normalizes with its own statistics, one "
             "forward of the held-out images per candidate; fair when --eval_batch_size is large, "
             "and cheap enough for run.sh's AutoSlim demo. calibrate: first recompute the "
             "running statistics on --calib_batches fixed training batches, as the final network "
             "is evaluated; exact at any batch size, but each candidate costs about 2x (4x128 "
             "calibration + 500 scoring images, slim_resnet20)")
    add("--search_images", type=int, default=1000,
        help="held-out images that score every candidate, loaded once (default: 1000)")
    add("--eval_batch_size", type=int, default=1000,
        help="images per scoring forward; under --bn batch also the images each BN averages "
             "over (default: 1000)")
    add("--calib_batches", type=int, default=4,
        help="--bn calibrate: training batches, drawn once, that calibrate every candidate "
             "(default: 4)")
    add("--batch_size", type=int, default=128, help="--bn calibrate: images per training batch (default: 128)")
    add("--seed", type=int, default=0, help="seed of the calibration sample (default: 0)")
    add("--pause_after", type=int, default=0,
        help="save and stop after this many steps of this call (rerun to go on)")
    add("--restart", action="store_true",
        help="discard runs/NAME/search/ (the state and the configurations written so far) and "
             "search from the full network again")
    add("--full_forward", action="store_true",
        help="run every candidate from the image instead of resuming at the first block it "
             "changes (same scores, slower; for checking)")
    add("--device", default="auto", help="auto (CUDA when available), cpu, cuda")
    add("--threads", type=int, default=0, help="CPU threads per process (0: cores / processes)")
    data.add_data_args(parser)
    parser.epilog = ("Data flags default to the values the supernet was trained with (its held-out "
                     "split must be the one training left out).")
    return parser


FLAG_RULES = {  # flag: (test of its value, or of each of its values, what it must be)
    "cost": (lambda v: v in slimmable.COSTS, f"one of {', '.join(slimmable.COSTS)}"),
    "targets": (lambda v: v > 0, "positive numbers (millions of --cost)"),
    "target_ratios": (lambda v: 0 < v <= 1, "fractions in (0, 1]"),
    "steps": (lambda v: v >= 1, "at least 1"),
    "bn": (lambda v: v in ("batch", "calibrate"), "batch or calibrate"),
    "search_images": (lambda v: v >= 1, "at least 1"),
    "eval_batch_size": (lambda v: v >= 1, "at least 1"),
    "calib_batches": (lambda v: v >= 1, "at least 1"),
    "batch_size": (lambda v: v >= 1, "at least 1"),
    "seed": (lambda v: True, "an integer"),
    "pause_after": (lambda v: v >= 0, "0 (never) or more"),
    "threads": (lambda v: v >= 0, "0 (automatic) or more"),
    "device": (lambda v: v in ("auto", "cpu", "cuda") or v.startswith("cuda:"),
               "auto, cpu, cuda or cuda:N"),
}


def check_args(args):
    """Every flag's value, in one place (the command line and ``run_search`` alike): raises
    Fail with one line naming the first invalid flag."""
    if args.target_flops is not None:
        raise Fail("--target_flops is ambiguous (MACs as the AutoSlim paper counts, or mmcv-style "
                   "FLOPs as mmrazor labels, about 5% apart): use --cost macs --targets M... or "
                   "--cost mmcv_flops --targets M... (or --target_ratios R...)")
    if not args.targets and not args.target_ratios:
        raise Fail("give the targets: --cost macs|mmcv_flops --targets M... or --target_ratios R...")
    problem = data.flag_problem(args, FLAG_RULES) or data.check_data_args(args)
    if problem:
        raise Fail(problem)


def data_flags():
    probe = argparse.ArgumentParser(add_help=False)
    data.add_data_args(probe)
    return set(vars(probe.parse_args([])))


def resolve_data_flags(args, given, checkpoint):
    """Data flags nobody set explicitly take the supernet's training values."""
    recorded = checkpoint.get("args") or {}
    for key in data_flags() - set(given):
        if key in recorded:
            setattr(args, key, recorded[key])


def target_name(cost, millions):
    """``<cost>_<M>M.json`` with M in 4 significant digits: ("macs", 20) -> macs_20M.json,
    ("mmcv_flops", 12.5) -> mmcv_flops_12.5M.json, ("memory", 0.024576) -> memory_0.02458M.json
    (significant digits, not decimals: small costs such as CIFAR memory peaks stay apart)."""
    return f"{cost}_{f'{millions:.0f}' if millions >= 1000 else f'{millions:.4g}'}M.json"


# ---------------------------------------------------------------------------------------------
# The supernet, its width levels, the fixed images


def load_supernet(name, device):
    path = os.path.join("runs", name, "checkpoint.pt")
    if not os.path.exists(path):
        raise Fail(f"no supernet at {path}; train one: python train.py --name {name} --method random")
    try:
        checkpoint = runs.load_checkpoint(path)
    except Exception as error:  # a truncated or foreign file
        raise Fail(f"cannot load supernet {path}: {str(error).splitlines()[0]}") from None
    if not isinstance(checkpoint, dict) or \
            not {"model", "network", "num_classes"} <= set(checkpoint):
        raise Fail(f"{path} is not a checkpoint written by train.py")
    try:
        net = models.get_model(checkpoint["network"], checkpoint["num_classes"],
                               **(checkpoint.get("model_options") or {}))
        net.load_state_dict({k.removeprefix("module."): v for k, v in checkpoint["model"].items()})
    except Exception as error:  # weights that do not fit the network it names
        raise Fail(f"cannot load supernet {path}: {str(error).splitlines()[0]}") from None
    if checkpoint.get("method") == "fixed":
        raise Fail(f"{path} is a --method fixed run (its configurations are already chosen); "
                   f"search a supernet trained with --method random")
    return net.to(device), checkpoint


def width_levels(net, lower_channel, steps):
    """Ascending channel counts each group may take: k/steps of its width, rounded as the network
    rounds, deduplicated, the lowest being the trained minimum ``round(lower_channel * C)``."""
    multipliers = [lower_channel] + [k / steps for k in range(1, steps + 1) if k / steps > lower_channel]
    return [sorted(set(slimmable.round_channels(multipliers, g.channels, g.divisor).tolist()))
            for g in net.width_groups]


def widths_at(net, levels, index):
    """Multipliers that give exactly the channel counts ``levels[g][index[g]]``."""
    return [levels[g][i] / group.channels for g, (group, i) in enumerate(zip(net.width_groups, index))]


def fixed_images(args, device, rank):
    """``(calibration inputs, [(inputs, labels)] for scoring, datasets)``: drawn once, the same
    on every rank and on every resume (the training images are a seeded sample, with train
    transforms; only ``--bn calibrate`` draws them, so only it needs a training batch).
    ``datasets`` is data.build_datasets' tuple (train, val, test, classes, size, channels)."""
    datasets = data.build_datasets(args)
    train, held_out = datasets[0], datasets[1]
    if held_out is None or len(held_out) == 0:
        raise Fail("no held-out split to score candidates on; pass --val_size N (N > 0)")
    count = min(args.search_images, len(held_out))
    generator = torch.Generator().manual_seed(args.seed)
    score = load_tensors(torch.utils.data.Subset(held_out, range(count)), args.eval_batch_size,
                         args.workers, generator)
    calibration = []
    if args.bn == "calibrate":
        if len(train) < args.batch_size:
            raise Fail(f"only {len(train)} training images for a calibration batch of "
                       f"{args.batch_size}; lower --batch_size")
        picks = torch.randperm(len(train), generator=generator)[:args.calib_batches * args.batch_size]
        # In this process: worker processes would draw other augmentations for other --workers.
        calibration = [x for x, _ in load_tensors(torch.utils.data.Subset(train, picks.tolist()),
                                                  args.batch_size, 0, generator)]
    calibration = [x.to(device) for x in calibration]
    score = [(x.to(device), y.to(device)) for x, y in score]
    if dist.is_initialized():  # the same images on every rank, whatever each machine's data does
        for tensor in calibration + [t for batch in score for t in batch]:
            dist.broadcast(tensor, 0)
    return calibration, score, datasets


def load_tensors(dataset, batch_size, workers, generator):
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                         generator=generator)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
        return [(batch[0].contiguous(), batch[1]) for batch in loader]


# ---------------------------------------------------------------------------------------------
# Scoring candidates, resuming each forward where its change begins


class _Captured(Exception):
    """Raised by a pre-hook to stop a forward and hand back a block's input."""


class CandidateScorer:
    """Top-1 hits and summed loss of configurations on fixed images, under a BN policy.

    A *resume point* is a child of an ``nn.Sequential`` that is itself a child of the network
    (the blocks of a ResNet stage, MobileNet ``features``): the forward is assumed to pass that
    Sequential's output straight on, which is checked once at the start (else every candidate
    runs from the image). A candidate that slims group g resumes at the last such block that runs
    before the first layer using g: a forward pre-hook swaps the block's input for the cached
    activation of the current configuration (the layers before it only see a 2-image stand-in).
    """

    def __init__(self, net, calibration, score, bn, reuse_prefix=True):
        self.net, self.calibration, self.score, self.bn = net, calibration, score, bn
        self.norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.standin = score[0][0][:2]
        self.cuts, self.cut_times = [None], [-1]  # resume point 0: the image
        self.norm_times = {m: 0 for m in self.norms}
        self.resume_of_group = [0] * len(net.width_groups)
        if reuse_prefix:
            self._find_resume_points()

    def _find_resume_points(self):
        """Order the blocks, slimmable layers and BNs as one forward runs them."""
        blocks = [m for child in self.net.children() if isinstance(child, nn.Sequential)
                  for m in child.children()]
        layers = [m for _, m in slimmable.slim_layers(self.net)]
        times, block_inputs, clock = {}, {}, itertools.count()

        def stamp(module, arguments):
            times.setdefault(module, []).append(next(clock))
            block_inputs.setdefault(module, arguments[0])

        hooks = [m.register_forward_pre_hook(stamp) for m in {*blocks, *layers, *self.norms}]
        slimmable.set_widths(self.net, 1.0)
        with torch.no_grad():
            logits = self.net.eval()(self.standin)
        for hook in hooks:
            hook.remove()
        if any(len(t) != 1 for t in times.values()) or any(m not in times for m in blocks):
            return  # a module that runs twice (or never) breaks the bookkeeping
        blocks.sort(key=lambda m: times[m][0])
        cuts, cut_times = [None] + blocks, [-1] + [times[m][0] for m in blocks]
        self.cuts, saved = cuts, self.cut_times
        self.cut_times = cut_times
        with torch.no_grad():
            if not all(torch.allclose(self._forward(j, block_inputs[m]), logits, atol=1e-5, rtol=1e-4)
                       for j, m in enumerate(blocks, 1)):
                self.cuts, self.cut_times = [None], saved
                return
        first_use = [float("inf")] * len(self.resume_of_group)
        for layer in layers:
            for slot in (layer.in_slot, layer.out_slot):
                if slot is not None:
                    first_use[slot.group] = min(first_use[slot.group], times[layer][0])
        self.resume_of_group = [max(j for j, t in enumerate(cut_times) if t <= first)
                                for first in first_use]
        self.norm_times = {m: times[m][0] for m in self.norms}

    def _forward(self, start, inputs, stop=None):
        """Run from resume point ``start`` on ``inputs``; the logits, or the input of ``stop``."""
        hooks = []
        if start > 0:
            hooks.append(self.cuts[start].register_forward_pre_hook(lambda m, _: (inputs,)))
        if stop is not None:
            def capture(module, arguments):
                raise _Captured(arguments[0])
            hooks.append(self.cuts[stop].register_forward_pre_hook(capture))
        try:
            return self.net(self.standin if start > 0 else inputs)
        except _Captured as captured:
            return captured.args[0]
        finally:
            for hook in hooks:
                hook.remove()

    def _calibrate(self, start, inputs, stop=None):
        """Recompute the running statistics of the BNs between ``start`` and ``stop`` (cumulative
        average, as slimmable.calibrate_bn); BNs before ``start`` keep theirs. Returns outputs."""
        low = self.cut_times[start]
        high = self.cut_times[stop] if stop is not None else float("inf")
        momenta = [m.momentum for m in self.norms]
        self.net.train()
        for m in self.norms:
            if low < self.norm_times[m] < high:
                m.reset_running_stats()
                m.momentum = None
            else:
                m.eval()
        try:
            return [self._forward(start, x, stop) for x in inputs]
        finally:
            for m, momentum in zip(self.norms, momenta):
                m.momentum = momentum
            self.net.eval()

    def _normalized(self):
        if self.bn == "batch":
            return slimmable.batch_statistics(self.net)
        self.net.eval()
        return torch.no_grad()

    def _advance(self, widths, start, stop, calibration, score):
        """Activations of the current configuration at resume point ``stop``."""
        slimmable.set_widths(self.net, widths)
        if self.bn == "calibrate":
            calibration = self._calibrate(start, calibration, stop)
        with self._normalized():
            score = [(self._forward(start, x, stop), y) for x, y in score]
        return calibration, score

    def _evaluate(self, start, calibration, score):
        if self.bn == "calibrate":
            self._calibrate(start, calibration)
        correct, loss = 0, 0.0
        with self._normalized():
            for x, y in score:
                logits = self._forward(start, x).float()
                correct += int((logits.argmax(1) == y).sum())
                loss += float(F.cross_entropy(logits, y, reduction="sum"))
        return correct, loss

    def evaluate(self, current, candidates):
        """``{key: (top-1 hits, summed loss)}`` of ``candidates`` = ``[(key, widths, group)]``,
        each one group away from ``current`` (``group=None``: score ``widths`` from the image)."""
        results, position = {}, 0
        calibration, score = self.calibration, self.score
        ordered = sorted(candidates, key=lambda c: 0 if c[2] is None else self.resume_of_group[c[2]])
        for key, widths, group in ordered:
            resume = 0 if group is None else self.resume_of_group[group]
            if resume > position:
                calibration, score = self._advance(current, position, resume, calibration, score)
                position = resume
            slimmable.set_widths(self.net, widths)
            results[key] = self._evaluate(position, calibration, score)
        return results


# ---------------------------------------------------------------------------------------------
# The search


def gather(mine, world_size):
    """Merge every rank's ``{key: result}`` dict, on every rank."""
    if world_size == 1:
        return mine
    everyone = [None] * world_size
    dist.all_gather_object(everyone, mine)
    return {key: value for part in everyone for key, value in part.items()}


def slim_one_step(net, levels, index, scorer, rank, world_size):
    """Try every group one level down, keep the best: moves ``index`` and returns
    ``(group, its top-1 hits, its summed loss, candidates tried)``. Rank r scores candidates
    r, r + W, ...; every rank gets every score, so all pick the same group."""
    current = widths_at(net, levels, index)
    candidates = [(g, widths_at(net, levels, index[:g] + [i - 1] + index[g + 1:]), g)
                  for g, i in enumerate(index) if i > 0]
    scores = gather(scorer.evaluate(current, candidates[rank::world_size]), world_size)
    best = best_candidate(scores)
    index[best] -= 1
    return best, scores[best][0], scores[best][1], len(candidates)


def best_candidate(scores):
    """The group to slim, from ``{group: (top-1 hits, summed loss)}``: the most hits, then the
    lower loss, then the earlier group (AutoSlim keeps the most accurate candidate)."""
    return min(scores, key=lambda group: (-scores[group][0], scores[group][1], group))


def fingerprint(calibration, score):
    """A short digest of the fixed images, so a resume can tell that they are the same."""
    total = sum(float(x.double().sum()) for x in calibration)
    total += sum(float(x.double().sum()) + float(y.double().sum()) for x, y in score)
    return f"{total:.6e}/{sum(len(x) for x in calibration)}/{sum(len(y) for _, y in score)}"


def run_search(name="demo", targets=None, target_ratios=None, max_steps=0, **settings):
    """Search supernet ``name`` for ``targets`` (millions of ``settings["cost"]``, default
    "macs") and/or ``target_ratios`` (fractions of the full network's cost); ``settings`` are the
    other command-line flags (``cost="mmcv_flops"``, ``bn="calibrate"``, ``search_images=500``,
    ``restart=True``, data flags...). ``max_steps`` pauses after that many steps of this call.
    Raises Fail (one line) for an invalid flag or a user error. Returns (on every rank)
    ``{"records": [one per target, largest first: cost, target (millions), file, macs, params,
    mmcv_flops, widths, channels, heldout_top1, heldout_loss, step], "history": [per step],
    "steps", "evaluations" (this call), "total_evaluations", "seconds" (this call), "finished",
    "cost", "full_cost", "smallest_cost", "full_macs", "smallest_macs"}``."""
    args = build_parser().parse_args(["--name", name])
    unknown = set(settings) - set(vars(args))
    if unknown:
        raise TypeError(f"run_search() got unknown settings: {', '.join(sorted(unknown))}")
    vars(args).update(settings, targets=targets, target_ratios=target_ratios,
                      pause_after=max_steps or settings.get("pause_after", 0))
    return search(args, given=set(settings))


def search(args, given):
    check_args(args)
    device, rank, world_size = runs.start(args.device, args.threads)
    start_time = time.time()
    net, checkpoint = load_supernet(args.name, device)
    resolve_data_flags(args, given, checkpoint)
    lower = float(checkpoint.get("lower_channel", 0.42))
    levels = width_levels(net, lower, args.steps)

    def cost(widths):  # the convention the targets are in (--cost)
        return slimmable.cost(net, widths, args.cost)

    full_macs = slimmable.macs(net, 1.0)
    smallest_macs = slimmable.macs(net, widths_at(net, levels, [0] * len(levels)))
    full_cost, smallest_cost = cost(1.0), cost(widths_at(net, levels, [0] * len(levels)))
    targets = sorted({round(m, 6) for m in args.targets or []} |
                     {round(r * full_cost / 1e6, 6) for r in args.target_ratios or []}, reverse=True)
    unit = f"M {args.cost}"
    span = f"targets must lie in [{smallest_cost / 1e6:.4g}, {full_cost / 1e6:.4g}]{unit}"
    for target in targets:
        if target * 1e6 > full_cost:
            raise Fail(f"target {target:g}{unit} is above the full network's; {span}")
        if target * 1e6 < smallest_cost:
            raise Fail(f"target {target:g}{unit} is below the smallest reachable (every group at "
                       f"its trained minimum, lower_channel {lower:g}); {span}")
    try:
        calibration, score, datasets = fixed_images(args, device, rank)
    except data.DataError as error:
        raise Fail(str(error).splitlines()[0]) from None
    if datasets[3] != checkpoint["num_classes"]:
        raise Fail(f"the data has {datasets[3]} classes, the supernet "
                   f"{checkpoint['num_classes']}; pass the supernet's --dataset")
    images = sum(len(y) for _, y in score)
    settings = {"network": checkpoint["network"], "cost": args.cost, "targets": targets,
                "steps": args.steps,
                "lower_channel": lower, "bn": args.bn, "search_images": images,
                "eval_batch_size": args.eval_batch_size, "seed": args.seed,
                "supernet": f"{sum(float(v.double().sum()) for v in checkpoint['model'].values()):.9e}",
                **{k: getattr(args, k) for k in sorted(data_flags() - {"workers", "pin_memory"})}}
    if args.bn == "calibrate":
        settings.update(calib_batches=args.calib_batches, batch_size=args.batch_size)
    settings["images"] = fingerprint(calibration, score)  # checked last: the other keys say why
    out_dir = os.path.join("runs", args.name, "search")
    if rank == 0:
        os.makedirs(out_dir, exist_ok=True)
    state = start_or_resume(out_dir, json.loads(json.dumps(settings)), levels, args.restart, rank)
    log_file = open(os.path.join(out_dir, "log.txt"), "a") if rank == 0 else None

    def say(message):
        if rank == 0:
            print(message, flush=True)
            log_file.write(message + "\n")
            log_file.flush()

    if not checkpoint.get("finished", True):
        say(f"note: the supernet's training has not finished (step {checkpoint.get('step')})")
    say(("resuming" if state["current"] else "AutoSlim") + f" search of {args.name} at step "
        f"{state['step']}: {checkpoint['network']}, {len(levels)} groups, "
        f"{sum(map(len, levels))} levels, {full_cost / 1e6:.4g}{unit} full, "
        f"{smallest_cost / 1e6:.4g} smallest; targets {', '.join(f'{t:g}' for t in targets)}{unit}; "
        f"{images} held-out images, BN {args.bn}"
        + (f" calibrated on {len(calibration)} training batches" if args.bn == "calibrate" else "")
        + f"; {world_size} process(es)")
    scorer = CandidateScorer(net, calibration, score, args.bn, reuse_prefix=not args.full_forward)
    index, evaluations, steps = state["level_index"], 0, 0
    earlier_evaluations, earlier_seconds = state["evaluations"], state["seconds"]
    with torch.inference_mode():
        if state["current"] is None:  # step 0: the full network, scored once
            hits, loss = scorer.evaluate(None, [(-1, widths_at(net, levels, index), None)])[-1]
            state["current"] = {"top1": 100 * hits / images, "loss": loss / images}
            evaluations += 1
        while True:
            widths = widths_at(net, levels, index)
            for target in targets:
                done = {r["target"] for r in state["records"]}
                if target not in done and cost(widths) <= target * 1e6:
                    state["records"].append(record_target(net, widths, args.cost, target, state,
                                                          out_dir, rank))
                    say(f"  reached {target:g}{unit}: {state['records'][-1]['file']}")
            state["finished"] = len(state["records"]) == len(targets)
            state["evaluations"] = earlier_evaluations + evaluations
            state["seconds"] = earlier_seconds + time.time() - start_time
            if rank == 0:  # after every step: an interrupted search resumes from here
                runs.write_json(os.path.join(out_dir, STATE_FILE), state)
            if state["finished"] or (args.pause_after and steps >= args.pause_after):
                break
            step_start = time.time()
            best, hits, loss, count = slim_one_step(net, levels, index, scorer, rank, world_size)
            evaluations, steps, state["step"] = evaluations + count, steps + 1, state["step"] + 1
            state["current"] = {"top1": 100 * hits / images, "loss": loss / images}
            macs_now = slimmable.macs(net, widths_at(net, levels, index))
            cost_now = cost(widths_at(net, levels, index))
            group, seconds = net.width_groups[best].name, time.time() - step_start
            state["history"].append({"step": state["step"], "group": group, "macs": macs_now,
                                     args.cost: cost_now, "channels": levels[best][index[best]],
                                     **state["current"], "seconds": seconds})
            say(f"step {state['step']:3d}  {args.cost} {cost_now / 1e6:7.3f}M "
                f"({100 * cost_now / full_cost:5.1f}%)  {group} {levels[best][index[best] + 1]}->"
                f"{levels[best][index[best]]}  held-out top-1 {state['current']['top1']:6.2f}% "
                f"loss {state['current']['loss']:.4f}  {count} candidates {seconds:.1f} s")
    if state["finished"]:
        files = " ".join(os.path.join(out_dir, r["file"]) for r in state["records"])
        options = checkpoint.get("model_options") or {}
        network = f"--network {checkpoint['network']}" + (
            f" --width_mult {options['width_mult']:g}" if "width_mult" in options else "")
        say(f"done: {state['step']} steps, {state['evaluations']} candidate evaluations, "
            f"{state['seconds']:.0f} s; next: python train.py --name {args.name}_fixed --method "
            f"fixed {network} --channel_config {files}")
    else:
        say(f"paused at step {state['step']}; rerun the same command to go on")
    if log_file:
        log_file.close()
    return {"records": state["records"], "history": state["history"], "steps": state["step"],
            "evaluations": evaluations, "total_evaluations": state["evaluations"],
            "seconds": time.time() - start_time, "finished": state["finished"],
            "cost": args.cost, "full_cost": full_cost, "smallest_cost": smallest_cost,
            "full_macs": full_macs, "smallest_macs": smallest_macs}


def start_or_resume(out_dir, settings, levels, restart, rank):
    """The saved search state if its settings are these (else Fail), or a fresh one."""
    path = os.path.join(out_dir, STATE_FILE)
    if restart and rank == 0:  # the old configurations would otherwise mix with the new ones
        for old in glob.glob(os.path.join(out_dir, "*.json")) + glob.glob(path):
            os.remove(old)
    state = None
    if os.path.exists(path) and not restart:
        try:
            with open(path) as handle:
                state = json.load(handle)
        except (OSError, ValueError) as error:
            raise Fail(f"cannot read {path}: {error}; --restart to start over") from None
        for key in [k for k in settings if k != "images"] + ["images"]:
            if settings[key] != state["settings"].get(key):
                what = ("other fixed images (has the data changed?)" if key == "images" else
                        f"{key} = {state['settings'].get(key)}, not {settings[key]}")
                raise Fail(f"{path} was searched with {what}; rerun with the same settings to "
                           f"resume, or --restart")
    if dist.is_initialized():
        dist.barrier()  # every rank has read the state before rank 0 rewrites it
    return state or {"settings": settings, "step": 0, "level_index": [len(g) - 1 for g in levels],
                     "current": None, "records": [], "history": [], "evaluations": 0,
                     "seconds": 0.0, "finished": False}


def record_target(net, widths, cost, target, state, out_dir, rank):
    """Write ``<cost>_<target>M.json`` for the current configuration and return its record."""
    file = target_name(cost, target)
    extra = {"cost": cost, "target": target, "heldout_top1": state["current"]["top1"],
             "heldout_loss": state["current"]["loss"], "step": state["step"]}
    if rank == 0:
        runs.write_json(os.path.join(out_dir, file), slimmable.config_record(net, widths, **extra))
    return {"file": file, **extra, "macs": slimmable.macs(net, widths),
            "params": slimmable.params(net, widths),
            "mmcv_flops": slimmable.mmcv_flops(net, widths),
            cost: slimmable.cost(net, widths, cost), "widths": widths,
            "channels": slimmable.group_channels(net, widths)}


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    unset = object()
    explicit = parser.parse_args(argv, namespace=argparse.Namespace(**{k: unset for k in vars(args)}))
    given = {key for key, value in vars(explicit).items() if value is not unset}
    try:
        search(args, given)
    except (Fail, data.DataError) as error:
        print(f"error: {str(error).splitlines()[0] if str(error) else type(error).__name__}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the search state of the last finished step is saved: rerun to resume",
              file=sys.stderr)
        return 130
    if dist.is_initialized():  # a rank leaving while gloo still talks to it aborts the other
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
