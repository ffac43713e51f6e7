"""Train a slimmable network: Joslim, Slim (US-Nets), the AutoSlim supernet, or fixed configurations.

Every step follows the sandwich rule (Yu & Huang, US-Nets, ICCV'19): the full network learns
from the labels (label-smoothed cross-entropy); the smallest network and ``--num_sampled_arch``
sampled configurations, the students, learn from ``--kd_weight`` x in-place distillation (the
full network's detached soft predictions) + (1 - ``--kd_weight``) x the labels; the gradients
are summed and one optimizer step is taken. The reference code of Joslim and AutoSlim
distils only (``--kd_weight 1 --distill_after 0``): the students' distillation gradient points
against the full network's label gradient on the shared weights, which holds the full network
far below the same network trained alone on a short schedule. The default is labels only
(``--kd_weight 0``), the best of the recipes measured (README, "The sandwich recipe"). The
methods differ in which configurations are sampled:

- ``joslim`` (Chin et al., ECML-PKDD'21, Sec. 3): every ``--tau`` steps the configurations of the
  history are re-scored on one held-out batch with the current weights, and a Gaussian process
  with expected improvement (sampler.py) proposes the next ones, near the cost-vs-loss front.
- ``slim``: one uniform multiplier for every layer, new each step (the conventional baseline).
- ``random``: an independent multiplier per width group, new each step (AutoSlim's supernet;
  search it afterwards with search.py).
- ``fixed``: train the configurations of ``--channel_config FILE...`` jointly, each from the
  labels (AutoSlim's retraining of the searched networks).

One CPU process (the default demo, a few minutes on a laptop):

    python train.py --name demo

Several processes or GPUs on one machine, and several machines (torchrun's rendezvous):

    torchrun --nproc_per_node=2 train.py --name demo2
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \\
        train.py --name joslim_mbv2 --dataset ImageNet --datapath /data/imagenet-lmdb \\
        --network slim_mobilenetv2 --epochs 250 --warmup 5 --baselr 0.125 --tau 625 --wd 4e-5 \\
        --label_smoothing 0.1 --batch_size 1024 --lower_channel 0.42 --num_sampled_arch 2 \\
        --baseline -3 --prior_points 20 --scheduler linear_decay --slim_dataaug --scale_ratio 0.25

Everything lands in ``runs/NAME/``: ``checkpoint.pt`` (a plain dict, written atomically every
epoch, on Ctrl-C and at the end) and ``log.txt``. Rerunning the same ``--name`` continues where it
stopped. Then: ``python evaluate.py --name NAME``.
"""
import argparse
import contextlib
import math
import os
import random
import signal
import sys
import time

# NumPy serves only the sampler here; its multi-threaded BLAS stalls 10x when the cores are busy
# with training (measured: 0.7 s vs 9 s per proposal), so it gets one thread unless told otherwise.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np  # noqa: E402
import torch
import torch.distributed as dist
import torch.nn.functional as F

import data
import models
import runs
import sampler as samplers
import slimmable
from runs import Fail

# The students' recipe: labels only. On Fashion-MNIST it gave the best held-out area of the
# four recipes measured (README, "The sandwich recipe"); --kd_weight 1 is the reference's.
KD_WEIGHT, DISTILL_AFTER = 0.0, 0.0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.error = lambda message: parser.exit(2, f"error: {message}\n")
    add = parser.add_argument
    add("--name", default="demo", help="run name: files go to runs/NAME/ (default: demo)")
    add("--network", default="slim_resnet20", choices=list(models.NETWORKS), metavar="NAME",
        help=f"network to train: {', '.join(models.NETWORKS)} (default: slim_resnet20)")
    add("--width_mult", type=float, default=1.0,
        help="MobileNetV2 width multiplier of the supernet (AutoSlim uses 1.5)")
    add("--method", default="joslim", choices=["joslim", "slim", "random", "fixed"],
        help="joslim: GP-proposed widths; slim: one uniform width; random: independent per-group "
             "widths (AutoSlim supernet); fixed: the --channel_config configurations")
    add("--channel_config", nargs="+", default=[], metavar="FILE",
        help="JSON configurations (from search.py) to retrain with --method fixed")
    add("--epochs", type=int, default=4, help="training epochs (default: 4)")
    add("--warmup", type=float, default=1, help="linear learning-rate warmup, in epochs")
    add("--baselr", type=float, default=0.1, help="peak lr = baselr * batch_size / 256")
    add("--scheduler", default="cosine_decay", choices=["linear_decay", "cosine_decay"],
        help="lr decay after warmup, per iteration")
    add("--momentum", type=float, default=0.9, help="SGD momentum")
    add("--nesterov", action="store_true", help="Nesterov momentum")
    add("--wd", type=float, default=5e-4,
        help="weight decay (not applied to BN parameters and biases)")
    add("--kd_weight", type=float, default=KD_WEIGHT,
        help="the students' loss: kd_weight * in-place distillation (soft cross-entropy against "
             "the full network's detached predictions) + (1 - kd_weight) * label-smoothed "
             "cross-entropy with the labels. 1: distillation only, as the Joslim and AutoSlim "
             "reference code; 0: labels only; default %(default)s (README, 'The sandwich "
             "recipe': the best held-out area of 0, 0.5 and 1 on Fashion-MNIST)")
    add("--distill_after", type=float, default=DISTILL_AFTER,
        help="epochs during which the students learn from the labels only, before the "
             "--kd_weight mix starts (0: from the first step, as the reference; default "
             "%(default)s)")
    add("--label_smoothing", type=float, default=0.1, help="label smoothing of the full network")
    add("--batch_size", type=int, default=128, help="global batch size over all processes")
    add("--lower_channel", type=float, default=0.42,
        help="smallest width multiplier of every group; also the sandwich's smallest network")
    add("--num_sampled_arch", type=int, default=2,
        help="configurations trained between the full and the smallest network each step")
    add("--tau", type=int, default=20,
        help="joslim: steps between re-scoring the history and proposing new configurations")
    add("--prior_points", type=int, default=10,
        help="joslim: uniform-width configurations proposed before the Gaussian process starts")
    add("--acquisition", default="ei", choices=["ei", "ucb"],
        help="joslim: expected improvement over the front (ei) or the paper's UCB with an "
             "augmented Tchebyshev scalarization (ucb)")
    add("--beta", type=float, default=0.1, help="joslim ucb: exploration weight")
    add("--baseline", type=float, default=-3.0,
        help="joslim ucb: Tchebyshev reference point in standardized units (the reference "
             "code's default of 5 flips its search; -3 is the paper's)")
    add("--rescore_limit", type=int, default=120,
        help="joslim: re-score at most this many history configurations per window (the "
             "newest and the Pareto layers first; 0: the whole history, as the reference). "
             "120 keeps re-scoring under 5%% of a CIFAR window of 235 steps (bench.py window)")
    add("--cost", default="macs", choices=list(slimmable.COSTS),
        help="joslim: the cost axis of the front")
    add("--print_freq", type=int, default=20, help="steps between progress lines")
    add("--curve_points", type=int, default=16,
        help="points of the training curves (runs/NAME/curves.json; evaluate.py plots them): "
             "the full and smallest network's training loss and held-out top-1 (BN batch "
             "statistics, on --curve_images held-out images), evenly spaced over the run; 0: none")
    add("--curve_images", type=int, default=512,
        help="held-out images each point of the training curves is measured on (default 512)")
    add("--seed", type=int, default=0, help="seed for weights, data order and sampling")
    add("--device", default="auto", help="auto (CUDA when available), cpu, cuda")
    add("--threads", type=int, default=0,
        help="CPU threads per process (0, the default: the usable cores / processes, then one "
             "fewer while other processes slow training down: ThreadTuner)")
    add("--restart", action="store_true",
        help="start over even if runs/NAME/checkpoint.pt exists (it is overwritten)")
    add("--resume", action="store_true",
        help="continue runs/NAME/checkpoint.pt (also done without this flag when it exists)")
    add("--pause_after", type=int, default=0,
        help="save and stop after this many steps of this run (preemptible jobs; rerun to go on)")
    data.add_data_args(parser)
    args = parser.parse_args(argv)
    if args.method == "fixed" and not args.channel_config:
        parser.error("--method fixed needs --channel_config FILE...")
    problem = data.flag_problem(args, FLAG_RULES) or data.check_data_args(args)
    if problem:
        parser.error(problem)
    if args.device not in ("auto", "cpu", "cuda") and not args.device.startswith("cuda:"):
        parser.error(f"--device {args.device} is invalid: auto, cpu, cuda or cuda:N")
    return args


FLAG_RULES = {  # flag: (test of its value, what it must be), checked by parse_args
    "epochs": (lambda v: v >= 1, "at least 1"), "batch_size": (lambda v: v >= 1, "at least 1"),
    "tau": (lambda v: v >= 1, "at least 1"), "print_freq": (lambda v: v >= 1, "at least 1"),
    "warmup": (lambda v: v >= 0, "0 or more epochs"),
    "baselr": (lambda v: v > 0, "a positive number"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"), "wd": (lambda v: v >= 0, "0 or more"),
    "kd_weight": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "distill_after": (lambda v: v >= 0, "0 or more epochs"),
    "label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "lower_channel": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "num_sampled_arch": (lambda v: v >= 0, "0 or more"),
    "prior_points": (lambda v: v >= 0, "0 or more"), "beta": (lambda v: v >= 0, "0 or more"),
    "baseline": (lambda v: True, "a number"),
    "rescore_limit": (lambda v: v >= 0, "0 (no limit) or more"),
    "curve_points": (lambda v: v >= 0, "0 (none) or more"),
    "curve_images": (lambda v: v >= 1, "at least 1"),
    "threads": (lambda v: v >= 0, "0 (automatic) or more"),
    "pause_after": (lambda v: v >= 0, "0 (never) or more"),
}


# ---------------------------------------------------------------------------------------------
# Distributed helpers (the process group itself: data.setup_distributed)


def broadcast_array(array, device, rank):
    """Rank 0's float64 NumPy array (any shape) on every rank."""
    if not dist.is_initialized():
        return array
    shape = torch.tensor(array.shape if rank == 0 else [0, 0], dtype=torch.long, device=device)
    dist.broadcast(shape, 0)
    values = torch.zeros(*shape.tolist(), dtype=torch.float64, device=device)
    if rank == 0:
        values.copy_(torch.from_numpy(np.asarray(array, dtype=np.float64)))
    dist.broadcast(values, 0)
    return values.cpu().numpy()


def average_over_ranks(values):
    if dist.is_initialized():
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return values


# ---------------------------------------------------------------------------------------------
# Checkpoints: a plain dict, written to a temporary file and renamed


def save_checkpoint(path, state):
    """``state`` to ``path`` atomically and durably (slimmable.write_atomic): a crash or a full
    disk leaves the previous checkpoint intact."""
    runs.save_checkpoint(path, state)


CHECKPOINT_KEYS = {"model", "optimizer", "step", "network", "method", "num_classes", "args"}
# Flags a method never reads: a rerun may differ in them (a default changed since, say).
JOSLIM_FLAGS = {"tau", "prior_points", "acquisition", "beta", "baseline", "rescore_limit", "cost"}
UNUSED_FLAGS = {"joslim": {"channel_config"}, "slim": JOSLIM_FLAGS | {"channel_config"},
                "random": JOSLIM_FLAGS | {"channel_config"},
                "fixed": JOSLIM_FLAGS | {"kd_weight", "distill_after", "num_sampled_arch"}}
# Flags that may change when a run is continued: how it runs, not what it computes.
SESSION_FLAGS = {"name", "print_freq", "threads", "workers", "pin_memory", "pause_after", "device",
                 "restart", "resume", "curve_points", "curve_images"}


def load_checkpoint(path, args):
    """The checkpoint at ``path``, if it continues the run ``args`` describe: every flag outside
    ``SESSION_FLAGS`` that its method reads must equal the recorded one (a flag the checkpoint
    does not record, from an older version, is not compared). Fail (one line naming the flags,
    old and new values) if not."""
    try:
        checkpoint = runs.load_checkpoint(path, required=())
    except Exception as error:  # a truncated or foreign file
        raise Fail(f"cannot read checkpoint {path}: {str(error).splitlines()[0]}; use --restart "
                   f"to start over") from None
    if not isinstance(checkpoint, dict) or not CHECKPOINT_KEYS <= set(checkpoint):
        raise Fail(f"{path} is not a checkpoint written by train.py (a dict with "
                   f"{', '.join(sorted(CHECKPOINT_KEYS))}); pick another --name, or --restart to "
                   f"overwrite it")
    for key in ("network", "method"):
        if checkpoint.get(key) != getattr(args, key):
            raise Fail(f"{path} holds a {checkpoint.get('method')} run of "
                       f"{checkpoint.get('network')}, not a {args.method} run of {args.network}; "
                       f"pick another --name, or --restart to overwrite it")
    recorded = checkpoint.get("args") or {}
    ignored = SESSION_FLAGS | UNUSED_FLAGS[args.method]
    changed = [f"--{key} {recorded[key]!r} -> {value!r}"
               for key, value in sorted(vars(args).items())
               if key in recorded and key not in ignored and recorded[key] != value]
    if changed:
        raise Fail(f"{path} was trained with other settings ({'; '.join(changed)}): rerun with "
                   f"its settings to continue it, pick another --name, or --restart to "
                   f"overwrite it")
    return checkpoint


# ---------------------------------------------------------------------------------------------
# The training step


def learning_rate(step, total_steps, warmup_steps, peak, scheduler):
    """Per-iteration schedule: linear warmup from 0, then linear or cosine decay to 0."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if scheduler == "linear_decay":
        return peak * (1 - progress)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model, args, peak_lr):
    """SGD; no weight decay on BN parameters and biases (all 1-D parameters)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.SGD([{"params": decay, "weight_decay": args.wd},
                            {"params": no_decay, "weight_decay": 0.0}],
                           lr=peak_lr, momentum=args.momentum, nesterov=args.nesterov)


def distillation_loss(student_logits, teacher_probs):
    """Soft cross-entropy against the teacher's probabilities (in-place distillation)."""
    return -(teacher_probs * F.log_softmax(student_logits, dim=1)).sum(dim=1).mean()


def student_loss(logits, targets, teacher_probs, kd_weight, label_smoothing):
    """``kd_weight * distillation + (1 - kd_weight) * label-smoothed CE`` of one student
    (logits (B, K), targets (B,), teacher_probs (B, K) or None = labels only)."""
    if teacher_probs is None or kd_weight == 0:
        return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    kd = distillation_loss(logits.float(), teacher_probs)
    if kd_weight == 1:
        return kd
    return kd_weight * kd + (1 - kd_weight) * F.cross_entropy(
        logits, targets, label_smoothing=label_smoothing)


def train_step(model, net, inputs, targets, configs, args, autocast, distill=True):
    """One sandwich step; ``configs`` are the student configurations (multiplier lists).

    The full network learns from the labels; the students from ``student_loss``: the
    ``--kd_weight`` mix of in-place distillation and the labels when ``distill``, else the labels
    alone (during ``--distill_after``). Why not distillation alone, as the reference: README,
    "The sandwich recipe". With ``args.method == 'fixed'`` every configuration learns from the
    labels. Under DDP the gradients are all-reduced once, in the last backward (``no_sync`` for
    the others). Returns the losses of the first and the last network trained.
    """
    teacher_probs, losses = None, []
    passes = [None] + configs if args.method != "fixed" else configs
    for index, widths in enumerate(passes):
        last = index == len(passes) - 1
        defer_sync = not last and hasattr(model, "no_sync")
        with model.no_sync() if defer_sync else contextlib.nullcontext():
            slimmable.set_widths(net, 1.0 if widths is None else widths)
            with autocast():
                logits = model(inputs)
                if index > 0 and args.method != "fixed":
                    loss = student_loss(logits, targets, teacher_probs if distill else None,
                                        args.kd_weight, args.label_smoothing)
                else:
                    loss = F.cross_entropy(logits, targets, label_smoothing=args.label_smoothing)
                if index == 0:
                    teacher_probs = F.softmax(logits.detach().float(), dim=1)
            loss.backward()
        losses.append(loss.detach())
    return losses[0], losses[-1]


def rescore(net, configs, inputs, targets, autocast):
    """Loss of each configuration on one held-out batch with the current weights (BN batch
    statistics, running statistics untouched, dropout off)."""
    losses = torch.zeros(len(configs), dtype=torch.float64, device=inputs.device)
    with slimmable.batch_statistics(net):
        for i, widths in enumerate(configs):
            slimmable.set_widths(net, widths.tolist())
            with autocast():
                logits = net(inputs)
            losses[i] = F.cross_entropy(logits.float(), targets,
                                        label_smoothing=0.0).double()
    return average_over_ranks(losses).cpu().numpy()


def held_out_top1(net, batches, widths, autocast):
    """Top-1 (%) of ``net`` at ``widths`` on ``batches`` (held-out (inputs, targets) pairs), BN
    normalizing by each batch's own statistics as in ``rescore``; summed over ranks."""
    counts = torch.zeros(2, dtype=torch.float64, device=batches[0][0].device)
    with slimmable.batch_statistics(net):
        slimmable.set_widths(net, widths)
        for inputs, targets in batches:
            with autocast():
                counts[0] += (net(inputs).argmax(1) == targets).sum()
            counts[1] += len(targets)
    if dist.is_initialized():
        dist.all_reduce(counts)
    return float(100 * counts[0] / counts[1])


def curve_batches(loader, images, device):
    """The first ``images`` held-out images of ``loader`` as a list of batches on ``device``,
    drawn without touching the global RNG (DataLoader workers seed from it)."""
    batches, count = [], 0
    with torch.random.fork_rng(devices=[]):
        for batch in loader:
            inputs, targets = batch[0][:images - count], batch[1][:images - count]
            batches.append((inputs.to(device), targets.to(device)))
            count += len(targets)
            if count >= images:
                break
    return batches


def build_sampler(args, net, num_dims):
    if args.method == "slim":
        return samplers.UniformSampler(num_dims, args.lower_channel, seed=args.seed)
    if args.method == "random":
        return samplers.RandomSampler(num_dims, args.lower_channel, seed=args.seed)
    if args.method == "joslim":
        cost = slimmable.COSTS[args.cost]
        full = float(cost(net, 1.0))
        return samplers.JoslimSampler(num_dims, args.lower_channel,
                                      lambda X: np.asarray(cost(net, X), dtype=np.float64) / full,
                                      prior_points=args.prior_points,
                                      acquisition=args.acquisition, beta=args.beta,
                                      baseline=args.baseline, seed=args.seed,
                                      max_scored=args.rescore_limit or None)
    return None


# ---------------------------------------------------------------------------------------------


def main(argv=None):
    args = parse_args(argv)
    try:
        with contextlib.ExitStack() as cleanup:  # releases the run's lock however run() ends
            status = run(args, cleanup)
    except (Fail, data.DataError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    if dist.is_initialized():  # a rank leaving while gloo still talks to it aborts the other
        dist.barrier()
        dist.destroy_process_group()
    return status


def run(args, cleanup):
    device, rank, world_size = runs.start(args.device, args.threads)
    run_dir = os.path.join("runs", args.name)
    if rank == 0:
        cleanup.enter_context(runs.lock(run_dir))
    checkpoint_path = os.path.join(run_dir, "checkpoint.pt")
    checkpoint = None
    if os.path.exists(checkpoint_path) and not args.restart:
        checkpoint = load_checkpoint(checkpoint_path, args)
    elif args.resume:
        raise Fail(f"--resume: no checkpoint at {checkpoint_path}")
    log_file = None  # opened at the first message: a run refused before that leaves no log

    def log(message):
        nonlocal log_file
        if rank == 0:
            print(message, flush=True)
            if log_file is None:
                os.makedirs(run_dir, exist_ok=True)
                log_file = cleanup.enter_context(open(os.path.join(run_dir, "log.txt"), "a"))
            log_file.write(message + "\n")
            log_file.flush()

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    loaders = data.get_loaders(args, args.batch_size)
    if args.method == "joslim" and loaders.val is None:
        raise Fail("--method joslim scores its history on the held-out split: use --val_size > 0")
    options = {"input_size": loaders.input_size, "in_channels": loaders.in_channels}
    if args.network == "slim_mobilenetv2":
        options["width_mult"] = args.width_mult
    net = models.get_model(args.network, loaders.num_classes, **options).to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    num_dims = len(net.width_groups)
    smallest = [args.lower_channel] * num_dims
    try:
        loaded = [slimmable.load_config(path, net) for path in args.channel_config]
    except ValueError as error:
        raise Fail(str(error)) from None
    fixed_configs = [widths for widths, _ in loaded]
    # where each configuration came from, so that evaluate.py can label the retrained models:
    # search.py's target, in millions of its cost (files of before the cost had a name: MACs)
    fixed_sources = [{"file": path,
                      "cost": record.get("cost", "macs" if "target_mflops" in record else None),
                      "target": record.get("target", record.get("target_mflops"))}
                     for path, (_, record) in zip(args.channel_config, loaded)]
    sampler = build_sampler(args, net, num_dims)
    tuner = runs.ThreadTuner(torch.get_num_threads()) if not args.threads and device.type == "cpu" \
        else None
    full_macs = float(slimmable.macs(net, 1.0))

    steps_per_epoch = len(loaders.train)
    if steps_per_epoch == 0:
        raise Fail(f"the training set is smaller than one batch of {args.batch_size}")
    total_steps = args.epochs * steps_per_epoch
    warmup_steps = int(args.warmup * steps_per_epoch)
    distill_after_steps = int(args.distill_after * steps_per_epoch)
    peak_lr = args.baselr * args.batch_size / 256
    optimizer = make_optimizer(net, args, peak_lr)
    step, window_configs, val_batches_used = 0, None, 0
    curves, curve_meter = [], [0.0, 0.0, 0]  # points so far; losses summed since the last point
    if checkpoint is not None:
        net.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        step, window_configs = checkpoint["step"], checkpoint["window_configs"]
        val_batches_used = checkpoint["val_batches_used"]
        curves = checkpoint.get("curves", [])
        curve_meter = checkpoint.get("curve_meter", curve_meter)
        if sampler is not None:
            sampler.load_state_dict(runs.as_numpy(checkpoint["sampler"]))
        recorded = checkpoint.get("args") or {}
        session = [f"--{key} {recorded[key]!r} -> {getattr(args, key)!r}" for key in
                   sorted(SESSION_FLAGS - {"restart", "resume"})
                   if key in recorded and recorded[key] != getattr(args, key)]
        if step < total_steps:  # a finished run says so below
            log(f"resuming {checkpoint_path} at step {step}/{total_steps}"
                + (f" (changed for this session: {'; '.join(session)})" if session else ""))
    model = net
    if world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()

    def autocast():
        if use_bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def state(finished=False):
        return {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "window_configs": window_configs, "val_batches_used": val_batches_used,
                "sampler": runs.plain(sampler.state_dict()) if sampler is not None else None,
                "rng": runs.rng_states(), "args": vars(args), "network": args.network,
                "method": args.method, "num_classes": loaders.num_classes,
                "model_options": options, "lower_channel": args.lower_channel,
                "fixed_configs": fixed_configs, "fixed_sources": fixed_sources,
                "curves": curves, "curve_meter": curve_meter, "finished": finished}

    def save(finished=False):
        if rank == 0:
            save_checkpoint(checkpoint_path, state(finished))

    if step >= total_steps:
        log(f"{args.name} already finished {total_steps} steps; next: "
            f"python evaluate.py --name {args.name}")
        return 0

    curve_every = max(1, total_steps // args.curve_points) if args.curve_points else 0
    held_out_batches = curve_batches(loaders.val, args.curve_images, device) \
        if curve_every and loaders.val is not None else []
    # the sandwich's two ends; --method fixed: its first and last configuration
    curve_ends = [fixed_configs[0], fixed_configs[-1]] if args.method == "fixed" else \
        [1.0, smallest]
    curves_path = os.path.join(run_dir, "curves.json")

    def curve_point(lr):
        """Append one point of the training curves and rewrite runs/NAME/curves.json."""
        point = {"step": step, "epoch": step / steps_per_epoch, "lr": lr,
                 "full_loss": curve_meter[0] / max(curve_meter[2], 1),
                 "smallest_loss": curve_meter[1] / max(curve_meter[2], 1)}
        if held_out_batches:
            point["full_top1"], point["smallest_top1"] = (
                held_out_top1(net, held_out_batches, widths, autocast) for widths in curve_ends)
            net.train()
        curves.append(point)
        curve_meter[:] = [0.0, 0.0, 0]
        if rank == 0:
            content = {"name": args.name, "method": args.method, "kd_weight": args.kd_weight,
                       "distill_after": args.distill_after, "steps_per_epoch": steps_per_epoch,
                       "total_steps": total_steps, "points": curves}
            runs.write_json(curves_path, content)

    val_state = {"iterator": None, "position": -1}

    def val_batch():
        """The next held-out batch, cycling through the val split in a fixed order."""
        nonlocal val_batches_used
        index = val_batches_used % len(loaders.val)
        if val_state["position"] != index:  # first use, wrap-around or resume
            val_state["iterator"] = iter(loaders.val)
            for _ in range(index):
                next(val_state["iterator"])
        inputs, targets = next(val_state["iterator"])[:2]
        val_state["position"] = index + 1
        val_batches_used += 1
        return inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)

    log(f"{args.method} training of {args.network} on {loaders.dataset}: {args.epochs} epochs x "
        f"{steps_per_epoch} steps, batch {args.batch_size} over {world_size} process(es), "
        f"peak lr {peak_lr:g}, {num_dims} width groups, device {device}")
    window = args.tau if args.method == "joslim" else 1  # slim/random: new widths every step
    configs_digest = 0.0  # a fingerprint of every configuration trained, to compare ranks
    sampler_seconds, run_start, run_steps = 0.0, time.time(), 0
    meter = {"full": 0.0, "small": 0.0, "count": 0, "images": 0, "start": time.time()}
    stop = runs.StopRequest().__enter__()
    try:
        while step < total_steps:
            epoch, offset = divmod(step, steps_per_epoch)
            # The data order and augmentation of an epoch depend only on (seed, epoch), and the
            # RNG state is restored after the skipped batches, so a resumed run is exact.
            torch.manual_seed(args.seed * 100_003 + epoch)
            data.set_epoch(loaders, epoch)
            batches = iter(loaders.train)
            for _ in range(offset):
                next(batches)
            if checkpoint is not None and offset and "rng" in checkpoint:
                runs.set_rng_states(checkpoint["rng"])
            checkpoint = None
            net.train()
            for inputs, targets in batches:
                if window_configs is None or step % window == 0:
                    start = time.time()
                    window_configs = next_configs(args, sampler, net, fixed_configs, smallest,
                                                  val_batch, device, rank, autocast, log, step)
                    configs_digest += float(np.sum(window_configs)) * (step + 1)
                    sampler_seconds += time.time() - start
                    if tuner is not None:  # the work of a step: MACs per image of its networks
                        step_macs = full_macs + float(slimmable.macs(
                            net, slimmable.width_matrix(net, window_configs)).sum())
                step_start = time.perf_counter()
                inputs = inputs.to(device, non_blocking=True)
                targets = targets.to(device, non_blocking=True)
                if device.type == "cuda":
                    inputs = inputs.contiguous(memory_format=torch.channels_last)
                lr = learning_rate(step, total_steps, warmup_steps, peak_lr, args.scheduler)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                full_loss, small_loss = train_step(model, net, inputs, targets, window_configs,
                                                   args, autocast, step >= distill_after_steps)
                optimizer.step()
                step += 1
                run_steps += 1
                full_value, small_value = full_loss.item(), small_loss.item()
                if tuner is not None:
                    change = tuner.record(time.perf_counter() - step_start, step_macs)
                    if change:
                        log(f"  step {step}: {change}")
                meter["full"] += full_value
                meter["small"] += small_value
                meter["count"] += 1
                curve_meter[0] += full_value
                curve_meter[1] += small_value
                curve_meter[2] += 1
                meter["images"] += inputs.shape[0] * world_size
                if step % args.print_freq == 0 or step == total_steps:
                    report(meter, step, total_steps, steps_per_epoch, lr, args, log)
                if curve_every and (step % curve_every == 0 or step == total_steps):
                    curve_point(lr)
                if step % steps_per_epoch == 0 and step < total_steps:
                    save()
                if args.pause_after and run_steps >= args.pause_after and step < total_steps:
                    save()
                    log(f"paused after {run_steps} steps at step {step}; rerun to continue")
                    return 0
                signum = stop.requested()
                if signum and step < total_steps:
                    save()
                    log(f"{signal.Signals(signum).name} at step {step}: checkpoint saved to "
                        f"{checkpoint_path}; rerun the same command to continue")
                    return 128 + signum  # 130 for Ctrl-C, 143 for SIGTERM
    except KeyboardInterrupt:  # a second Ctrl-C: leave now, keep the last saved checkpoint
        log(f"aborted during step {step + 1}; {checkpoint_path} holds the last saved state")
        return 130
    finally:
        stop.__exit__()
    save(finished=True)
    elapsed = time.time() - run_start
    log(f"done: {step} steps in {elapsed:.0f} s; last losses: full {meter['last_full']:.3f}, "
        f"smallest {meter['last_small']:.3f}; sampler + re-scoring took {sampler_seconds:.1f} s "
        f"({100 * sampler_seconds / max(elapsed, 1e-9):.1f}%)")
    if dist.is_initialized():
        check_ranks_agree(net, configs_digest, device, log)
    log(f"checkpoint: {checkpoint_path}; next: python evaluate.py --name {args.name}")
    return 0


def check_ranks_agree(net, configs_digest, device, log):
    """Every rank must end with the same weights, having trained the same configurations."""
    weights = sum(p.detach().double().sum() + p.detach().double().abs().sum()
                  for p in net.parameters())
    mine = torch.tensor([weights.item(), configs_digest], dtype=torch.float64, device=device)
    everyone = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, mine)
    if any(not torch.allclose(other, everyone[0], rtol=1e-9, atol=0) for other in everyone):
        raise RuntimeError(f"ranks diverged: {[o.tolist() for o in everyone]}")
    log(f"all {len(everyone)} ranks hold identical weights and trained the same configurations")


def next_configs(args, sampler, net, fixed_configs, smallest, val_batch, device, rank,
                 autocast, log, step):
    """The student configurations of the next window, identical on every rank."""
    if args.method == "fixed":
        return fixed_configs
    if args.method == "joslim":
        history = broadcast_array(sampler.history_configs() if rank == 0 else None, device, rank)
        if len(history):
            inputs, targets = val_batch()
            losses = rescore(net, history, inputs, targets, autocast)
            if rank == 0:
                sampler.observe(losses)
        net.train()
    proposals = broadcast_array(sampler.propose(args.num_sampled_arch) if rank == 0 else None,
                                device, rank)
    if args.method == "joslim" and rank == 0:
        costs = ", ".join(f"{c:.2f}" for c in sampler.last_costs)
        log(f"  window at step {step}: history {len(sampler.history_configs())}, "
            f"proposed costs [{costs}]")
    return [row.tolist() for row in proposals] + [smallest]


def report(meter, step, total_steps, steps_per_epoch, lr, args, log):
    elapsed = time.time() - meter["start"]
    full, small = meter["full"] / meter["count"], meter["small"] / meter["count"]
    images_per_second = meter["images"] / max(elapsed, 1e-9)
    seconds_per_step = elapsed / meter["count"]
    eta = seconds_per_step * (total_steps - step)
    log(f"epoch {step / steps_per_epoch:.2f}/{args.epochs} step {step}/{total_steps} loss full {full:.3f} "
        f"smallest {small:.3f} lr {lr:.4f} {images_per_second:.0f} img/s eta {eta / 60:.1f} min")
    meter.update(full=0.0, small=0.0, count=0, images=0, start=time.time(), last_full=full,
                 last_small=small)


if __name__ == "__main__":
    sys.exit(main())
