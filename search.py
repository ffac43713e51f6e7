"""AutoSlim's greedy width search: slim a trained supernet one channel step at a time.

AutoSlim (Yu & Huang, arXiv 1903.11728, Sec. 3) trains one supernet on random per-group widths
(``train.py --method random``), then searches it greedily. Start from the full network; at every
step try slimming each width group by one step, score every candidate on held-out images, and
keep the best (highest top-1; ties go to the lower loss, then to the earlier group). Each time the
cost falls to or below a target, that configuration is written out; the search stops after the
smallest target. Retrain the configurations afterwards (``train.py --method fixed``).

Choices, and the bugs of earlier versions they avoid:

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
resumes), ``log.txt``. While it runs, the search holds ``runs/NAME/train.lock``, as training
does: a run being trained or searched is not searched a second time.

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
import contextlib
import glob
import json
import os
import shlex
import sys
import time

# idle OpenMP threads sleep: a spinning one stalls beside other processes on the same cores
# (train.py tunes its thread count instead); a user's value wins
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import data  # noqa: E402
import models  # noqa: E402
import runs  # noqa: E402
import slimmable  # noqa: E402
from runs import Fail  # noqa: E402

STATE_FILE = "search.state"  # not *.json: evaluate.py reads runs/NAME/search/*.json as configs
CHECKPOINT_KEYS = ("model", "network", "num_classes", "model_options", "method", "args",
                   "lower_channel", "step", "finished")  # what train.py's checkpoint holds


def build_parser():
    parser = runs.parser(__doc__)
    add = parser.add_argument
    at_least_1 = runs.number(int, 1)
    add("--name", type=runs.run_name, default="demo", help="run to search: reads "
        "runs/NAME/checkpoint.pt, writes runs/NAME/search/ (default: demo)")
    add("--cost", default="macs", choices=list(slimmable.COSTS),
        help="the convention of the targets (see above; default: macs)")
    add("--targets", type=runs.number(float, 0, low_open=True), nargs="+", metavar="M",
        help="targets in millions of --cost per image, e.g. --cost mmcv_flops --targets 530 320")
    add("--target_ratios", type=runs.number(float, 0, 1, low_open=True), nargs="+", metavar="R",
        help="targets as fractions of the full network's --cost, e.g. 0.75 0.5 0.3")
    add("--target_flops", nargs="*", metavar="M",
        help="refused: ambiguous between MACs and mmcv-style FLOPs; use --cost and --targets")
    add("--steps", type=at_least_1, default=12,
        help="levels per group: k/STEPS of its full width, k = 1..STEPS, cut at the trained "
             "minimum (default 12 as AutoSlim's code; its paper: 10)")
    add("--bn", default="batch", choices=["batch", "calibrate"],
        help="BN statistics of a candidate (see above): batch (default; fair when "
             "--eval_batch_size is large) or calibrate (exact at any batch size; about 2x the "
             "time with 4x128 calibration and 500 scoring images)")
    add("--search_images", type=at_least_1, default=1000,
        help="held-out images that score every candidate, loaded once (default: 1000)")
    add("--eval_batch_size", type=at_least_1, default=1000,
        help="images per scoring forward; under --bn batch also the images each BN averages "
             "over (default: 1000)")
    add("--calib_batches", type=at_least_1, default=4,
        help="--bn calibrate: training batches that calibrate every candidate (default: 4)")
    add("--batch_size", type=at_least_1, default=128,
        help="--bn calibrate: images per training batch (default: 128)")
    add("--seed", type=runs.seed_flag, default=0, help="seed of the calibration sample (default: 0)")
    add("--pause_after", type=runs.number(int, 0), default=0,
        help="save and stop after this many steps of this call (rerun to go on)")
    add("--restart", action="store_true",
        help="discard the state and configurations in runs/NAME/search/ and start again")
    add("--full_forward", action="store_true", help="run candidates from the image, not from "
        "the first block they change (the same scores, slower; for checking)")
    runs.add_process_flags(parser)
    data.add_data_args(parser)
    parser.epilog = ("Data flags default to the values the supernet was trained with (its held-out "
                     "split must be the one training left out): --" + ", --".join(data.HELD_OUT_FLAGS)
                     + " must equal them when given, and --val_size may not exceed the supernet's.")
    return parser


def check_flags(args):
    """Fail for what argparse does not check: no target, --target_flops, the data flags together."""
    if args.target_flops is not None:
        raise Fail("--target_flops is ambiguous (MACs as the AutoSlim paper counts, or mmcv-style "
                   "FLOPs as mmrazor labels, about 5% apart): use --cost macs --targets M... or "
                   "--cost mmcv_flops --targets M... (or --target_ratios R...)")
    if not args.targets and not args.target_ratios:
        raise Fail("give the targets: --cost macs|mmcv_flops --targets M... or --target_ratios R...")
    if problem := data.check_data_args(args):
        raise Fail(problem)


def resolve_data_flags(args, given, checkpoint):
    """Data flags nobody set explicitly take the supernet's training values; Fail for a given one
    that would score candidates on other images or on images it trained on
    (``data.held_out_problem``)."""
    trained = checkpoint["args"]
    for key in data.data_flag_names() - set(given):
        if key in trained:
            setattr(args, key, trained[key])
    if problem := data.held_out_problem(args, trained, "the supernet"):
        raise Fail(problem)


# ---------------------------------------------------------------------------------------------
# The supernet, its width levels, the fixed images


def load_supernet(name, device):
    """The supernet of run ``name`` on ``device``, and its checkpoint."""
    path = runs.checkpoint_path(name)
    if not os.path.exists(path):
        raise Fail(f"no supernet at {path}; train one: python train.py --name {name} --method random")
    checkpoint = runs.load_checkpoint(path, CHECKPOINT_KEYS)
    if checkpoint["method"] == "fixed":
        raise Fail(f"{path} is a --method fixed run (its configurations are already chosen); "
                   f"search a supernet trained with --method random")
    try:
        net = models.get_model(checkpoint["network"], checkpoint["num_classes"],
                               **checkpoint["model_options"])
    except ValueError as error:  # e.g. the FILE.py of a --network FILE.py:FUNCTION run is gone
        raise Fail(f"cannot rebuild the supernet of {path}: {error}") from None
    runs.load_weights(net, checkpoint["model"], path)
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


def cost_targets(args, net, levels, lower):
    """``(targets, full cost, smallest cost)``: the targets in millions of ``args.cost``, largest
    first (``--targets``, and ``--target_ratios`` of the full network's cost); Fail for a target
    the supernet cannot reach."""
    full = slimmable.cost(net, 1.0, args.cost)
    smallest = slimmable.cost(net, widths_at(net, levels, [0] * len(levels)), args.cost)
    targets = sorted({round(m, 6) for m in args.targets or []} |
                     {round(r * full / 1e6, 6) for r in args.target_ratios or []}, reverse=True)
    unit = f"M {args.cost}"
    span = f"targets must lie in [{smallest / 1e6:.4g}, {full / 1e6:.4g}]{unit}"
    for target in targets:
        if target * 1e6 > full:
            raise Fail(f"target {target:g}{unit} is above the full network's; {span}")
        if target * 1e6 < smallest:
            raise Fail(f"target {target:g}{unit} is below the smallest reachable (every group at "
                       f"its trained minimum, lower_channel {lower:g}); {span}")
    return targets, full, smallest


def fixed_images(args, device, rank):
    """``(calibration inputs, [(inputs, labels)] for scoring, datasets)``: drawn once, the same
    on every rank and every resume (the training images are a seeded sample with train
    transforms, drawn under ``--bn calibrate`` only). ``datasets``: data.build_datasets'."""
    datasets = data.build_datasets(args)
    train, held_out = datasets[0], datasets[1]
    if held_out is None or len(held_out) == 0:
        raise Fail("no held-out split to score candidates on; pass --val_size N (N > 0)")
    count = min(args.search_images, len(held_out))
    generator = torch.Generator().manual_seed(args.seed)
    score = load_tensors(torch.utils.data.Subset(held_out, range(count)), args.eval_batch_size,
                         args.workers, generator, device)
    calibration = []
    if args.bn == "calibrate":
        if len(train) < args.batch_size:
            raise Fail(f"only {len(train)} training images for a calibration batch of "
                       f"{args.batch_size}; lower --batch_size")
        picks = torch.randperm(len(train), generator=generator)[:args.calib_batches * args.batch_size]
        # In this process: worker processes would draw other augmentations for other --workers.
        calibration = [x for x, _ in load_tensors(torch.utils.data.Subset(train, picks.tolist()),
                                                  args.batch_size, 0, generator, device)]
    if dist.is_initialized():  # the same images on every rank, whatever each machine's data does
        for tensor in calibration + [t for batch in score for t in batch]:
            dist.broadcast(tensor, 0)
    return calibration, score, datasets


def load_tensors(dataset, batch_size, workers, generator, device="cpu"):
    """Every batch of ``dataset`` in order, on ``device``, transforms seeded by ``generator``."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                         generator=generator)
    seed = int(torch.randint(2**31, (1,), generator=generator))
    return [(x.contiguous().to(device), y.to(device))
            for x, y in data.first_batches(loader, seed=seed)]


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
        order, block_inputs = [], {}

        def stamp(module, arguments):
            order.append(module)
            block_inputs.setdefault(module, arguments[0])

        hooks = [m.register_forward_pre_hook(stamp) for m in {*blocks, *layers, *self.norms}]
        slimmable.set_widths(self.net, 1.0)
        with torch.no_grad():
            logits = self.net.eval()(self.standin)
        for hook in hooks:
            hook.remove()
        times = {m: t for t, m in enumerate(order)}  # when each one runs
        if len(times) < len(order) or any(m not in times for m in blocks):
            return  # a module that runs twice (or never) breaks the bookkeeping
        blocks.sort(key=times.get)
        self.cuts, self.cut_times = [None] + blocks, [-1] + [times[m] for m in blocks]
        with torch.no_grad():
            chained = all(torch.allclose(self._forward(j, block_inputs[m]), logits, atol=1e-5,
                                         rtol=1e-4) for j, m in enumerate(blocks, 1))
        if not chained:  # the forward does not pass each block's output straight on
            self.cuts, self.cut_times = [None], [-1]
            return
        first_use = [float("inf")] * len(self.resume_of_group)
        for layer in layers:
            for slot in slimmable.slot_parts(layer.in_slot) + slimmable.slot_parts(layer.out_slot):
                first_use[slot.group] = min(first_use[slot.group], times[layer])
        self.resume_of_group = [max(j for j, t in enumerate(self.cut_times) if t <= first)
                                for first in first_use]
        self.norm_times = {m: times[m] for m in self.norms}

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

    def _run(self, widths, start, stop, calibration, score):
        """``(calibration, score)`` carried at ``widths`` from resume point ``start`` to ``stop``
        (None: to the logits); under --bn calibrate, the BNs on the way are calibrated first."""
        slimmable.set_widths(self.net, widths)
        if self.bn == "calibrate":  # the BNs before ``start`` keep their statistics
            low = self.cut_times[start]
            high = self.cut_times[stop] if stop is not None else float("inf")
            outputs = []
            slimmable.calibrate_bn(self.net, calibration,
                                   [m for m in self.norms if low < self.norm_times[m] < high],
                                   lambda x: outputs.append(self._forward(start, x, stop)))
            calibration = outputs
        self.net.eval()
        with slimmable.batch_statistics(self.net) if self.bn == "batch" else torch.no_grad():
            return calibration, [(self._forward(start, x, stop), y) for x, y in score]

    def evaluate(self, current, candidates):
        """``{key: (top-1 hits, summed loss)}`` of ``candidates`` = ``[(key, widths, group)]``,
        each one group away from ``current`` (``group=None``: score ``widths`` from the image)."""
        results, position = {}, 0
        calibration, score = self.calibration, self.score
        ordered = sorted(candidates, key=lambda c: 0 if c[2] is None else self.resume_of_group[c[2]])
        for key, widths, group in ordered:
            resume = 0 if group is None else self.resume_of_group[group]
            if resume > position:  # the current configuration's activations at ``resume``
                calibration, score = self._run(current, position, resume, calibration, score)
                position = resume
            outputs = self._run(widths, position, None, calibration, score)[1]
            scored = [(logits.float(), labels) for logits, labels in outputs]
            results[key] = (sum(int((z.argmax(1) == y).sum()) for z, y in scored),
                            sum(float(F.cross_entropy(z, y, reduction="sum")) for z, y in scored))
        return results


# ---------------------------------------------------------------------------------------------
# The search


def search(args, given):
    """AutoSlim's greedy search that ``args`` asks for (``given``: the flags set explicitly; the
    data flags not given take the supernet's). Returns what ``run_search`` documents."""
    check_flags(args)
    device, rank, world_size = runs.start(args.device, args.threads)
    started, folder = time.time(), runs.run_folder(args.name)
    with runs.lock(folder, doing="searched") if rank == 0 else contextlib.nullcontext():
        net, levels, scorer, state, log = start_or_resume(args, given, folder, device, rank,
                                                          world_size)
        out_dir, images = os.path.join(folder, "search"), state["settings"]["search_images"]
        index, evaluations, steps = state["level_index"], 0, 0
        earlier_evaluations, earlier_seconds = state["evaluations"], state["seconds"]
        with torch.inference_mode():
            if state["current"] is None:  # step 0: the full network, scored once
                hits, loss = scorer.evaluate(None, [(-1, widths_at(net, levels, index), None)])[-1]
                state["current"] = {"top1": 100 * hits / images, "loss": loss / images}
                evaluations += 1
            while True:
                record_reached_targets(net, widths_at(net, levels, index), state, out_dir, rank, log)
                state.update(finished=len(state["records"]) == len(state["settings"]["targets"]),
                             evaluations=earlier_evaluations + evaluations,
                             seconds=earlier_seconds + time.time() - started)
                if rank == 0:  # after every step: an interrupted search resumes from here
                    runs.write_json(os.path.join(out_dir, STATE_FILE), state)
                if state["finished"] or (args.pause_after and steps >= args.pause_after):
                    break
                step_started = time.time()  # try every group one level down, keep the best:
                current = widths_at(net, levels, index)
                candidates = [(g, widths_at(net, levels, index[:g] + [i - 1] + index[g + 1:]), g)
                              for g, i in enumerate(index) if i > 0]
                # rank r scores candidates r, r + W, ...; all get every score and pick the same
                scores = runs.gather_dict(scorer.evaluate(current, candidates[rank::world_size]))
                best = best_candidate(scores)
                index[best] -= 1
                evaluations, steps, state["step"] = (evaluations + len(candidates), steps + 1,
                                                     state["step"] + 1)
                state["current"] = {"top1": 100 * scores[best][0] / images,
                                    "loss": scores[best][1] / images}
                log_step(log, net, levels, index, best, state, len(candidates),
                         time.time() - step_started)
        log_end(log, net, state, out_dir, args.name)
    smallest, cost = widths_at(net, levels, [0] * len(levels)), args.cost
    return {"records": state["records"], "history": state["history"], "steps": state["step"],
            "evaluations": evaluations, "total_evaluations": state["evaluations"],
            "seconds": time.time() - started, "finished": state["finished"], "cost": cost,
            "full_cost": slimmable.cost(net, 1.0, cost),
            "smallest_cost": slimmable.cost(net, smallest, cost),
            "full_macs": slimmable.macs(net, 1.0), "smallest_macs": slimmable.macs(net, smallest)}


def best_candidate(scores):
    """The group to slim, from ``{group: (top-1 hits, summed loss)}``: the most hits, then the
    lower loss, then the earlier group (AutoSlim keeps the most accurate candidate)."""
    return min(scores, key=lambda group: (-scores[group][0], scores[group][1], group))


def start_or_resume(args, given, folder, device, rank, world_size):
    """``(net, levels, scorer, state, log)`` for the search ``args`` asks for, said in the log;
    ``state`` is the one saved in ``folder/search`` (Fail if it was searched with other
    settings), or a fresh one at the full network."""
    net, checkpoint = load_supernet(args.name, device)
    resolve_data_flags(args, given, checkpoint)
    lower = float(checkpoint["lower_channel"])
    levels = width_levels(net, lower, args.steps)
    targets, full, smallest = cost_targets(args, net, levels, lower)
    calibration, score, datasets = fixed_images(args, device, rank)
    if datasets[3] != checkpoint["num_classes"]:
        raise Fail(f"the data has {datasets[3]} classes, the supernet "
                   f"{checkpoint['num_classes']}; pass the supernet's --dataset")
    settings = search_settings(args, checkpoint, targets, lower, calibration, score)
    state = saved_state(os.path.join(folder, "search"), settings, args.restart, rank) or {
        "settings": settings, "step": 0, "level_index": [len(g) - 1 for g in levels],
        "current": None, "records": [], "history": [], "evaluations": 0, "seconds": 0.0,
        "finished": False}
    log, unit = runs.Log(os.path.join(folder, "search", "log.txt"), rank), f"M {args.cost}"
    if not checkpoint["finished"]:
        log(f"note: the supernet's training has not finished (step {checkpoint['step']})")
    log(("resuming" if state["current"] else "AutoSlim") + f" search of {args.name} at step "
        f"{state['step']}: {checkpoint['network']}, {len(levels)} groups, "
        f"{sum(map(len, levels))} levels, {full / 1e6:.4g}{unit} full, "
        f"{smallest / 1e6:.4g} smallest; targets {', '.join(f'{t:g}' for t in targets)}{unit}; "
        f"{settings['search_images']} held-out images, BN {args.bn}"
        + (f" calibrated on {len(calibration)} training batches" if args.bn == "calibrate" else "")
        + f"; {world_size} process(es)")
    scorer = CandidateScorer(net, calibration, score, args.bn, reuse_prefix=not args.full_forward)
    return net, levels, scorer, state, log


def search_settings(args, checkpoint, targets, lower, calibration, score):
    """What a resumed search must share with the saved one, as JSON reads it back. The last,
    ``images``, fingerprints the fixed images (so the other keys say first why they differ)."""
    settings = {"network": checkpoint["network"], "cost": args.cost, "targets": targets,
                "steps": args.steps, "lower_channel": lower, "bn": args.bn,
                "search_images": sum(len(y) for _, y in score),
                "eval_batch_size": args.eval_batch_size, "seed": args.seed,
                "supernet": f"{sum(float(v.double().sum()) for v in checkpoint['model'].values()):.9e}",
                **{k: getattr(args, k) for k in sorted(data.data_flag_names() - {"workers", "pin_memory"})}}
    if args.bn == "calibrate":
        settings.update(calib_batches=args.calib_batches, batch_size=args.batch_size)
    total = sum(float(x.double().sum()) for x in calibration)
    total += sum(float(x.double().sum()) + float(y.double().sum()) for x, y in score)
    settings["images"] = f"{total:.6e}/{sum(map(len, calibration))}/{settings['search_images']}"
    return json.loads(json.dumps(settings))


def saved_state(out_dir, settings, restart, rank):
    """The search state saved in ``out_dir`` if it was searched with ``settings`` (else Fail);
    None if there is none, or for ``restart``, which deletes it and the configurations too."""
    path = os.path.join(out_dir, STATE_FILE)
    if restart and rank == 0:  # the old configurations would otherwise mix with the new ones
        for old in glob.glob(os.path.join(out_dir, "*.json")) + glob.glob(path):
            os.remove(old)
    state = None
    if os.path.exists(path) and not restart:
        try:
            with open(path) as handle:
                state = json.load(handle)
        except (OSError, ValueError, RecursionError) as error:
            raise Fail(f"cannot read {path}: {error}; --restart to start over") from None
        for key in settings:
            if settings[key] != state["settings"].get(key):
                what = ("other fixed images (has the data changed?)" if key == "images" else
                        f"{key} = {state['settings'].get(key)}, not {settings[key]}")
                raise Fail(f"{path} was searched with {what}; rerun with the same settings to "
                           f"resume, or --restart")
    if dist.is_initialized():
        dist.barrier()  # every rank has read the state before rank 0 rewrites it
    return state


def record_reached_targets(net, widths, state, out_dir, rank, log):
    """For each target ``widths`` is the first configuration at or below: write
    ``<cost>_<target>M.json`` and add its record (without the per-layer channels) to ``state``."""
    cost, done = state["settings"]["cost"], {r["target"] for r in state["records"]}
    for target in state["settings"]["targets"]:
        if target in done or slimmable.cost(net, widths, cost) > target * 1e6:
            continue
        file = slimmable.target_label(cost, target) + ".json"
        record = slimmable.config_record(
            net, widths, cost=cost, target=target, heldout_top1=state["current"]["top1"],
            heldout_loss=state["current"]["loss"], step=state["step"])
        if rank == 0:
            runs.write_json(os.path.join(out_dir, file), record)
        state["records"].append({"file": file, cost: slimmable.cost(net, widths, cost),
                                 **{k: v for k, v in record.items() if k != "layers"}})
        log(f"  reached {target:g}M {cost}: {file}")


def log_step(log, net, levels, index, best, state, candidates, seconds):
    """Add the step just taken (group ``best`` one level down) to the history, and say it."""
    cost, widths = state["settings"]["cost"], widths_at(net, levels, index)
    cost_now, full = slimmable.cost(net, widths, cost), slimmable.cost(net, 1.0, cost)
    group, channels = net.width_groups[best].name, levels[best][index[best]]
    state["history"].append({"step": state["step"], "group": group,
                             "macs": slimmable.macs(net, widths), cost: cost_now,
                             "channels": channels, **state["current"], "seconds": seconds})
    log(f"step {state['step']:3d}  {cost} {cost_now / 1e6:7.3f}M ({100 * cost_now / full:5.1f}%)  "
        f"{group} {levels[best][index[best] + 1]}->{channels}  held-out top-1 "
        f"{state['current']['top1']:6.2f}% loss {state['current']['loss']:.4f}  {candidates} "
        f"candidates {seconds:.1f} s")


def log_end(log, net, state, out_dir, name):
    """Say how the search ended (and what to run next, with the data flags that are not their
    defaults, when it has finished); close the log."""
    if state["finished"]:
        files = " ".join(os.path.join(out_dir, r["file"]) for r in state["records"])
        defaults, settings = vars(build_parser().parse_args([])), state["settings"]
        network = f"--network {settings['network']}" + (
            f" --width_mult {net.width_mult:g}" if hasattr(net, "width_mult") else "") + "".join(
            f" --no-{key}" if value is False else f" --{key}" if value is True
            else f" --{key} {shlex.quote(str(value))}" for key, value in settings.items()
            if key in data.data_flag_names() and value != defaults[key])
        log(f"done: {state['step']} steps, {state['evaluations']} candidate evaluations, "
            f"{state['seconds']:.0f} s; next: python train.py --name {name}_fixed --method fixed "
            f"{network} --channel_config {files}")
    else:
        log(f"paused at step {state['step']}; rerun the same command to go on")
    log.close()


def run_search(name="demo", targets=None, target_ratios=None, max_steps=0, **settings):
    """Search supernet ``name`` for ``targets`` (millions of ``settings["cost"]``, default
    "macs") and/or ``target_ratios`` (fractions of the full network's cost); ``settings`` are the
    other command-line flags (``cost="mmcv_flops"``, ``bn="calibrate"``, ``search_images=500``,
    ``restart=True``, data flags...). ``max_steps`` pauses after that many steps of this call.
    Raises Fail (one line) for an invalid flag or a user error (data.DataError for the data),
    TypeError for an unknown setting. Returns (on every rank) ``{"records": [one per target,
    largest first: cost, target (millions), file, macs, params, mmcv_flops, widths, channels,
    heldout_top1, heldout_loss, step], "history": [per step], "steps", "evaluations" (this
    call), "total_evaluations", "seconds" (this call), "finished", "cost", "full_cost",
    "smallest_cost", "full_macs", "smallest_macs"}``."""
    settings.update(name=name, targets=targets, target_ratios=target_ratios)
    if max_steps:
        settings["pause_after"] = max_steps
    parser = build_parser()

    def refuse(message):  # argparse's one line, raised here rather than ending the process
        raise Fail(message)

    parser.error = refuse
    flags, argv = {action.dest: action.option_strings for action in parser._actions}, []
    for key, value in settings.items():  # the command line that sets ``settings``
        if key not in flags:
            raise TypeError(f"run_search() got an unknown setting: {key}")
        if isinstance(value, bool):  # a switch: --restart, or --pin_memory / --no-pin_memory
            argv += flags[key][:1] if value else flags[key][1:]
        elif value is not None:
            argv += [flags[key][0], *map(str, value if isinstance(value, (list, tuple)) else [value])]
    return search(parser.parse_args(argv), runs.explicit_flags(parser, argv))


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    return runs.cli(search, args, runs.explicit_flags(parser, argv), user_errors=(data.DataError,))


if __name__ == "__main__":
    sys.exit(main())
