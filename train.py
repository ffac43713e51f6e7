"""Train a slimmable network: Joslim, Slim (US-Nets), the AutoSlim supernet, or fixed widths.

Every step follows the sandwich rule (Yu & Huang, US-Nets, ICCV'19): the full network learns
from the labels (label-smoothed cross-entropy); the smallest network and ``--num_sampled_arch``
sampled configurations, the students, learn from ``--kd_weight`` x in-place distillation (the
full network's detached soft predictions) + (1 - ``--kd_weight``) x the labels; the gradients
are summed and one optimizer step is taken. The reference code of Joslim and AutoSlim
distils only (``--kd_weight 1 --distill_after 0``): the students' distillation gradient points
against the full network's label gradient on the shared weights, which holds the full network
far below the same network trained alone on a short schedule. The default is labels only
(``--kd_weight 0``), the best held-out area of 0, 0.5 and 1 on Fashion-MNIST (3 seeds). The
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
        --network slim_mobilenetv2 --epochs 250 --warmup 5 --baselr 0.125 --tau 625 ...

Everything lands in ``runs/NAME/``: ``checkpoint.pt`` (a plain dict, written atomically every
epoch, on Ctrl-C and at the end) and ``log.txt``. Rerunning the same ``--name`` continues where it
stopped. Then: ``python evaluate.py --name NAME``.
"""
import contextlib
import itertools
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


def parse_args(argv=None):
    parser = runs.parser(__doc__)
    add = parser.add_argument
    count, some = runs.number(int, 1), runs.number(int, 0)  # at least 1; 0 or more
    fraction = runs.number(float, 0, 1, high_open=True)
    add("--name", type=runs.run_name, default="demo",
        help="run name: files go to runs/NAME/ (letters, digits, '._-'; default: demo)")
    add("--network", default="slim_resnet20", type=models.network_flag, metavar="NAME",
        help=f"{', '.join(models.NETWORKS)}; a torchvision classification network, e.g. "
             "regnet_x_400mf (python models.py lists them); or FILE.py:FUNCTION, a function of "
             "num_classes returning your nn.Module (both made slimmable from a graph trace)")
    add("--width_mult", type=runs.number(float, 0, low_open=True), default=1.0,
        help="MobileNetV2 width multiplier of the supernet (AutoSlim uses 1.5)")
    add("--method", default="joslim", choices=["joslim", "slim", "random", "fixed"])
    add("--channel_config", nargs="+", default=[], metavar="FILE",
        help="JSON configurations (from search.py) to retrain with --method fixed")
    add("--epochs", type=count, default=4, help="training epochs (default: 4)")
    add("--warmup", type=runs.number(float, 0), default=1, help="linear lr warmup, in epochs")
    add("--baselr", type=runs.number(float, 0, low_open=True), default=0.1,
        help="peak lr = baselr * batch_size / 256")
    add("--scheduler", default="cosine_decay", choices=["linear_decay", "cosine_decay"],
        help="lr decay after warmup, per iteration")
    add("--momentum", type=fraction, default=0.9, help="SGD momentum")
    add("--nesterov", action="store_true", help="Nesterov momentum")
    add("--wd", type=runs.number(float, 0), default=5e-4,
        help="weight decay (not applied to BN parameters and biases)")
    add("--kd_weight", type=runs.number(float, 0, 1), default=0.0,
        help="the students' loss: kd_weight x in-place distillation + (1 - kd_weight) x labels; "
             "1 as the reference code, default 0 (labels only)")
    add("--distill_after", type=runs.number(float, 0), default=0.0,
        help="epochs of labels only for the students before the --kd_weight mix starts")
    add("--label_smoothing", type=fraction, default=0.1,
        help="label smoothing of every cross-entropy with the labels")
    add("--batch_size", type=count, default=128, help="global batch size over all processes")
    add("--lower_channel", type=runs.number(float, 0, 1, low_open=True, high_open=True),
        default=0.42, help="smallest width multiplier of every group: the sandwich's smallest")
    add("--num_sampled_arch", type=some, default=2,
        help="configurations trained between the full and the smallest network each step")
    add("--tau", type=count, default=20,
        help="joslim: steps between re-scoring the history and proposing new configurations")
    add("--prior_points", type=count, default=10,
        help="joslim: uniform-width configurations proposed before the Gaussian process starts")
    add("--acquisition", default="ei", choices=["ei", "ucb"],
        help="joslim: expected improvement over the front, or the paper's UCB with an augmented "
             "Tchebyshev scalarization")
    add("--beta", type=runs.number(float, 0), default=0.1, help="joslim ucb: exploration weight")
    add("--baseline", type=runs.number(float), default=-3.0,
        help="joslim ucb: Tchebyshev reference point in standardized units (the reference "
             "code's default of 5 flips its search; -3 is the paper's)")
    add("--rescore_limit", type=some, default=120,
        help="joslim: re-score at most this many history configurations per window, the "
             "newest and the Pareto layers first (0: all, as the reference)")
    add("--cost", default="macs", choices=list(slimmable.COSTS),
        help="joslim: the cost axis of the front")
    add("--print_freq", type=count, default=20, help="steps between progress lines")
    add("--curve_points", type=some, default=16,
        help="evenly spaced points of the training curves in runs/NAME/curves.json; 0: none")
    add("--curve_images", type=count, default=512, help="held-out images per curve point")
    add("--seed", type=runs.seed_flag, default=0, help="seed for weights, data order and sampling")
    runs.add_process_flags(parser, "CPU threads per process (0: the usable cores / processes, "
                           "adjusted while other processes compete for them)")
    either = parser.add_mutually_exclusive_group()
    either.add_argument("--restart", action="store_true",
                        help="start over even if runs/NAME/checkpoint.pt exists (it is overwritten)")
    either.add_argument("--resume", action="store_true", help="continue runs/NAME/checkpoint.pt "
                        "(also done without this flag when it exists)")
    add("--pause_after", type=some, default=0,
        help="save and stop after this many steps of this run (preemptible jobs; rerun to go on)")
    add("--data_on_device", default="auto", choices=["auto", "on", "off"],
        help="draw and augment an in-memory training set's batches on the device "
             "(data.DeviceBatches); auto: on for CUDA")
    data.add_data_args(parser)
    args = parser.parse_args(argv)
    if args.method == "fixed" and not args.channel_config:
        parser.error("--method fixed needs --channel_config FILE...")
    if problem := data.check_data_args(args):
        parser.error(problem)
    return args


# ---------------------------------------------------------------------------------------------
# The method: learning rate, losses, the sandwich step, re-scoring, the next configurations


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
    """``kd_weight * distillation + (1 - kd_weight) * label-smoothed CE`` of one network of the
    sandwich (logits (B, K), targets (B,), teacher_probs (B, K) or None = labels only: the full
    network, and every student when nothing is distilled)."""
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
    alone (during ``--distill_after``). With ``args.method == 'fixed'`` every configuration
    learns from the labels. Under DDP the gradients are all-reduced once, in the last backward
    (``no_sync`` for the others). Returns the losses of the first and the last network trained.
    """
    teacher_probs, losses = None, []  # None in the first pass: labels only
    passes = [None] + configs if args.method != "fixed" else configs
    use_teacher = distill and args.method != "fixed" and args.kd_weight > 0
    for index, widths in enumerate(passes):
        defer_sync = index < len(passes) - 1 and hasattr(model, "no_sync")
        with model.no_sync() if defer_sync else contextlib.nullcontext():
            slimmable.set_widths(net, 1.0 if widths is None else widths)
            with autocast():
                logits = model(inputs)
                loss = student_loss(logits, targets, teacher_probs, args.kd_weight,
                                    args.label_smoothing)
                if index == 0 and use_teacher:
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
    if dist.is_initialized():
        dist.all_reduce(losses)
        losses /= dist.get_world_size()
    return losses.cpu().numpy()


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


def build_sampler(args, net):
    """The width sampler of ``args.method`` (sampler.py); None for ``fixed``."""
    num_dims = len(net.width_groups)
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


def next_configs(sampler, count, net, held_out_batch, autocast, step, rank=0):
    """The ``count`` configurations ``sampler`` proposes next (multiplier lists), rank 0's on every
    rank. Joslim (Sec. 3) first re-scores its history on one held-out batch (``held_out_batch()``)
    with the current weights, so that the Gaussian process proposes from the losses as they are
    now; ``Fail`` if they are not finite (the training diverged by ``step``)."""
    if isinstance(sampler, samplers.JoslimSampler):
        history = runs.broadcast(sampler.history_configs() if rank == 0 else None)
        if len(history):
            losses = rescore(net, history, *held_out_batch(), autocast)
            if not np.isfinite(losses).all():
                raise Fail(f"training diverged: held-out losses of the history are not finite at "
                           f"step {step}; lower --baselr and --restart")
            if rank == 0:
                sampler.observe(losses)
    proposals = runs.broadcast(sampler.propose(count) if rank == 0 else None)
    return [row.tolist() for row in proposals]


# ---------------------------------------------------------------------------------------------
# The training loop


def train(args, run):
    """Train ``run`` (a ``TrainingRun``) to its last step: per batch, the configurations of the
    window, one sandwich step (``train_step``), one optimizer step, then the bookkeeping.
    Returns the exit status: 0, or 128 + the signal that stopped it (state saved)."""
    net, optimizer = run.net, run.optimizer
    window = args.tau if args.method == "joslim" else 1  # slim/random: new widths every step
    if run.step >= run.total_steps:
        run.log(f"{args.name} already finished {run.total_steps} steps; next: "
                f"python evaluate.py --name {args.name}")
        return 0
    run.log(f"{args.method} training of {args.network} on {run.loaders.dataset}: {args.epochs} "
            f"epochs x {run.steps_per_epoch} steps, batch {args.batch_size} over "
            f"{run.world_size} process(es), peak lr {run.peak_lr:g}, "
            f"{len(net.width_groups)} width groups, device {run.device}")
    with runs.stop_requests() as stop_requested:
        while run.step < run.total_steps:
            for inputs, targets in run.epoch_batches():
                if run.window_configs is None or run.step % window == 0:
                    run.window_configs = run.next_window()
                step_start = time.perf_counter()
                inputs = inputs.to(run.device, non_blocking=True, memory_format=run.layout)
                targets = targets.to(run.device, non_blocking=True)
                lr = learning_rate(run.step, run.total_steps, run.warmup_steps, run.peak_lr,
                                   args.scheduler)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                full_loss, small_loss = train_step(run.model, net, inputs, targets,
                                                   run.window_configs, args, run.autocast,
                                                   run.step >= run.distill_after_steps)
                optimizer.step()
                run.step += 1
                run.record(full_loss.item(), small_loss.item(), lr, inputs.shape[0],
                           time.perf_counter() - step_start)
                if run.step % run.steps_per_epoch == 0 and run.step < run.total_steps:
                    run.save()
                status = run.stop_status(stop_requested)
                if status is not None:
                    return status
    run.save(finished=True)
    run.finish()
    return 0


def main(argv=None):
    return runs.cli(start_and_train, parse_args(argv), user_errors=(data.DataError,))


def start_and_train(args):
    device, rank, world_size = runs.start(args.device, args.threads)
    folder = runs.run_folder(args.name)
    with runs.lock(folder) if rank == 0 else contextlib.nullcontext():
        log = runs.Log(os.path.join(folder, "log.txt"), rank)
        try:
            return train(args, TrainingRun(args, device, rank, world_size, log))
        finally:
            log.close()


# ---------------------------------------------------------------------------------------------
# A run from step to step: what a checkpoint holds, and the bookkeeping around each step


CHECKPOINT_KEYS = ("model", "optimizer", "step", "network", "method", "num_classes", "args")
# A rerun continues the checkpoint only with the same flags, except those its method never reads
# and those that say how it runs, not what it computes.
JOSLIM_FLAGS = {"tau", "prior_points", "acquisition", "beta", "baseline", "rescore_limit", "cost"}
UNUSED_FLAGS = {"joslim": {"channel_config"}, "slim": JOSLIM_FLAGS | {"channel_config"},
                "random": JOSLIM_FLAGS | {"channel_config"},
                "fixed": JOSLIM_FLAGS | {"kd_weight", "distill_after", "num_sampled_arch"}}
# Not --workers: loader workers draw the augmentation from their own seeds, so their count changes
# the batches.
SESSION_FLAGS = {"name", "print_freq", "threads", "pin_memory", "pause_after", "device", "restart",
                 "resume", "curve_points", "curve_images"}


class TrainingRun:
    """One run of train.py between start-up and exit: the network, optimizer, sampler and data,
    the position in the schedule, and the bookkeeping around each step. Rerunning the same
    command continues from its checkpoint (``save``) exactly."""

    def __init__(self, args, device, rank, world_size, log):
        self.args, self.device, self.rank, self.world_size, self.log = \
            args, device, rank, world_size, log
        self.checkpoint_path = runs.checkpoint_path(args.name)
        checkpoint = runs.resume(self.checkpoint_path, args, CHECKPOINT_KEYS,
                                 SESSION_FLAGS | UNUSED_FLAGS[args.method])
        torch.manual_seed(args.seed)
        random.seed(args.seed)
        np.random.seed(args.seed)
        self._build(args)
        self.step, self.window_configs, self.val_batches_used = 0, None, 0
        self.curves, self.curve_meter = [], [0.0, 0.0, 0]  # points; losses since the last one
        self.resumed_rng, self.session_steps = None, 0
        if checkpoint is not None:
            self._restore(checkpoint)
        self.model = self.net if world_size == 1 else torch.nn.parallel.DistributedDataParallel(
            self.net, device_ids=[device.index] if device.type == "cuda" else None)
        use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 \
            else contextlib.nullcontext
        self.curve_every = max(1, self.total_steps // args.curve_points) if args.curve_points else 0
        curve_data = self.loaders.val if self.curve_every else None
        self.curve_batches = [] if curve_data is None else [
            (x.to(device, memory_format=self.layout), y.to(device))
            for x, y in data.first_batches(curve_data, images=args.curve_images)]
        self.val_iterator, self.configs_digest, self.sampler_seconds = None, 0.0, 0.0
        self.start_time, self.progress_start = time.time(), time.perf_counter()
        self.progress = [0.0, 0.0, 0]  # losses since the last progress line

    def _build(self, args):
        """The data, the network, the configurations of --method fixed, the sampler, the
        optimizer and the schedule in steps."""
        if args.batch_size % self.world_size:  # the learning rate is set for the whole batch
            raise Fail(f"--batch_size {args.batch_size} must be a multiple of the "
                       f"{self.world_size} processes, which each load an equal share")
        self.loaders = loaders = data.get_loaders(args, args.batch_size)
        if args.method == "joslim" and loaders.val is None:
            raise Fail("--method joslim scores its history on the held-out split: use "
                       "--val_size > 0")
        self.options = {"input_size": loaders.input_size, "in_channels": loaders.in_channels}
        if args.network == "slim_mobilenetv2":
            self.options["width_mult"] = args.width_mult
        # --data_on_device: batches drawn and augmented on the device (auto: on CUDA, in memory)
        in_memory = isinstance(loaders.train.dataset, data.InMemoryImages)
        on_device = args.data_on_device == "on" or (args.data_on_device == "auto" and in_memory
                                                    and self.device.type == "cuda")
        if on_device and not in_memory:
            raise Fail(f"--data_on_device on: {loaders.dataset} is read from disk, not held in "
                       f"memory; use --data_on_device off")
        self.device_batches = data.DeviceBatches(loaders.train.dataset, loaders.train.batch_size,
                                                 self.device, self.rank, self.world_size) \
            if on_device else None
        try:
            self.net = models.get_model(args.network, loaders.num_classes, **self.options)
            loaded = [slimmable.load_config(path, self.net) for path in args.channel_config]
        except ValueError as error:  # a network that cannot be converted, a foreign config file
            raise Fail(str(error)) from None
        self.smallest = [args.lower_channel] * len(self.net.width_groups)  # the sandwich's end
        for line in getattr(self.net, "frozen", ()):
            self.log(line)  # "froze GROUP (C channels) at node N: why": kept at full width
        # channels-last on CUDA, the network and its input batches: faster convolutions there
        self.layout = torch.channels_last if self.device.type == "cuda" else torch.preserve_format
        self.net.to(self.device, memory_format=self.layout)
        self.fixed_configs = [widths for widths, _ in loaded]
        # where each configuration came from, so that evaluate.py can label the retrained models
        self.fixed_sources = [{"file": path, "cost": record.get("cost"),
                               "target": record.get("target")}
                              for path, (_, record) in zip(args.channel_config, loaded)]
        self.sampler = build_sampler(args, self.net)
        self.tuner = runs.ThreadTuner(torch.get_num_threads(), first=8) \
            if not args.threads and self.device.type == "cpu" else None
        self.full_macs = float(slimmable.macs(self.net, 1.0))
        self.steps_per_epoch = len(loaders.train)
        if self.steps_per_epoch == 0:
            raise Fail(f"the training set is smaller than one batch of {args.batch_size}")
        self.total_steps = args.epochs * self.steps_per_epoch
        self.warmup_steps = int(args.warmup * self.steps_per_epoch)
        self.distill_after_steps = int(args.distill_after * self.steps_per_epoch)
        self.peak_lr = args.baselr * args.batch_size / 256
        self.optimizer = make_optimizer(self.net, args, self.peak_lr)

    def _restore(self, checkpoint):
        runs.load_weights(self.net, checkpoint["model"], self.checkpoint_path)
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.step, self.window_configs = checkpoint["step"], checkpoint["window_configs"]
        self.val_batches_used = checkpoint["val_batches_used"]
        self.curves, self.curve_meter = checkpoint["curves"], checkpoint["curve_meter"]
        if self.sampler is not None:  # sampler.py reads NumPy arrays; the checkpoint holds tensors
            self.sampler.load_state_dict({key: value.numpy() if torch.is_tensor(value) else value
                                          for key, value in checkpoint["sampler"].items()})
        self.resumed_rng = checkpoint["rng"]
        recorded = checkpoint["args"]
        session = [f"--{key} {recorded[key]!r} -> {getattr(self.args, key)!r}" for key in
                   sorted(SESSION_FLAGS - {"restart", "resume"})
                   if key in recorded and recorded[key] != getattr(self.args, key)]
        if self.step < self.total_steps:  # a finished run says so in train()
            self.log(f"resuming {self.checkpoint_path} at step {self.step}/{self.total_steps}"
                     + (f" (changed for this session: {'; '.join(session)})" if session else ""))

    def save(self, finished=False):
        """Write the checkpoint, a plain dict (rank 0); ``Fail`` instead when a weight or BN
        statistic is not finite, so the last finite checkpoint stays."""
        args, weights = self.args, self.net.state_dict()
        if broken := runs.not_finite(weights):
            raise Fail(f"training diverged by step {self.step}: {broken} not finite; "
                       f"{self.checkpoint_path} keeps the last finite state: lower --baselr")
        if self.rank == 0:
            runs.save_checkpoint(self.checkpoint_path, {
                "model": weights, "optimizer": self.optimizer.state_dict(), "step": self.step,
                "window_configs": self.window_configs, "val_batches_used": self.val_batches_used,
                "sampler": runs.plain(self.sampler.state_dict()) if self.sampler else None,
                "rng": runs.rng_states(), "args": vars(args), "network": args.network,
                "method": args.method, "num_classes": self.loaders.num_classes,
                "model_options": self.options, "lower_channel": args.lower_channel,
                "fixed_configs": self.fixed_configs, "fixed_sources": self.fixed_sources,
                "curves": self.curves, "curve_meter": self.curve_meter, "finished": finished})

    def epoch_batches(self):
        """An iterator over the rest of the current epoch's training batches. The data order and
        augmentation of an epoch depend only on (seed, epoch), and a resumed run restores the
        RNG state after skipping the batches already trained, so it continues exactly."""
        epoch, offset = divmod(self.step, self.steps_per_epoch)
        torch.manual_seed(self.args.seed * 100_003 + epoch)
        if self.device_batches is not None:  # drawn from (seed, epoch): skipped, not drawn
            batches = self.device_batches.batches(self.args.seed, epoch, skip=offset)
        else:
            data.set_epoch(self.loaders, epoch)
            batches = iter(self.loaders.train)
            for _ in range(offset):  # drawn before the RNG state is restored
                next(batches)
        if self.resumed_rng is not None and offset:
            runs.set_rng_states(self.resumed_rng)
        self.resumed_rng = None
        self.net.train()
        return batches

    def next_window(self):
        """The student configurations of the next window (multiplier lists, the smallest network
        last; --method fixed: its own), the same on every rank (``next_configs``). Timed, logged,
        and fingerprinted for ``finish``'s check of the ranks."""
        args, sampler, start = self.args, self.sampler, time.time()
        configs = self.fixed_configs
        if args.method != "fixed":
            configs = next_configs(sampler, args.num_sampled_arch, self.net, self.held_out_batch,
                                   self.autocast, self.step, self.rank) + [self.smallest]
        if args.method == "joslim" and self.rank == 0:
            self.log(f"  window at step {self.step}: history {len(sampler.configs)}, "
                     f"proposed costs [{', '.join(f'{c:.2f}' for c in sampler.last_costs)}]")
        self.configs_digest += float(np.sum(configs)) * (self.step + 1)
        self.sampler_seconds += time.time() - start
        if self.tuner is not None:  # the work of a step: MACs per image of its networks
            self.step_macs = self.full_macs + float(slimmable.macs(
                self.net, slimmable.width_matrix(self.net, configs)).sum())
        return configs

    def held_out_batch(self):
        """The next held-out batch, cycling through the val split in a fixed order."""
        index = self.val_batches_used % len(self.loaders.val)
        if index == 0 or self.val_iterator is None:  # first use, wrap-around or resume
            self.val_iterator = itertools.islice(iter(self.loaders.val), index, None)
        inputs, targets = next(self.val_iterator)[:2]
        self.val_batches_used += 1
        return (inputs.to(self.device, non_blocking=True, memory_format=self.layout),
                targets.to(self.device, non_blocking=True))

    def record(self, full_loss, small_loss, lr, batch, seconds):
        """After a step: the thread tuner, the loss sums, a progress line every --print_freq
        steps and a point of the training curves every ``curve_every``."""
        self.session_steps += 1
        for network, loss in (("full", full_loss), ("smallest", small_loss)):
            if not math.isfinite(loss):  # nothing after this step is worth keeping
                raise Fail(f"training diverged: the {network} network's loss is {loss} at step "
                           f"{self.step} (learning rate {lr:.4g}); {self.checkpoint_path} keeps "
                           f"the last finite state: lower --baselr and --restart")
        if self.tuner is not None and (change := self.tuner.record(seconds, self.step_macs)):
            self.log(f"  step {self.step}: {change}")
        for sums in (self.progress, self.curve_meter):
            sums[:] = [sums[0] + full_loss, sums[1] + small_loss, sums[2] + 1]
        last = self.step == self.total_steps
        if self.step % self.args.print_freq == 0 or last:
            full, small, count = self.progress
            seconds = max(time.perf_counter() - self.progress_start, 1e-9)
            rate, eta = count * batch * self.world_size / seconds, seconds / count * (
                self.total_steps - self.step)
            self.log(f"epoch {self.step / self.steps_per_epoch:.2f}/{self.args.epochs} step "
                     f"{self.step}/{self.total_steps} loss full {full / count:.3f} smallest "
                     f"{small / count:.3f} lr {lr:.4f} {rate:.0f} img/s eta {eta / 60:.1f} min")
            self.progress, self.progress_start = [0.0, 0.0, 0], time.perf_counter()
        if self.curve_every and (self.step % self.curve_every == 0 or last):
            self.curve_point(lr)

    def curve_point(self, lr):
        """Append one point of the training curves and rewrite runs/NAME/curves.json: the mean
        training losses since the last point and, on held-out images, the top-1 of the
        sandwich's two ends (--method fixed: its first and last configuration)."""
        args, (full, small, count) = self.args, self.curve_meter
        point = {"step": self.step, "epoch": self.step / self.steps_per_epoch, "lr": lr,
                 "full_loss": full / max(count, 1), "smallest_loss": small / max(count, 1)}
        if self.curve_batches:
            ends = [self.fixed_configs[0], self.fixed_configs[-1]] if args.method == "fixed" \
                else [1.0, self.smallest]
            point["full_top1"], point["smallest_top1"] = (held_out_top1(
                self.net, self.curve_batches, widths, self.autocast) for widths in ends)
        self.curves.append(point)
        self.curve_meter[:] = [0.0, 0.0, 0]
        if self.rank == 0:
            runs.write_json(os.path.join(os.path.dirname(self.checkpoint_path), "curves.json"), {
                "name": args.name, "method": args.method, "kd_weight": args.kd_weight,
                "distill_after": args.distill_after, "steps_per_epoch": self.steps_per_epoch,
                "total_steps": self.total_steps, "points": self.curves})

    def stop_status(self, stop_requested):
        """After a step: the exit status when this session ends here, the checkpoint saved first:
        0 after its --pause_after steps, 128 + the signal after Ctrl-C (130) or SIGTERM (143) (a
        ``runs.stop_requests``); None to go on."""
        if self.step == self.total_steps:
            return None  # the loop saves the finished run
        paused = self.args.pause_after and self.session_steps >= self.args.pause_after
        signum = 0 if paused else stop_requested()
        if not (paused or signum):
            return None
        self.save()
        where = f"step {self.step}: checkpoint saved to {self.checkpoint_path}"
        self.log(f"paused after {self.session_steps} steps at {where}; rerun to continue"
                 if paused else f"{signal.Signals(signum).name} at {where}; rerun the same "
                 f"command to continue")
        return 0 if paused else 128 + signum

    def finish(self):
        elapsed = time.time() - self.start_time
        self.log(f"done: {self.step} steps in {elapsed:.0f} s; sampler + re-scoring took "
                 f"{self.sampler_seconds:.1f} s "
                 f"({100 * self.sampler_seconds / max(elapsed, 1e-9):.1f}%)")
        if self.world_size > 1:
            runs.check_ranks_agree(self.net, self.configs_digest, self.log)
        self.log(f"checkpoint: {self.checkpoint_path}; next: python evaluate.py --name "
                 f"{self.args.name}")


if __name__ == "__main__":
    sys.exit(main())
