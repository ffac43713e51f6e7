"""Speed and quality benchmarks, each measured side by side in one run on this machine.

Speed figures are ratios or rates taken in one process with the candidates interleaved, so a busy
machine slows both sides alike. Nothing here is asserted by the tests.

    python bench.py speed               # every speed table below, with the machine recorded
    python bench.py overhead            # slimmable vs exported static model, forward+backward
    python bench.py macs                # vectorized MAC counting
    python bench.py overhead --networks slim_resnet20 --pairs 10
    python bench.py search --name autoslim  # a searched supernet: search speed, searched vs uniform
    python bench.py quality [--quick]   # Joslim vs Slim vs AutoSlim vs uniform widths, 3 seeds,
                                        # on Fashion-MNIST if installed, else synthetic
    python bench.py quality --seeds 0 --threads 1 &   # the same, one process per seed:
    python bench.py quality --seeds 1 --threads 1 &
    python bench.py quality --seeds 2 --threads 1     # then, once all three are done,
    python bench.py quality                           # the table (reads their results)
    python bench.py recipe --seeds 0 1  # the students' recipes on Fashion-MNIST (README)
    taskset -c 0,1 python bench.py contention  # training beside one busy process: threads and
                                               # OpenMP waiting, each setting in a fresh process
    python bench.py gpu                 # the CUDA path in one command (under 9 minutes on one
                                        # H100): results/gpu.json; --device cpu --tiny: seconds
    python bench.py convert --threads 1 # convert.make_slimmable on the 68 torchvision CNNs:
                                        # groups, frozen groups, exports and costs checked
    python bench.py convert --quick     # one network per family; --only NAME... for some
"""
import contextlib
import copy
import functools
import glob
import json
import os
import shutil
import signal
import tempfile
import platform
import statistics
import subprocess
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as train.py: NumPy serves the sampler only
import numpy as np  # noqa: E402
import torch  # noqa: E402

from PIL import Image  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import data  # noqa: E402
import evaluate  # noqa: E402
import models  # noqa: E402
import sampler as samplers  # noqa: E402
import search  # noqa: E402
import runs  # noqa: E402
import slimmable  # noqa: E402
import train  # noqa: E402
import convert  # noqa: E402


def machine():
    """One line naming the machine the figures came from."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
            f"torch {torch.__version__} with {torch.get_num_threads()} threads, {device}")


def device_seconds(function, device=torch.device("cpu"), calls=1, warmup=1):
    """Seconds per call of ``function`` after ``warmup`` calls: CUDA events around ``calls`` calls
    on a GPU (the queue drained first), time.perf_counter on the CPU."""
    for _ in range(warmup):
        function()
    if device.type != "cuda":
        start = time.perf_counter()
        for _ in range(calls):
            function()
        return (time.perf_counter() - start) / calls
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        function()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1000 / calls


def on_device(model, device):
    """``model`` (or input batch) where train.py puts it: on ``device``, channels_last on CUDA."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


def autocast_on(device):
    """train.py's precision: bf16 autocast on CUDA, float32 elsewhere."""
    if device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def forward_backward(model, inputs, targets, autocast=contextlib.nullcontext):
    """One forward+backward pass, gradients reset first as an optimizer step would."""
    model.zero_grad(set_to_none=True)
    with autocast():
        loss = torch.nn.functional.cross_entropy(model(inputs), targets)
    loss.backward()


def speed_network(name, batch, imagenet_size, device=torch.device("cpu")):
    """(network ``name`` in train mode on ``device``, random inputs, targets) at the speed
    benchmarks' sizes: the CIFAR ResNets at 32x32, the ImageNet networks at ``imagenet_size``."""
    cifar = name in models.CIFAR_NETWORKS
    size = 32 if cifar else imagenet_size
    torch.manual_seed(0)
    net = on_device(models.get_model(name, 10 if cifar else 1000, input_size=size).train(), device)
    inputs = on_device(torch.randn(batch, 3, size, size), device)
    return net, inputs, torch.randint(0, 10, (batch,), device=device)


def slim_vs_static(net, widths, inputs, targets, pairs, calls, warmup=0,
                   autocast=contextlib.nullcontext):
    """Seconds per forward+backward of the slimmable ``net`` at ``widths`` and of
    ``slimmable.export`` of it, ``pairs`` blocks of ``calls`` calls each (``warmup`` untimed calls
    before a block), the order alternating so that a slow spell of the machine slows both sides
    of a pair alike: (slimmable seconds, static seconds, slimmable / static of each pair)."""
    slimmable.set_widths(net, widths)
    static = on_device(slimmable.export(net, widths).train(), inputs.device)
    times = {net: [], static: []}
    for pair in range(pairs):
        for model in (net, static) if pair % 2 == 0 else (static, net):
            times[model].append(device_seconds(
                lambda: forward_backward(model, inputs, targets, autocast), inputs.device, calls,
                warmup))
    return times[net], times[static], [a / b for a, b in zip(times[net], times[static])]


def bench_overhead(networks, widths_list=(1.0, 0.71, 0.42), batch_size=64, pairs=20,
                   imagenet_size=112, block_seconds=0.5):
    """Forward+backward time of the slimmable model at a width against ``slimmable.export`` of it:
    ``slim_vs_static`` in ``pairs`` pairs of blocks of about ``block_seconds``. Reports the median
    pair ratio (goal <= 1.05) and the middle half of the pair ratios. At width 1.0 both run the
    same kernels: that row is the machine's A/A noise."""
    print(f"slimmable vs static, forward+backward, batch {batch_size}, {pairs} alternating pairs "
          f"of ~{block_seconds:g} s blocks (ImageNet networks at {imagenet_size}x{imagenet_size})")
    print(f"{'network':<24}{'width':>6}{'slim ms':>10}{'static ms':>11}{'ratio':>8}"
          f"{'middle half':>15}")
    rows = []
    for name in networks:
        net, inputs, targets = speed_network(name, batch_size, imagenet_size)
        for widths in widths_list:
            # warm-up (the allocator settles in a step or two), which also sizes the blocks
            warm_up = slim_vs_static(net, widths, inputs, targets, pairs=2, calls=1)[0]
            steps = max(1, round(block_seconds / warm_up[-1]))
            slim_times, static_times, ratios = slim_vs_static(net, widths, inputs, targets, pairs,
                                                              steps)
            low, ratio, high = statistics.quantiles(ratios, n=4)
            slim_ms = 1000 * statistics.median(slim_times)
            static_ms = 1000 * statistics.median(static_times)
            rows.append((name, widths, slim_ms, static_ms, ratio, low, high))
            print(f"{name:<24}{widths:>6}{slim_ms:>10.1f}{static_ms:>11.1f}{ratio:>8.3f}"
                  f"{f'{low:.3f}-{high:.3f}':>15}", flush=True)
    return rows


def bench_macs(count=10_000, repeats=5):
    """Seconds to count the MACs of ``count`` random ResNet-56 configurations at once; also
    prints the milliseconds of ``set_widths`` and ``macs`` for one configuration."""
    net = models.get_model("slim_resnet56", 100)
    generator = torch.Generator().manual_seed(0)
    configs = (0.42 + 0.58 * torch.rand(count, len(net.width_groups), generator=generator,
                                        dtype=torch.float64)).numpy()
    slimmable.macs(net, configs[:1])  # builds the cost table once
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        slimmable.macs(net, configs)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    print(f"MACs of {count:,} slim_resnet56 configurations: {seconds * 1000:.1f} ms "
          f"({count / seconds:,.0f} configurations/s)")
    one = configs[0].tolist()  # what each network of a training step and each search candidate pays
    for label, function in (("set_widths", slimmable.set_widths), ("MACs", slimmable.macs)):
        seconds_one = device_seconds(lambda: function(net, one), calls=200)
        print(f"{label} of one slim_resnet56 configuration: {seconds_one * 1000:.2f} ms")
    return seconds


def bench_converter(num_images=500, image_size=256, num_classes=10, seed=0):
    """Convert `num_images` generated JPEGs (image_size^2, photo-like file sizes) to LMDB;
    print and return the converter's images per second (file reading + header check + writes)."""
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as root:
        source = os.path.join(root, "train")
        total_bytes = 0
        for index in range(num_images):
            folder = os.path.join(source, f"class{index % num_classes:03d}")
            os.makedirs(folder, exist_ok=True)
            # smooth colour field + grain: compresses like a photo (tens of kB), unlike pure noise
            coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            image = np.asarray(Image.fromarray(coarse).resize((image_size, image_size),
                                                              Image.BILINEAR), np.int16)
            image = np.clip(image + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)
            path = os.path.join(folder, f"{index:06d}.jpg")
            Image.fromarray(image).save(path, quality=90)
            total_bytes += os.path.getsize(path)
        start = time.perf_counter()
        data.convert_folder_to_lmdb(source, os.path.join(root, "train.lmdb"), log=lambda line: None)
        seconds = time.perf_counter() - start
    images_per_second = num_images / seconds
    print(f"bench_converter: {num_images} JPEGs of {image_size}x{image_size} "
          f"({total_bytes / num_images / 1024:.0f} kB each) in {seconds:.2f} s: "
          f"{images_per_second:.0f} images/s, {total_bytes / seconds / 2**20:.0f} MB/s")
    return images_per_second


def bench_sampler(history_sizes=(200, 1000), repeats=5, lower=0.42):
    """Latency of one Joslim proposal with a history of 200 and 1,000 configurations of
    slim_resnet56 (D = 30, exact MACs ratio as the cost), both acquisitions: the first proposal
    after ``observe`` (hyperparameter refit included) and the next one of the same window."""
    net = models.get_model("slim_resnet56", 100)
    full = float(slimmable.macs(net, 1.0))
    cost = lambda X: np.asarray(slimmable.macs(net, X), float) / full  # noqa: E731
    importance = np.linspace(0.2, 3.0, 30)
    true_loss = lambda X: np.exp(-2.5 * X) @ importance / importance.sum()  # noqa: E731
    rng = np.random.default_rng(0)
    print(f"Joslim proposal latency, slim_resnet56 (D = 30), median of {repeats} "
          "(reference: ~215 s at 1,000 points, off target by up to 0.17)")
    print(f"{'acquisition':>11}{'history':>8}{'fit+propose s':>15}{'propose s':>11}"
          f"{'max |cost - target|':>21}")
    rows = []
    for acquisition in ("ei", "ucb"):
        for size in history_sizes:
            sampler = samplers.JoslimSampler(30, lower, cost, acquisition=acquisition, seed=0)
            state = sampler.state_dict()
            state["configs"] = np.vstack([np.outer(rng.uniform(lower, 1, 20), np.ones(30)),
                                          np.ones((1, 30)), rng.uniform(lower, 1, (size - 21, 30))])
            state["losses"] = state["latest_losses"] = np.full(size, np.nan)
            sampler.load_state_dict(state)
            sampler.observe(true_loss(sampler.history_configs()))
            sampler.propose(1)  # the cold fit, untimed
            with_fit, without_fit, misses = [], [], []
            for _ in range(repeats):
                history = sampler.history_configs()
                sampler.observe(true_loss(history) + 0.01 * rng.standard_normal(len(history)))
                start = time.perf_counter()
                sampler.propose(1)
                middle = time.perf_counter()
                misses.append(np.abs(sampler.last_costs - sampler.last_targets).max())
                sampler.propose(1)
                with_fit.append(middle - start)
                without_fit.append(time.perf_counter() - middle)
                misses.append(np.abs(sampler.last_costs - sampler.last_targets).max())
            rows.append((acquisition, size, statistics.median(with_fit),
                         statistics.median(without_fit), max(misses)))
            print(f"{acquisition:>11}{size:>8}{rows[-1][2]:>15.3f}{rows[-1][3]:>11.3f}"
                  f"{rows[-1][4]:>21.4f}", flush=True)
    return rows


def _train_args(**overrides):
    """The trainer's defaults as parsed by train.py, with ``overrides``."""
    args = train.parse_args([])
    vars(args).update(overrides)
    return args


def sandwich_step(net, inputs, targets, autocast=contextlib.nullcontext):
    """A function ``step(configs)`` that takes one whole sandwich step of ``net`` on ``inputs``
    and ``targets`` as train.py does: the full network, then the students ``configs`` (width
    lists or multipliers, the smallest last), one optimizer step."""
    args = _train_args(method="slim")
    optimizer = train.make_optimizer(net, args, 0.01)

    def step(configs):
        optimizer.zero_grad(set_to_none=True)
        train.train_step(net, net, inputs, targets, configs, args, autocast)
        optimizer.step()
    return step


def timed_sandwich_step(name="slim_resnet20", batch_size=128):
    """A function that takes one ``sandwich_step`` of ``name`` (full + 2 sampled + smallest
    network) on random CIFAR-shaped data and returns its wall time in seconds; the two sampled
    configurations are new each step, as in training."""
    torch.manual_seed(0)
    net = models.get_model(name, 10)
    random_configs = samplers.RandomSampler(len(net.width_groups), 0.42, seed=0)
    step = sandwich_step(net, torch.randn(batch_size, 3, 32, 32),
                         torch.randint(0, 10, (batch_size,)))

    def timed():
        configs = [row.tolist() for row in random_configs.propose(2)] + [0.42]
        return device_seconds(lambda: step(configs), warmup=0)
    return timed


def timed_steps(step, steps, warmup=1, max_seconds=None):
    """Seconds of ``steps`` calls of ``step`` after ``warmup`` untimed ones; fewer once they add
    up to ``max_seconds`` (at least one)."""
    for _ in range(warmup):
        step()
    times = []
    while len(times) < steps and not (max_seconds and sum(times) >= max_seconds):
        times.append(step())
    return times


def bench_training(networks=("slim_resnet20", "slim_resnet56"), batch_size=128, steps=6):
    """Images/s through the whole sandwich step (full + 2 sampled + smallest network, one
    optimizer step) on random CIFAR-shaped data, median step time of ``steps``."""
    print(f"training throughput, sandwich step with 2 sampled configurations, batch {batch_size}")
    print(f"{'network':<16}{'s/step':>8}{'images/s':>10}")
    rates = {}
    for name in networks:
        seconds = statistics.median(timed_steps(timed_sandwich_step(name, batch_size), steps))
        rates[name] = batch_size / seconds
        print(f"{name:<16}{seconds:>8.3f}{batch_size / seconds:>10.0f}", flush=True)
    return rates


# OpenMP's knobs, read once when torch loads libgomp: every measurement starts from none of them
CONTENTION_KNOBS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def contention_settings(cores, quick=False, spincounts=(1000, 30000)):
    """The settings ``bench_contention`` measures: (label, torch threads, environment added to
    the process, inter-op threads or 0 for torch's default). At one thread OpenMP never waits at
    a barrier, so only the thread count is varied there. ``spincounts``: GOMP_SPINCOUNT values
    (libgomp's busy-wait iterations before a waiting thread sleeps; PASSIVE is 0)."""
    settings = [("1 thread", 1, {}, 0)]
    for threads in sorted({min(2, cores), cores} - {1}):
        variants = [("OpenMP defaults", {}, 0),
                    ("OMP_WAIT_POLICY=PASSIVE", {"OMP_WAIT_POLICY": "PASSIVE"}, 0)]
        if not quick:
            variants += [("OMP_WAIT_POLICY=ACTIVE", {"OMP_WAIT_POLICY": "ACTIVE"}, 0)]
            variants += [(f"GOMP_SPINCOUNT={count}", {"GOMP_SPINCOUNT": str(count)}, 0)
                         for count in spincounts]
            variants += [("PASSIVE, inter-op threads 1", {"OMP_WAIT_POLICY": "PASSIVE"}, 1)]
        settings += [(f"{threads} threads, {label}", threads, env, interop)
                     for label, env, interop in variants]
    return settings


_CONTENTION_CHILD = """import json, os
seen = {{key: os.environ.get(key) for key in {knobs!r}}}
import torch  # OpenMP reads its environment here, before any project module is imported
torch.set_num_threads({threads})
if {interop}:
    torch.set_num_interop_threads({interop})
import bench
result = bench.quiet_and_busy_seconds({steps}, {max_seconds}, {batch_size},
                                     tuner_period={tuner_period})
print(json.dumps(dict(result, environment=seen, threads=torch.get_num_threads(),
                      interop_threads=torch.get_num_interop_threads(),
                      cpus=bench.runs.usable_cpus())))
"""


@contextlib.contextmanager
def busy_process(warmup_seconds=1.0):
    """One CPU-bound process (a Python busy loop: one core's worth of work) for the ``with``
    block. Spawned from here, it inherits this process's CPU affinity: it competes for the same
    cores as the measurement, which is checked."""
    process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        if hasattr(os, "sched_getaffinity") and (os.sched_getaffinity(process.pid)
                                                 != os.sched_getaffinity(0)):
            raise RuntimeError("the busy process does not share this process's CPUs")
        time.sleep(warmup_seconds)  # let it reach full speed and the scheduler settle
        yield process
    finally:
        process.kill()
        process.wait()


def quiet_and_busy_seconds(steps, max_seconds, batch_size=128, busy_warmup_seconds=1.0,
                           tuner_period=0, tuner_probe=3):
    """Step times (``timed_steps`` of ``timed_sandwich_step``) in this process: quiet, then at once
    beside ``busy_process``; one process for both halves the seconds spent importing torch.
    ``tuner_period``: a ``runs.ThreadTuner`` with that period picks the thread count after
    every step, as train.py does with ``--threads 0`` (it carries over into the busy half)."""
    step = timed_sandwich_step(batch_size=batch_size)
    if tuner_period:
        tuner, untuned = runs.ThreadTuner(torch.get_num_threads(), tuner_period, tuner_probe), step

        def step():  # the widths vary the work a little; the tuner's medians absorb it
            seconds = untuned()
            tuner.record(seconds, 1.0)
            return seconds
    quiet = timed_steps(step, steps, 1, max_seconds)
    with busy_process(busy_warmup_seconds):
        busy = timed_steps(step, steps, 0, max_seconds)
    return {"quiet_seconds": quiet, "busy_seconds": busy}


def contention_rates(threads, environment, interop_threads, steps, max_seconds, batch_size=128,
                     tuner_period=0):
    """Images/s (median step) of the sandwich step quiet and beside one busy process, in a fresh
    Python process with ``threads`` torch threads and ``environment`` added to the OpenMP-free
    environment of this one (OpenMP reads it once, at load); also what that process saw."""
    env = {key: value for key, value in os.environ.items() if key not in CONTENTION_KNOBS}
    env.update(environment)
    code = _CONTENTION_CHILD.format(knobs=CONTENTION_KNOBS, threads=threads,
                                    interop=interop_threads, steps=steps, max_seconds=max_seconds,
                                    batch_size=batch_size, tuner_period=tuner_period)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.abspath(__file__)))
    if result.returncode:
        raise RuntimeError(f"contention measurement failed:\n{result.stderr}")
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    for phase in ("quiet", "busy"):
        seconds = seen[f"{phase}_seconds"]
        seen[f"{phase}_images_per_second"] = batch_size / statistics.median(seconds)
        seen[f"{phase}_mean_images_per_second"] = batch_size * len(seconds) / sum(seconds)
    return seen


def bench_thread_tuner(steps=40, period=20, batch_size=128,
                       out_path=os.path.join("results", "contention_tuner.json")):
    """train.py's default (``--threads 0``: all usable CPUs, OpenMP's spinning threads and
    ``runs.ThreadTuner``) against the same thread counts held fixed: ``steps`` steps quiet,
    then ``steps`` beside one busy process, in one fresh process per variant. The figure is the
    mean rate over all the steps of a half (total images / total seconds), probes and the
    tuner's reaction time included; its period is ``period`` steps here (train.py: 100), so
    that it can act within the half. Prints a table, writes ``out_path``."""
    cores = runs.usable_cpus()
    variants = [(f"{cores} threads, fixed", cores, 0), ("1 thread, fixed", 1, 0),
                (f"{cores} threads, ThreadTuner (period {period})", cores, period)]
    print(f"thread tuner: slim_resnet20 sandwich step, batch {batch_size}, {steps} steps quiet "
          f"then {steps} beside one busy process, mean images/s; {cores} usable CPUs, load "
          f"average {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for label, threads, tuner_period in variants:
        run = contention_rates(threads, {}, 0, steps, None, batch_size, tuner_period)
        rows.append({"setting": label, "threads": threads, "tuner_period": tuner_period,
                     "quiet": run["quiet_mean_images_per_second"],
                     "busy": run["busy_mean_images_per_second"], "run": run})
        print(f"  {label}: {rows[-1]['quiet']:.1f} quiet, {rows[-1]['busy']:.1f} busy", flush=True)
    contention_table(rows)
    runs.write_json(out_path, {"machine": machine(), "steps": steps, "period": period,
                               "rows": rows})
    print(f"written: {out_path}")
    return rows


def bench_short_run(out_path=os.path.join("results", "contention_short_run.json")):
    """A 20-step default run of train.py (``--epochs 1``, 2,560 training images, ``--threads 0``:
    the ThreadTuner, which decides first after 8 steps) timed quiet and then beside one busy
    process, each in a fresh run folder; the rule: beside it the run keeps >= 40% of its quiet
    throughput. Prints both wall times and the share, writes ``out_path``."""
    argv = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py"),
            "--epochs", "1", "--synthetic_train", "3560", "--curve_points", "0", "--restart"]
    seconds = {}
    with tempfile.TemporaryDirectory() as folder:
        for phase in ("quiet", "busy"):
            with busy_process() if phase == "busy" else contextlib.nullcontext():
                start = time.perf_counter()
                subprocess.run(argv + ["--name", phase], cwd=folder, check=True,
                               capture_output=True)
                seconds[phase] = time.perf_counter() - start
    share = seconds["quiet"] / seconds["busy"]
    print(f"20-step train.py run: {seconds['quiet']:.1f} s quiet, {seconds['busy']:.1f} s beside "
          f"one busy process: {100 * share:.0f}% of the quiet throughput (rule: >= 40%)")
    runs.write_json(out_path, {"machine": machine(), "seconds": seconds, "share": share})
    return share


def contention_table(rows, busy_share=0.40, quiet_share=0.95):
    """Add to each row (``setting``, ``quiet`` and ``busy`` images/s) its ``busy_share`` (busy /
    quiet), ``quiet_share_of_best`` and whether it ``meets_rule``: the contention rule for the
    defaults, keep >= ``busy_share`` of the quiet rate beside one busy process and stay within
    ``1 - quiet_share`` of the best quiet rate. Prints the table."""
    best_quiet = max(row["quiet"] for row in rows)
    print(f"{'setting':<40}{'quiet img/s':>12}{'busy img/s':>11}{'busy/quiet':>11}"
          f"{'quiet/best':>11}  meets rule")
    for row in rows:
        row["busy_share"] = row["busy"] / row["quiet"]
        row["quiet_share_of_best"] = row["quiet"] / best_quiet
        row["meets_rule"] = (row["busy_share"] >= busy_share
                             and row["quiet_share_of_best"] >= quiet_share)
        print(f"{row['setting']:<40}{row['quiet']:>12.1f}{row['busy']:>11.1f}"
              f"{100 * row['busy_share']:>10.0f}%{100 * row['quiet_share_of_best']:>10.0f}%  "
              f"{'yes' if row['meets_rule'] else 'no'}")
    robust = [row for row in rows if row["busy_share"] >= busy_share]
    if robust:
        fastest = max(robust, key=lambda row: row["quiet"])
        print(f"fastest quiet of the settings keeping >= {100 * busy_share:.0f}% beside the busy "
              f"process: {fastest['setting']} ({100 * fastest['quiet_share_of_best']:.0f}% of the "
              "best quiet)")
    return rows


def bench_contention(cores=None, steps=5, quick=False, spincounts=(1000, 30000), max_seconds=8.0,
                     settings=None, batch_size=128, repeats=1,
                     out_path=os.path.join("results", "contention.json")):
    """Training throughput of train.py's step (slim_resnet20, batch 128, the sandwich of full +
    2 sampled + smallest, synthetic 32x32 data) under each of ``contention_settings``, quiet and
    then beside one busy process (one core's worth of other work on the same CPUs), each setting
    in a fresh process (OpenMP reads its settings at load). Images/s of the median of ``steps``
    timed steps, after one warm-up step for the quiet half (fewer steps once they take
    ``max_seconds``: a stalled setting costs seconds a step). ``cores``: torch threads of the
    widest setting (default: the CPUs this process may use). ``settings``: instead of
    ``contention_settings(cores, quick, spincounts)``. Prints the table (``contention_table``),
    writes ``out_path`` and returns its rows. ``repeats``: rounds over all the settings, in
    turn, so that a slow minute of the machine falls on every setting alike; each figure is the
    median over the rounds (run to run, one setting's rate varied by 10-25% here)."""
    cores = cores or runs.usable_cpus()
    settings = settings or contention_settings(cores, quick, spincounts)
    print(f"contention: slim_resnet20 sandwich step, batch {batch_size}, median of up to {steps} "
          f"steps, quiet and beside one busy process; {runs.usable_cpus()} usable CPUs, load "
          f"average {os.getloadavg()[0]:.2f}", flush=True)
    rounds = {label: [] for label, *_ in settings}
    for repeat in range(repeats):
        for label, threads, environment, interop_threads in settings:
            run = contention_rates(threads, environment, interop_threads, steps, max_seconds,
                                   batch_size)
            rounds[label].append(run)
            print(f"  [{repeat + 1}/{repeats}] {label}: {run['quiet_images_per_second']:.1f} "
                  f"quiet, {run['busy_images_per_second']:.1f} busy images/s", flush=True)
    rows = [{"setting": label, "threads": threads, "environment": environment,
             "interop_threads": interop_threads,
             "quiet": statistics.median(r["quiet_images_per_second"] for r in rounds[label]),
             "busy": statistics.median(r["busy_images_per_second"] for r in rounds[label]),
             "runs": rounds[label]}
            for label, threads, environment, interop_threads in settings]
    contention_table(rows)
    content = {"machine": machine(), "usable_cpus": runs.usable_cpus(), "cores": cores,
               "steps": steps, "repeats": repeats, "batch_size": batch_size,
               "load_average": os.getloadavg(),
               "rows": rows}
    runs.write_json(out_path, content)
    print(f"written: {out_path}")
    return rows


def bench_window_share(network="slim_resnet56", history=1000, tau=235, batch_size=128,
                       rescore_limits=(120, 250, 0)):
    """Share of one Joslim window spent outside training (re-scoring the history on one held-out
    batch + two GP proposals) with ``history`` configurations, for the CIFAR recipe's window
    (``tau`` steps of ``batch_size``). ``rescore_limit`` 0 re-scores everything (the reference)."""
    torch.manual_seed(0)
    net = models.get_model(network, 100)
    num_dims = len(net.width_groups)
    inputs, targets = torch.randn(batch_size, 3, 32, 32), torch.randint(0, 100, (batch_size,))
    configs = [row.tolist() for row in samplers.RandomSampler(num_dims, 0.42, 1).propose(2)]
    step = sandwich_step(net, inputs, targets)
    window_training = tau * device_seconds(lambda: step(configs + [0.42]), calls=3)
    print(f"Joslim window of {network}: {tau} steps of batch {batch_size} take "
          f"{window_training:.0f} s here; history of {history} configurations")
    print(f"{'rescore_limit':>14}{'re-scored':>10}{'rescore s':>10}{'sampler s':>10}{'share':>8}")
    rows = []
    for limit in rescore_limits:
        full = float(slimmable.macs(net, 1.0))
        sampler = samplers.JoslimSampler(
            num_dims, 0.42, lambda X: np.asarray(slimmable.macs(net, X), float) / full,
            seed=0, max_scored=limit or None)
        generator = np.random.default_rng(0)
        state = sampler.state_dict()
        state["configs"] = np.vstack([np.ones((1, num_dims)),
                                      generator.uniform(0.42, 1, (history - 1, num_dims))])
        state["losses"] = state["latest_losses"] = generator.uniform(1, 3, history)
        sampler.load_state_dict(state)
        sampler.propose(1)  # a first (cold) fit, as after the prior phase
        start = time.perf_counter()
        scored = sampler.history_configs()
        losses = train.rescore(net, scored, inputs, targets, contextlib.nullcontext)
        rescore_seconds = time.perf_counter() - start
        start = time.perf_counter()
        sampler.observe(losses)
        sampler.propose(2)
        sampler_seconds = time.perf_counter() - start
        share = (rescore_seconds + sampler_seconds) / (
            rescore_seconds + sampler_seconds + window_training)
        rows.append((limit, len(scored), rescore_seconds, sampler_seconds, share))
        print(f"{limit or 'all':>14}{len(scored):>10}{rescore_seconds:>10.1f}"
              f"{sampler_seconds:>10.2f}{100 * share:>7.1f}%", flush=True)
    return rows


QUALITY_METHODS = {  # label: train.py flags of the slimmable runs (the same steps for all)
    "slim": ["--method", "slim"],
    "joslim-ei": ["--method", "joslim", "--acquisition", "ei"],
    "joslim-ucb": ["--method", "joslim", "--acquisition", "ucb"],
    "autoslim": ["--method", "random"],
}
QUALITY_DATA = {  # the study's data and schedule per data set
    "synthetic": ["--epochs", "4"],
    "FashionMNIST": ["--dataset", "FashionMNIST", "--train_size", "8000", "--val_size", "1000",
                     "--epochs", "3", "--workers", "0"],
}
QUALITY_QUICK = {  # --quick: minutes instead of an hour or two (the last flag given wins)
    "synthetic": ["--epochs", "2", "--synthetic_train", "3000", "--synthetic_test", "1000",
                  "--val_size", "500", "--tau", "10", "--prior_points", "6"],
    "FashionMNIST": ["--epochs", "2", "--train_size", "2560", "--val_size", "500", "--tau", "10",
                     "--prior_points", "6"],
}
QUALITY_TARGETS = (0.25, 0.5, 0.75)  # MACs ratios: AutoSlim's search targets, the matched MACs
QUALITY_LOWER = 0.25                 # the study's area spans MACs ratios [0.25, 1] for every method


def bench_quality(seeds=(0, 1, 2), dataset="FashionMNIST", quick=False, threads=None,
                  datapath=None):
    """Joslim (EI, UCB) vs Slim vs AutoSlim vs uniform widths trained alone, slim_resnet20,
    the same training steps for every slimmable run (``QUALITY_DATA``), and one protocol for all
    (evaluate.py: BN calibrated per configuration, front selected on held-out, reported on test).

    Per seed: the four slimmable runs; AutoSlim's random-width supernet searched greedily at
    ``QUALITY_TARGETS`` (a grid of 8 steps per group, 500 held-out images; scored in the
    supernet: row "autoslim"); the searched configurations and
    the full network retrained jointly from the labels (``--method fixed``, "autoslim-retrained");
    and one network per target and the full one, each of uniform width at or below the target's
    MACs, each trained alone for the same steps ("uniform-alone", AutoSlim's baseline). Finished
    runs and evaluations are skipped: rerun to resume, or run seeds in parallel processes
    (``--seeds 0 --threads 1`` ...) and then all of them, which only reads their results.
    Prints the table (mean, min..max over seeds, per-seed Joslim minus Slim), writes
    ``results/PREFIX_quality.json`` and the mean fronts ``results/PREFIX_quality.svg``."""
    threads = threads or torch.get_num_threads()
    prefix = "quality" if dataset == "synthetic" else dataset.lower()
    prefix += "_quick" if quick else ""
    flags = QUALITY_DATA[dataset] + ["--network", "slim_resnet20", "--print_freq", "100",
                                     "--threads", str(threads)]
    flags += QUALITY_QUICK[dataset] if quick else []
    flags += ["--datapath", datapath] if datapath else []
    names = {label: [] for label in [*QUALITY_METHODS, "autoslim-retrained", "uniform-alone"]}
    for seed in seeds:
        start = time.time()
        for label, method_flags in QUALITY_METHODS.items():
            name = f"{prefix}_{label}_s{seed}"
            names[label].append([name])
            _script(train.main, ["--name", name, "--seed", str(seed)] + method_flags + flags)
        supernet = names["autoslim"][-1][0]
        search.run_search(supernet, target_ratios=list(QUALITY_TARGETS), threads=threads,
                          search_images=500, steps=8)
        searched = sorted(glob.glob(os.path.join("runs", supernet, "search", "macs_*.json")))
        net = search.load_supernet(supernet, torch.device("cpu"))[0]
        full_config = os.path.join("runs", supernet, "search", "full.json")
        slimmable.save_config(full_config, net, 1.0)
        name = f"{prefix}_autoslim-retrained_s{seed}"
        names["autoslim-retrained"].append([name])
        _script(train.main, ["--name", name, "--seed", str(seed), "--method", "fixed",
                             "--channel_config", *searched, full_config] + flags)
        names["uniform-alone"].append([])
        full_macs = slimmable.macs(net, 1.0)
        for ratio in (*QUALITY_TARGETS, 1.0):
            multiplier = uniform_below(net, ratio * full_macs, 0.42)
            config = os.path.join("runs", supernet, "search", f"uniform_{ratio:g}.json")
            slimmable.save_config(config, net, multiplier, target_ratio=ratio)
            name = f"{prefix}_uniform-{ratio:g}_s{seed}"
            names["uniform-alone"][-1].append(name)
            _script(train.main, ["--name", name, "--seed", str(seed), "--method", "fixed",
                                 "--channel_config", config] + flags)
        everything = [n for seeds_runs in names.values() for n in seeds_runs[-1]]
        evaluate.compare(everything, os.path.join("results", f"{prefix}_s{seed}.svg"))
        print(f"[quality] seed {seed}: trained, searched and evaluated in "
              f"{time.time() - start:.0f} s", flush=True)
    return quality_table(names, seeds, dataset, prefix)


def _script(main_function, argv):
    """Run a script's main(argv); SystemExit naming it unless it exits 0."""
    status = main_function(argv)
    if status != 0:
        raise SystemExit(f"{main_function.__module__}.py {' '.join(argv[:4])} ... exited {status}")


def quality_table(names, seeds, dataset, prefix):
    """The study's table from the result files: per method, the area over MACs ratios
    [QUALITY_LOWER, 1] and the top-1 at matched MACs, mean and min..max over seeds, and the
    per-seed paired differences Joslim minus Slim."""
    levels = (*QUALITY_TARGETS, 1.0)
    per_seed = {}
    for label, seeds_runs in names.items():
        per_seed[label] = []
        for run_names in seeds_runs:
            points = []
            for name in run_names:
                with open(os.path.join("results", f"{name}_eval_pareto.json")) as handle:
                    points += json.load(handle)["points"]
            area = samplers.area_under_front([p["macs_ratio"] for p in points],
                                    [100 - p["test"]["top1"] for p in points], QUALITY_LOWER, 1.0)
            per_seed[label].append({"area": area, **{f"top1@{level:g}": evaluate.top1_at(
                points, level) for level in levels}, "points": [
                    (p["macs_ratio"], p["test"]["top1"]) for p in points]})
    columns = ["area"] + [f"top1@{level:g}" for level in levels]
    print(f"\n{dataset}, slim_resnet20, seeds {list(seeds)}: mean (min..max) over seeds; area = "
          f"mean test top-1 error (%) over MACs ratios [{QUALITY_LOWER}, 1]; top1@r = best test "
          f"top-1 at MACs ratio <= r")
    print(f"{'method':<20}" + "".join(f"{c:>22}" for c in columns))
    table = {}
    for label, rows in per_seed.items():
        cells = {}
        line = f"{label:<20}"
        for column in columns:
            values = [row[column] for row in rows if row[column] is not None]
            cells[column] = values
            line += (f"{np.mean(values):>9.2f} ({min(values):.2f}..{max(values):.2f})"
                     if values else f"{'-':>22}")
        table[label] = cells
        print(line)
    print("\npaired differences per seed (the same seed's data order and initialization)")
    differences = {}
    for method in ("joslim-ei", "joslim-ucb"):
        for column in columns:
            pairs = [(a[column], b[column]) for a, b in zip(per_seed[method], per_seed["slim"])]
            diffs = [a - b for a, b in pairs if a is not None and b is not None]
            differences[f"{method} - slim, {column}"] = diffs
            print(f"{method} - slim, {column:<9}" + "".join(f"{d:>+8.2f}" for d in diffs)
                  + f"   mean {np.mean(diffs):+.2f}")
    curves = [{"label": f"{label} (area {np.mean(table[label]['area']):.2f})",
               "points": [(level, np.mean(table[label][f"top1@{level:g}"])) for level in levels
                          if table[label][f"top1@{level:g}"]], "end": 1.0} for label in per_seed]
    svg = evaluate.front_svg(curves, f"{dataset}: mean test top-1 at matched MACs, "
                                     f"{len(seeds)} seeds", x_label="MACs ratio")
    runs.write_atomic(os.path.join("results", f"{prefix}_quality.svg"), svg)
    content = {"dataset": dataset, "seeds": list(seeds), "names": names, "per_seed": per_seed,
               "differences": differences}
    runs.write_json(os.path.join("results", f"{prefix}_quality.json"), content)
    print(f"wrote results/{prefix}_quality.json and results/{prefix}_quality.svg")
    return table, differences


RECIPES = {  # label: the students' flags (train.py --kd_weight, --distill_after)
    "reference": ["--kd_weight", "1", "--distill_after", "0"],   # (a) distil from step 0
    "distill-after-1": ["--kd_weight", "1", "--distill_after", "1"],  # (b) the old default
    "mix-0.5": ["--kd_weight", "0.5", "--distill_after", "0"],   # (c) labels + teacher
    "labels": ["--kd_weight", "0", "--distill_after", "0"],      # (d) labels only
}
RECIPE_DATA = ["--dataset", "FashionMNIST", "--train_size", "10000", "--val_size", "5000",
               "--epochs", "4", "--batch_size", "128", "--workers", "0", "--print_freq", "78"]


def gradient_probe(name, batch, lower=0.42, sampled=(0.6, 0.8)):
    """At the weights of ``runs/NAME/checkpoint.pt``: the gradients one sandwich step would put
    on the shared weights, taken apart. On one training ``batch`` (inputs, targets): the full
    network's label gradient g_full; the summed gradient of three students (``lower`` and the
    uniform ``sampled`` widths) under distillation (g_kd) and under the labels (g_label); their
    norms and cosines with g_full; the teacher's mean top probability and batch top-1; the lr
    the run had at that step. Returns a dict of floats."""
    net, checkpoint = search.load_supernet(name, torch.device("cpu"))
    net.train()
    args = _train_args(**checkpoint["args"])
    inputs, targets = batch
    parameters = list(net.parameters())

    def gradient(loss):
        grads = torch.autograd.grad(loss, parameters, allow_unused=True)
        return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                          for g, p in zip(grads, parameters)])

    slimmable.set_widths(net, 1.0)
    logits = net(inputs)
    g_full = gradient(torch.nn.functional.cross_entropy(logits, targets,
                                                        label_smoothing=args.label_smoothing))
    teacher = torch.softmax(logits.detach(), dim=1)
    g_kd = g_label = 0
    for width in (lower, *sampled):
        slimmable.set_widths(net, width)
        student = net(inputs)
        g_kd = g_kd + gradient(train.distillation_loss(student, teacher))
        slimmable.set_widths(net, width)
        student = net(inputs)
        g_label = g_label + gradient(torch.nn.functional.cross_entropy(
            student, targets, label_smoothing=args.label_smoothing))
    cosine = torch.nn.functional.cosine_similarity
    lr = checkpoint["optimizer"]["param_groups"][0]["lr"]
    return {"step": checkpoint["step"], "lr": lr,
            "teacher_confidence": float(teacher.max(1).values.mean()),
            "teacher_top1": float(100 * (teacher.argmax(1) == targets).float().mean()),
            "full_grad_norm": float(g_full.norm()), "kd_grad_norm": float(g_kd.norm()),
            "label_grad_norm": float(g_label.norm()),
            "cos_kd_full": float(cosine(g_kd, g_full, dim=0)),
            "cos_label_full": float(cosine(g_label, g_full, dim=0)),
            "cos_kd_label": float(cosine(g_kd, g_label, dim=0))}


def bench_recipe(seeds=(0, 1), threads=None, probe_every=26, out_dir="results", datapath=None):
    """The students' recipe on Fashion-MNIST (README, "The sandwich recipe"): Joslim (EI)
    training of slim_resnet20 with each of ``RECIPES`` and, as the yardstick, the full and the
    smallest network each trained alone (``--method fixed``), the same steps and seeds for all
    (``RECIPE_DATA``: 10,000 training images, 4 epochs of 78 steps). Seed 0 of the old default
    (distillation after one epoch) is trained in pieces of ``probe_every`` steps (resume is
    exact with --workers 0) and ``gradient_probe`` is taken after each. Finished runs are
    skipped. Prints one table; writes ``recipe_curves.svg`` and ``recipe.json`` in ``out_dir``."""
    threads = threads or torch.get_num_threads()
    common = RECIPE_DATA + ["--network", "slim_resnet20", "--threads", str(threads)]
    common += ["--datapath", datapath] if datapath else []
    os.makedirs(out_dir, exist_ok=True)
    probes, recipe_runs = [], {}
    for seed in seeds:
        net = models.get_model("slim_resnet20", 10, input_size=28, in_channels=1)
        alone = {}
        for label, widths in (("alone-full", 1.0), ("alone-smallest", 0.42)):
            path = os.path.join(out_dir, f"recipe_{label}.json")
            slimmable.save_config(path, net, widths)
            alone[label] = ["--method", "fixed", "--channel_config", path]
        for label, flags in {**RECIPES, **alone}.items():
            name = f"recipe_{label}_s{seed}"
            recipe_runs.setdefault(label, []).append(name)
            argv = ["--name", name, "--seed", str(seed)] + flags + common
            if label == "distill-after-1" and seed == 0:
                probes = _train_with_probes(argv, name, probe_every)
            else:
                _script(train.main, argv)
    everything = [name for names in recipe_runs.values() for name in names]
    rows = {row["name"]: row for row in evaluate.compare(everything, os.path.join(
        out_dir, "recipe_fronts.svg"))}
    table = {}
    print(f"\nFashion-MNIST, slim_resnet20, seeds {list(seeds)}: test top-1 (%) of the full and "
          f"smallest network (BN calibrated), area; mean over seeds")
    print(f"{'recipe':<18}{'full':>8}{'smallest':>10}{'area':>8}   per seed (full/smallest/area)")
    for label, names in recipe_runs.items():
        results = []
        for name in names:
            with open(os.path.join("results", f"{name}_eval_pareto.json")) as handle:
                points = json.load(handle)["points"]
            full = max(points, key=lambda p: p["macs"])["test"]["top1"]
            small = min(points, key=lambda p: p["macs"])["test"]["top1"]
            results.append((full, small, rows[name]["area"]))
        table[label] = results
        mean = np.mean(results, axis=0)
        detail = "  ".join(f"{f:.2f}/{s:.2f}/{a:.2f}" for f, s, a in results)
        print(f"{label:<18}{mean[0]:>8.2f}{mean[1]:>10.2f}{mean[2]:>8.2f}   {detail}")
    recipe_curves_svg(recipe_runs, seeds[0], out_dir)
    print_probes(probes, seeds[0])
    content = {"runs": recipe_runs, "table": table, "probes": probes}
    runs.write_json(os.path.join(out_dir, "recipe.json"), content)
    return table, probes


def recipe_curves_svg(recipe_runs, seed, out_dir):
    """``recipe_curves.svg``: held-out top-1 against the step, one line a run (seed ``seed``)."""
    panels = {"full": [], "smallest": []}
    for label, names in recipe_runs.items():
        with open(os.path.join("runs", names[0], "curves.json")) as handle:
            points = json.load(handle)["points"]
        for end, curves in panels.items():
            if not label.startswith("alone") or label.endswith(end):
                curves.append({"label": label, "line": True,
                               "points": [(p["step"], p[f"{end}_top1"]) for p in points]})
    svg = evaluate.panels_svg([(f"{end} network: held-out top-1 (%)", curves)
                               for end, curves in panels.items()],
                              f"Fashion-MNIST, the students' recipes, seed {seed}")
    runs.write_atomic(os.path.join(out_dir, "recipe_curves.svg"), svg)


def print_probes(probes, seed):
    """The table of ``gradient_probe`` results (nothing when there are none)."""
    if probes:
        print("\ngradients at the shared weights, old default (distillation after epoch 1), "
              f"seed {seed}: three students (0.42, 0.6, 0.8) vs the full network")
        print(f"{'step':>5}{'lr':>8}{'teacher p':>10}{'teacher top1':>13}{'|g_full|':>9}"
              f"{'|g_kd|':>8}{'|g_label|':>10}{'cos(kd,full)':>13}{'cos(label,full)':>16}")
        for p in probes:
            print(f"{p['step']:>5}{p['lr']:>8.4f}{p['teacher_confidence']:>10.3f}"
                  f"{p['teacher_top1']:>13.1f}{p['full_grad_norm']:>9.3f}{p['kd_grad_norm']:>8.3f}"
                  f"{p['label_grad_norm']:>10.3f}{p['cos_kd_full']:>13.3f}"
                  f"{p['cos_label_full']:>16.3f}")


def _train_with_probes(argv, name, every):
    """Train ``argv`` in pieces of ``every`` steps, probing the gradients after each piece on
    the same training batch; the probes are kept in runs/NAME/probes.json (resumable)."""
    path = os.path.join("runs", name, "probes.json")
    probes = []
    if os.path.exists(path):
        with open(path) as handle:
            probes = json.load(handle)
    args = train.parse_args(argv)
    batch = None
    while True:
        _script(train.main, argv + ["--pause_after", str(every)])
        if batch is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(12345)
                inputs, targets = next(iter(data.get_loaders(args, args.batch_size).train))
            batch = (inputs, targets)
        checkpoint = runs.load_checkpoint(os.path.join("runs", name, "checkpoint.pt"))
        if not probes or probes[-1]["step"] < checkpoint["step"]:
            probes.append(gradient_probe(name, batch))
            runs.write_json(path, probes)
        if checkpoint.get("finished"):
            return probes


def bench_search(name=None, target_ratios=(0.85,), threads=1, **settings):
    """Search one supernet three ways: BN from batch statistics with each candidate resumed at
    its first changed block (the default), the same run from the image (``--full_forward``), and
    ``--bn calibrate`` (4 batches of 128). Prints steps, candidate evaluations, seconds and
    evaluations/s. ``name``: an existing runs/NAME supernet (searched in a copy); None trains a
    tiny one (1 epoch)."""
    settings = {"search_images": 500, **settings}
    previous, rows = os.getcwd(), []
    with tempfile.TemporaryDirectory() as folder:
        if name is not None:
            os.makedirs(os.path.join(folder, "runs", name))
            shutil.copy(os.path.join("runs", name, "checkpoint.pt"),
                        os.path.join(folder, "runs", name))
        os.chdir(folder)
        try:
            if name is None:  # runs/bench: slim_resnet20, 1 epoch of --method random
                name = "bench"
                _script(train.main, ["--name", name, "--method", "random", "--epochs", "1",
                                     "--batch_size", "64", "--synthetic_train", "1500",
                                     "--val_size", "500", "--synthetic_test", "100",
                                     "--workers", "0", "--threads", str(threads)])
            for label, bn, full_forward in (("batch BN, resumed", "batch", False),
                                            ("batch BN, from image", "batch", True),
                                            ("calibrated, resumed", "calibrate", False)):
                result = search.run_search(name, target_ratios=list(target_ratios), restart=True,
                                           bn=bn, full_forward=full_forward, threads=threads,
                                           **settings)
                rows.append((label, result))
        finally:
            os.chdir(previous)
    print(f"AutoSlim search of {name}: targets {list(target_ratios)} of the full MACs, {settings}, "
          f"{threads} thread(s), load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'scoring':<22}{'steps':>6}{'evaluations':>13}{'seconds':>9}{'eval/s':>8}")
    for label, result in rows:
        print(f"{label:<22}{result['steps']:>6}{result['evaluations']:>13}{result['seconds']:>9.1f}"
              f"{result['evaluations'] / result['seconds']:>8.2f}")
    resumed, full = rows[0][1], rows[1][1]
    same = [r["channels"] for r in resumed["records"]] == [r["channels"] for r in full["records"]]
    print(f"resuming at the changed block: {full['seconds'] / resumed['seconds']:.2f}x faster, "
          f"same configurations: {same}; calibrated BN costs "
          f"{rows[2][1]['seconds'] / resumed['seconds']:.2f}x the batch-statistics search")
    return rows


def uniform_below(net, target_macs, lower, iterations=50):
    """The largest uniform multiplier in [lower, 1] whose MACs do not exceed ``target_macs``."""
    below, above = lower, 1.0
    if slimmable.macs(net, 1.0) <= target_macs:
        return 1.0
    for _ in range(iterations):
        middle = (below + above) / 2
        fits = slimmable.macs(net, middle) <= target_macs
        below, above = (middle, above) if fits else (below, middle)
    return below


def compare_with_uniform(name, bn=None, test_images=2000, threads=1):
    """For each configuration search.py found for runs/NAME, the uniform-width configuration of
    the same supernet with the same or lower MACs; both scored under one BN policy (the search's,
    or ``bn``) on the search's held-out images (the searched ones were *selected* there, so this
    flatters them) and on ``test_images`` test images (seen by neither). Prints a table and
    returns its rows."""
    torch.set_num_threads(threads)
    with open(os.path.join("runs", name, "search", search.STATE_FILE)) as handle:
        state = json.load(handle)
    saved = state["settings"]
    args = search.build_parser().parse_args(["--name", name, "--target_ratios", "1"])
    args.bn = bn or saved["bn"]
    for key in ("search_images", "eval_batch_size", "seed", "calib_batches", "batch_size"):
        if key in saved:
            setattr(args, key, saved[key])
    net, checkpoint = search.load_supernet(name, torch.device("cpu"))
    search.resolve_data_flags(args, set(), checkpoint)
    args.workers = 0
    calibration, held_out, datasets = search.fixed_images(args, torch.device("cpu"), 0)
    test_set = torch.utils.data.Subset(datasets[2], range(min(test_images, len(datasets[2]))))
    test = search.load_tensors(test_set, args.eval_batch_size, 0, torch.Generator().manual_seed(0))
    splits = {"held-out": held_out, "test": test}
    scorers = {split: search.CandidateScorer(net, calibration, images, args.bn)
               for split, images in splits.items()}
    counts = {split: sum(len(y) for _, y in images) for split, images in splits.items()}

    def top1(widths):
        with torch.inference_mode():
            return {split: 100 * scorer.evaluate(None, [(0, widths, None)])[0][0] / counts[split]
                    for split, scorer in scorers.items()}

    lower = float(checkpoint.get("lower_channel", 0.42))
    full = slimmable.macs(net, 1.0)
    rows = []
    for record in state["records"]:
        multiplier = uniform_below(net, record["macs"], lower)
        uniform_macs = slimmable.macs(net, multiplier)
        rows.append({"cost": record["cost"], "target": record["target"],
                     "searched_macs": record["macs"], "searched": top1(record["widths"]),
                     "uniform_multiplier": multiplier,
                     "uniform_macs": uniform_macs, "uniform": top1(multiplier)})
    print(f"{name}: searched vs uniform widths at matched MACs, top-1 % with BN {args.bn} "
          f"({counts['held-out']} held-out images = the search's, {counts['test']} test images)")
    print(f"{'target':>8}{'searched MACs':>15}{'held-out':>9}{'test':>7}{'uniform x':>11}"
          f"{'MACs':>9}{'held-out':>9}{'test':>7}{'gain (test)':>12}")
    for row in rows:
        print(f"{row['target']:>7.2f}M{row['searched_macs'] / 1e6:>8.2f}M "
              f"{100 * row['searched_macs'] / full:4.1f}%"
              f"{row['searched']['held-out']:>9.2f}{row['searched']['test']:>7.2f}"
              f"{row['uniform_multiplier']:>11.3f}{row['uniform_macs'] / 1e6:>8.2f}M"
              f"{row['uniform']['held-out']:>9.2f}{row['uniform']['test']:>7.2f}"
              f"{row['searched']['test'] - row['uniform']['test']:>+12.2f}")
    return rows


# ----------------------------------------------------------------------------- bench.py gpu

GPU_WIDTHS = (1.0, 0.71, 0.42)  # the full, a middle and the smallest width multiplier
# Exported vs slimmable logits, the largest difference over the largest logit: bf16 keeps 8
# significant bits (0.4%), and the two models may pick different kernels that round differently.
BF16_TOLERANCE = 0.05
GPU_OUT = os.path.join("results", "gpu.json")
GPU_DATAPATH = os.path.join("datasets", "fashion-mnist")  # git-ignored, inside the checkout
# A Joslim step (re-scoring, the Gaussian process) beside three other runs on one GPU, over one
# sandwich step alone: an estimate; a run that overruns is stopped before the deadline.
REAL_DATA_SLOWDOWN = 2.5
GPU_RECIPES = {  # label: train.py flags of the real-data runs, trained side by side
    "joslim": ["--method", "joslim", "--kd_weight", "0"],
    "slim": ["--method", "slim", "--kd_weight", "0"],
    "full alone": ["--method", "fixed", "--channel_config", "full.json"],
    "joslim kd 1": ["--method", "joslim", "--kd_weight", "1"],
}


def gpu_settings(tiny, threads, budget_s):
    """The sizes of ``bench.py gpu``'s parts: for one H100 (under 9 minutes in all at a budget of
    480 s; the compile part's share scales with ``budget_s``), or ``tiny`` ones that run the
    same plumbing on a CPU in seconds."""
    if tiny:
        data_flags = ["--synthetic_train", "32", "--synthetic_test", "16", "--val_size", "16",
                      "--synthetic_classes", "4", "--workers", "0", "--batch_size", "8"]
        return {"data": data_flags, "real_data": data_flags, "threads": threads,
                "run": ["--epochs", "1", "--tau", "2", "--prior_points", "2", "--print_freq", "2",
                        "--curve_points", "0", "--threads", str(threads)],
                "search_images": 16, "search_ratio": 0.9, "cifar_batch": 4, "imagenet_batch": 2,
                "imagenet_size": 64, "networks": ("slim_resnet20", "slim_mobilenetv2"),
                "warmup": 0, "calls": 1, "pairs": 1, "latency_calls": 1, "compile_seconds": 0,
                "sandwich_batch": 8, "evaluate": ["--uniform_points", "3", "--calib_batches", "1"]}
    return {"data": ["--synthetic_train", "4000", "--synthetic_test", "1000", "--val_size", "500"],
            "real_data": None, "threads": threads,
            "run": ["--epochs", "1", "--tau", "10", "--print_freq", "10"],
            "search_images": 500, "search_ratio": 0.6, "cifar_batch": 512, "imagenet_batch": 256,
            "imagenet_size": 224, "networks": tuple(models.NETWORKS), "warmup": 2, "calls": 3,
            "pairs": 4, "latency_calls": 50,
            "compile_seconds": 0.15 * budget_s, "sandwich_batch": 128, "evaluate": []}


def gpu_scripts(device, settings):
    """Each method's short train.py run on ``device``, evaluate.py of each, search.py of the
    random-width supernet, --method fixed on the configuration it found, then --export of the
    Joslim run's front and --subnet of the exported files. Returns {step: outcome}."""
    common = settings["data"] + settings["run"] + ["--device", device.type]
    for method in ("joslim", "slim", "random"):
        _script(train.main, ["--name", method, "--method", method] + common)
    found = search.run_search("random", target_ratios=[settings["search_ratio"]], restart=True,
                              steps=4, device=device.type, threads=settings["threads"],
                              search_images=settings["search_images"])
    config = os.path.join(os.path.dirname(runs.checkpoint_path("random")), "search",
                          found["records"][0]["file"])
    _script(train.main, ["--name", "fixed", "--method", "fixed", "--channel_config", config]
            + common)
    process = ["--device", device.type, "--threads", str(settings["threads"])]
    flags = process + ["--calib_batches", "1"] + settings["evaluate"][:2]  # --uniform_points
    outcome = {"searched": {"file": config, "macs": found["records"][0]["macs"]}}
    for name in ("joslim", "slim", "random", "fixed"):
        result = evaluate.evaluate_run(name, argv=flags)
        outcome[f"evaluate {name}"] = {"area": result["area"], "points": len(result["points"]),
                                       "full_test_top1": result["points"][-1]["test"]["top1"]}
    _script(evaluate.main, ["--name", "joslim", "--export", "subnets"] + flags)
    subnets = sorted(glob.glob(os.path.join("subnets", "*.pt")))
    tested = evaluate.evaluate_subnets(subnets, process)
    outcome["subnets"] = [{"file": os.path.basename(path), "top1": row["top1"]}
                          for path, (_, row) in zip(subnets, tested)]
    return outcome


def gpu_subnets_match(device, name="joslim", batch=64):
    """The trained run ``name`` against ``slimmable.export`` of it at the full, middle and
    smallest width, in eval mode on ``device``: the largest |logit difference| over the largest
    |logit|, under train.py's precision (bf16 autocast on CUDA) and float32. AssertionError when
    the first exceeds BF16_TOLERANCE."""
    net, checkpoint = search.load_supernet(name, device)
    net = on_device(net.eval(), device)
    size, channels = (checkpoint["model_options"][key] for key in ("input_size", "in_channels"))
    inputs = on_device(torch.randn(batch, channels, size, size,
                                   generator=torch.Generator().manual_seed(0)), device)
    differences = {}
    for widths in GPU_WIDTHS:
        slimmable.set_widths(net, widths)
        static = on_device(slimmable.export(net, widths).eval(), device)
        for precision, context in (("train.py's", autocast_on(device)),
                                   ("float32", contextlib.nullcontext)):
            with torch.inference_mode(), context():
                slimmable_logits, static_logits = net(inputs).float(), static(inputs).float()
            differences[f"{widths} {precision}"] = float(
                (slimmable_logits - static_logits).abs().max() / slimmable_logits.abs().max())
    worst = max(value for key, value in differences.items() if "train.py's" in key)
    if not worst <= BF16_TOLERANCE:
        raise AssertionError(f"exported subnets differ from the slimmable model by {worst:.3g} "
                             f"of the largest logit (tolerance {BF16_TOLERANCE})")
    return {"relative_difference": differences, "tolerance": BF16_TOLERANCE}


def gpu_distributed(device, settings, folder):
    """torchrun with one process: train.py, in a one-process NCCL group (gloo on the CPU) that
    its broadcasts and all-reduces go through, exits 0. Then, in this process, in such a group,
    a DistributedDataParallel sandwich step's gradients equal the plain step's (relative
    difference): train.py wraps the network in DDP only with several processes."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
               os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py"),
               "--name", "torchrun"] + settings["data"] + settings["run"] + ["--device",
                                                                            device.type]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=180)
    if completed.returncode:
        lines = (completed.stderr or completed.stdout).strip().splitlines() or ["no output"]
        raise RuntimeError(f"torchrun exited {completed.returncode}: {lines[-1]}")
    backend = "nccl" if device.type == "cuda" else "gloo"
    store = torch.distributed.FileStore(os.path.join(folder, "process_group"), 1)
    torch.distributed.init_process_group(backend, store=store, rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        net = on_device(models.get_model("slim_resnet20", 10), device)
        plain = copy.deepcopy(net)
        wrapped = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)
        inputs = on_device(torch.randn(settings["sandwich_batch"], 3, 32, 32), device)
        targets = torch.randint(0, 10, (settings["sandwich_batch"],), device=device)
        configs = [[0.7] * len(net.width_groups), [0.42] * len(net.width_groups)]
        args = _train_args(method="slim")
        train.train_step(wrapped, net, inputs, targets, configs, args, autocast_on(device))
        train.train_step(plain, plain, inputs, targets, configs, args, autocast_on(device))
        difference = max(float((a.grad - b.grad).abs().max() / b.grad.abs().max().clamp_min(1e-12))
                         for a, b in zip(net.parameters(), plain.parameters()))
    finally:
        torch.distributed.destroy_process_group()
    return {"torchrun": "exit 0", "backend": backend, "ddp_gradient_difference": difference}


def gpu_speed(device, settings):
    """Per network of models.py and width of GPU_WIDTHS: forward+backward ms of the slimmable
    model and of ``slimmable.export`` of it (train.py's precision and layout), their ratio (the
    median of ``pairs`` alternating measurements, so a slow spell hits both), and images/s of
    one sandwich step (full + 2 sampled + smallest network, one optimizer step)."""
    autocast, rows, sandwich = autocast_on(device), [], {}
    print(f"{'network':<24}{'batch':>6}{'width':>6}{'slim ms':>9}{'static ms':>10}{'ratio':>7}")
    for name in settings["networks"]:
        batch = settings["cifar_batch" if name in models.CIFAR_NETWORKS else "imagenet_batch"]
        net, inputs, targets = speed_network(name, batch, settings["imagenet_size"], device)
        for widths in GPU_WIDTHS:
            slim_times, static_times, ratios = slim_vs_static(
                net, widths, inputs, targets, settings["pairs"], settings["calls"],
                settings["warmup"], autocast)
            rows.append({"network": name, "batch": batch, "width": widths,
                         "ratio": statistics.median(ratios),
                         "slimmable_ms": 1000 * statistics.median(slim_times),
                         "static_ms": 1000 * statistics.median(static_times)})
            print(f"{name:<24}{batch:>6}{widths:>6}{rows[-1]['slimmable_ms']:>9.2f}"
                  f"{rows[-1]['static_ms']:>10.2f}{rows[-1]['ratio']:>7.3f}", flush=True)
        groups = len(net.width_groups)
        configs = [row.tolist() for row in samplers.RandomSampler(groups, 0.42, seed=0).propose(2)]
        step = functools.partial(sandwich_step(net, inputs, targets, autocast),
                                 configs + [[0.42] * groups])
        sandwich[name] = batch / device_seconds(step, device, settings["calls"], settings["warmup"])
        print(f"{name:<24}{batch:>6} sandwich step: {sandwich[name]:,.0f} images/s", flush=True)
        del net, inputs, step
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"overhead": rows, "sandwich_images_per_s": sandwich}


def gpu_latency(device, settings):
    """Batch-1 forward latency (eval, inference mode, train.py's precision and layout), ms, of
    each network's exported subnet and slimmable model at the full and the smallest width, and
    smallest / full: does the smallest network answer sooner at batch 1?"""
    rows, autocast = [], autocast_on(device)
    print(f"{'network':<24}{'static full':>12}{'smallest':>10}{'ratio':>7}{'slim full':>11}"
          f"{'smallest':>10}{'ratio':>7}")
    for name in settings["networks"]:
        net, inputs, _ = speed_network(name, 1, settings["imagenet_size"], device)
        net.eval()
        row = {"network": name}
        for label, widths in (("full", 1.0), ("smallest", GPU_WIDTHS[-1])):
            slimmable.set_widths(net, widths)
            static = on_device(slimmable.export(net, widths).eval(), device)
            with torch.inference_mode(), autocast():
                for kind, model in (("static", static), ("slimmable", net)):
                    row[f"{kind}_{label}_ms"] = 1000 * device_seconds(
                        lambda: model(inputs), device, settings["latency_calls"],
                        settings["warmup"] + 1)
        for kind in ("static", "slimmable"):
            row[f"{kind}_ratio"] = row[f"{kind}_smallest_ms"] / row[f"{kind}_full_ms"]
        rows.append(row)
        print(f"{name:<24}{row['static_full_ms']:>12.2f}{row['static_smallest_ms']:>10.2f}"
              f"{row['static_ratio']:>7.2f}{row['slimmable_full_ms']:>11.2f}"
              f"{row['slimmable_smallest_ms']:>10.2f}{row['slimmable_ratio']:>7.2f}", flush=True)
    return {"batch_1": rows}


def gpu_compile(device, settings, name="slim_resnet20"):
    """torch.compile, forward+backward at the CIFAR batch. An exported subnet (middle width):
    seconds of its first compiled step, then eager vs compiled ms (CUDA events). The slimmable
    model compiled while its widths change every step, as in training: each step's wall seconds
    (perf_counter after synchronize: recompilations included, no warm-up) against eager ones,
    until settings["compile_seconds"] have passed in this part. Says which to use."""
    if not settings["compile_seconds"]:
        return {"skipped": "--tiny: compiling takes minutes on a CPU"}
    autocast, stop = autocast_on(device), time.time() + settings["compile_seconds"]

    def wall():  # seconds, once the queued GPU work is done
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()
    net, inputs, targets = speed_network(name, settings["cifar_batch"], settings["imagenet_size"],
                                         device)
    torch._dynamo.reset()
    static = on_device(slimmable.export(net, GPU_WIDTHS[1]).train(), device)
    compiled = torch.compile(static)
    start = wall()
    forward_backward(compiled, inputs, targets, autocast)
    result = {"static_compile_s": wall() - start, "static_eager_ms": 1000 * device_seconds(
        lambda: forward_backward(static, inputs, targets, autocast), device, 10, warmup=3),
        "static_compiled_ms": 1000 * device_seconds(
        lambda: forward_backward(compiled, inputs, targets, autocast), device, 10, warmup=3)}
    speedup = result["static_eager_ms"] / result["static_compiled_ms"]
    advice = (f"compile exported subnets ({speedup:.2f}x eager" if speedup > 1 else
              f"exported subnets: eager (compiled runs at {speedup:.2f}x") + \
        f" after a {result['static_compile_s']:.0f} s compile)"
    try:  # a failure here keeps the exported subnet's figures
        eager, compiled = changing_widths_steps(net, inputs, targets, autocast, wall, stop)
    except Exception as error:
        result["changing_widths_error"] = f"{type(error).__name__}: {runs.first_line(error)}"
        eager, compiled = [], []
    result.update(changing_widths_eager_s=eager, changing_widths_compiled_s=compiled, advice=(
        f"{advice}; train the slimmable model "
        + ("eager" if sum(compiled) > sum(eager) or not compiled else "compiled")
        + f" ({len(compiled)} step(s) with new widths: compiled {sum(compiled):.1f} s, eager "
        f"{sum(eager):.1f} s)"))
    print(result["advice"], flush=True)
    return result


def changing_widths_steps(net, inputs, targets, autocast, wall, stop):
    """(eager, compiled) seconds of forward+backward steps of ``net`` and of torch.compile(net),
    new random per-group widths each step (as the sandwich rule draws them), until ``stop``
    (epoch seconds) after a step or 8 steps: recompilations included, nothing warmed up."""
    compiled_net, eager, compiled = torch.compile(net), [], []
    for widths in samplers.RandomSampler(len(net.width_groups), 0.42, seed=0).propose(8):
        slimmable.set_widths(net, widths.tolist())
        for model, steps in ((net, eager), (compiled_net, compiled)):
            start = wall()
            forward_backward(model, inputs, targets, autocast)
            steps.append(wall() - start)
        if time.time() > stop:
            break
    return eager, compiled


def run_side_by_side(commands, stop_at):
    """Start every command ({name: argv}) at once, its output to NAME.log; SIGINT any still
    running at ``stop_at`` (epoch seconds: train.py saves at the step it is in). Returns each
    one's exit status."""
    processes = []
    for name, argv in commands.items():
        with open(f"{name}.log", "w") as log:  # the child keeps its own copy of the file
            processes.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
    while any(process.poll() is None for process in processes) and time.time() < stop_at:
        time.sleep(1)
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    return [process.wait() for process in processes]


def run_in_turn(commands, stop_at):
    """``run_side_by_side`` for --tiny: each train.py command's main() in this process, one after
    the other (a CPU has no room for four; ``stop_at`` is not needed). Returns the statuses."""
    return [train.main(argv[2:]) for argv in commands.values()]


def gpu_real_data(device, settings, deadline, datapath):
    """Fashion-MNIST (all 60,000 training images, 5,000 held out; --tiny: synthetic), slim_resnet20:
    each of GPU_RECIPES, one process each, side by side (--tiny: in turn, in this process), for
    as many epochs as the time left allows (one sandwich step alone, times REAL_DATA_SLOWDOWN);
    a run still going 90 s before the deadline is stopped and evaluated where it stands. Each is
    evaluated here in turn: the area (mean test top-1 error over the MACs range), the full and
    the smallest network's test top-1."""
    data_flags = settings["real_data"] or ["--dataset", "FashionMNIST", "--datapath", datapath]
    parsed = train.parse_args(data_flags)
    train_set, _, _, num_classes, size, channels = data.build_datasets(parsed)  # fails if missing
    net = models.get_model("slim_resnet20", num_classes, input_size=size, in_channels=channels)
    slimmable.save_config("full.json", net, 1.0)
    batch, steps_per_epoch = parsed.batch_size, len(train_set) // parsed.batch_size
    step = sandwich_step(on_device(net.train(), device),
                         on_device(torch.randn(batch, channels, size, size), device),
                         torch.randint(0, num_classes, (batch,), device=device),
                         autocast_on(device))
    groups = len(net.width_groups)
    step_seconds = device_seconds(lambda: step([[0.8] * groups, [0.6] * groups, [0.42] * groups]),
                                  device, settings["calls"], settings["warmup"])
    seconds_left = deadline - time.time() - 120  # start-up, and evaluation after the stop
    epochs = 1 if settings["real_data"] else \
        max(1, int(seconds_left / (steps_per_epoch * step_seconds * REAL_DATA_SLOWDOWN)))
    print(f"real data: {epochs} epochs of {steps_per_epoch} steps (sandwich step "
          f"{1000 * step_seconds:.1f} ms alone), {len(GPU_RECIPES)} runs "
          + ("in turn" if settings["real_data"] else "side by side"), flush=True)
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py")
    threads = str(runs.default_threads(len(GPU_RECIPES)))  # the usable CPUs shared out
    common = data_flags + ["--network", "slim_resnet20", "--epochs", str(epochs), "--device",
                           device.type, "--threads", threads, "--data_on_device", "on"]
    launch = run_in_turn if settings["real_data"] else run_side_by_side
    names = {label: "real_" + label.replace(" ", "_") for label in GPU_RECIPES}  # runs/real_...
    statuses = launch({names[label]: [sys.executable, script, "--name", names[label]] + flags
                       + common for label, flags in GPU_RECIPES.items()}, deadline - 90)
    rows = {label: real_data_row(names[label], status, epochs * steps_per_epoch,
                                 ["--device", device.type, "--threads", str(settings["threads"])]
                                 + settings["evaluate"])
            for label, status in zip(GPU_RECIPES, statuses)}
    return {"dataset": data_flags, "epochs": epochs, "steps_per_epoch": steps_per_epoch,
            "sandwich_step_ms_alone": 1000 * step_seconds, "runs": rows}


def real_data_row(name, train_status, total_steps, evaluate_flags):
    """Run ``name`` evaluated (evaluate.py with ``evaluate_flags``) where its checkpoint stands,
    printed in one line; its error in one line when that fails."""
    row = {"train_status": train_status}
    if train_status not in (0, 130):  # 130: stopped by the deadline, saved where it stood
        with open(f"{name}.log") as log:
            row["train_error"] = (log.read().strip().splitlines() or ["no output"])[-1]
    try:
        checkpoint = runs.load_checkpoint(runs.checkpoint_path(name))
        result = evaluate.evaluate_run(name, argv=evaluate_flags)
    except (Exception, SystemExit) as error:  # one failed run must not hide the others
        print(f"{name:<14} failed: {runs.first_line(error)}", flush=True)
        return {**row, "error": runs.first_line(error)}
    smallest, full = result["points"][0], result["points"][-1]
    row.update(steps=checkpoint["step"], of_steps=total_steps, area=result["area"],
               full_top1=full["test"]["top1"], smallest_top1=smallest["test"]["top1"],
               smallest_macs_ratio=smallest["macs_ratio"])
    print(f"{name:<14} steps {row['steps']}/{total_steps} area {evaluate.area_text(result)} "
          f"top-1 full {row['full_top1']:.2f}, smallest {row['smallest_top1']:.2f} at "
          f"{100 * row['smallest_macs_ratio']:.0f}% of the MACs", flush=True)
    return row


GPU_PARTS = ("scripts", "subnets", "distributed", "speed", "latency", "compile", "real_data")


def bench_gpu(device_flag="cuda", tiny=False, budget_s=480, datapath=None, out_path=GPU_OUT,
              threads=1, parts=GPU_PARTS):
    """The GPU path checked in one command: each of ``parts`` (GPU_PARTS; "subnets" reads the
    Joslim run of "scripts") in its own try (a failing part is recorded with its one-line error
    and the rest still run), ``out_path`` rewritten after each part, the work done in a
    temporary folder, and a closing table. ``budget_s`` bounds the whole
    (the real-data schedule takes what the other parts leave); ``tiny``: the same plumbing on
    tiny data in seconds (the test suite runs it so on the CPU)."""
    start, out_path = time.time(), os.path.abspath(out_path)
    datapath = os.path.abspath(datapath or GPU_DATAPATH)
    device = torch.device(device_flag)
    if device.type == "cuda":
        device = torch.device("cuda", device.index or 0)
        torch.cuda.set_device(device)
    settings = gpu_settings(tiny, threads, budget_s)
    report = {"machine": machine(), "device": torch.cuda.get_device_name(device)
              if device.type == "cuda" else "cpu", "torch": torch.__version__, "tiny": tiny,
              "budget_s": budget_s, "parts": {}}
    previous = os.getcwd()
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        try:
            for part in parts:
                report["parts"][part] = gpu_part(part, device, settings, start + budget_s,
                                                 datapath, folder)
                runs.write_json(out_path, report)
        finally:
            os.chdir(previous)
    print(f"\n{report['device']}, torch {torch.__version__}, {time.time() - start:.0f} s; "
          f"{out_path}")
    print(f"{'part':<16}{'status':<8}{'seconds':>8}  error")
    for part, result in report["parts"].items():
        print(f"{part:<16}{result['status']:<8}{result['seconds']:>8.1f}  "
              f"{result.get('error', '')}")
    return report


def gpu_part(part, device, settings, deadline, datapath, folder):
    """One part of ``bench_gpu``: its result with status "ok" and its seconds, or status
    "failed" and its error in one line."""
    print(f"\n[gpu] {part}", flush=True)
    start = time.time()
    try:
        result = {"scripts": lambda: gpu_scripts(device, settings),
                  "subnets": lambda: gpu_subnets_match(device),
                  "distributed": lambda: gpu_distributed(device, settings, folder),
                  "speed": lambda: gpu_speed(device, settings),
                  "latency": lambda: gpu_latency(device, settings),
                  "compile": lambda: gpu_compile(device, settings),
                  "real_data": lambda: gpu_real_data(device, settings, deadline, datapath)}[part]()
        # NumPy scalars as numbers, other values JSON cannot hold as their repr: the file is written
        result = json.loads(json.dumps({"status": "ok", **result}, default=lambda value: (
            value.item() if hasattr(value, "item") else repr(value))))
    except (Exception, SystemExit) as error:  # one shot on the GPU: record it, run the rest
        result = {"status": "failed", "error": f"{type(error).__name__}: {runs.first_line(error)}"}
        print(f"[gpu] {part} failed: {result['error']}", flush=True)
    result["seconds"] = time.time() - start
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


# ---------------------------------------------------------------------------------------------
# convert.make_slimmable on torchvision's classification CNNs

CONVERT_SIZES = {"inception_v3": 75}  # the smallest input it takes; 64x64 for the others
CONVERT_QUICK = ("alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "googlenet",
                 "inception_v3", "mnasnet0_5", "mobilenet_v2", "mobilenet_v3_small",
                 "regnet_x_400mf", "regnet_y_400mf", "resnet18", "resnext50_32x4d",
                 "shufflenet_v2_x0_5", "squeezenet1_1", "vgg11", "wide_resnet50_2")


def torchvision_cnns():
    """torchvision's classification CNNs (68 in 0.29): every model but the transformers."""
    import torchvision
    return [name for name in torchvision.models.list_models(module=torchvision.models)
            if not name.startswith(("vit_", "swin_", "maxvit_"))]


def torchvision_cnn(name, num_classes=1000):
    """torchvision network ``name`` with random weights (GoogLeNet and Inception-v3 without
    their auxiliary classifiers and torchvision's slow initialization)."""
    import torchvision
    options = {"aux_logits": False, "init_weights": False} \
        if name in ("googlenet", "inception_v3") else {}
    return torchvision.models.get_model(name, num_classes=num_classes, **options)


def scramble_bn_statistics(model, generator):
    """Random BN running statistics, so that an eval-mode comparison sees them gathered."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=generator) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)


def check_conversion(model, images, settings=3, seed=0, log=None):
    """Convert ``model`` on ``images[:1]`` and check it: full-width outputs equal to the
    original's (eval mode, BN statistics scrambled first); at ``settings`` random width
    configurations, the exported model's outputs against the slimmable model's (the largest
    difference relative to the largest output), ``macs`` against FlopCounterMode on the export
    (2 FLOPs per MAC) and ``params`` against the export's parameter count. Returns the
    converted model and a dict of the figures."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        scramble_bn_statistics(model, generator)
        expected = model.eval()(images)
        start = time.perf_counter()
        net = convert.make_slimmable(model, images[:1], log=log or (lambda line: None))
        seconds = time.perf_counter() - start
        record = {"seconds": round(seconds, 3), "groups": len(net.width_groups),
                  "frozen": len(net.frozen), "full_width_equal": torch.equal(net(images), expected),
                  "export_error": 0.0, "macs_equal": True, "params_equal": True}
        for _ in range(settings):
            widths = (0.1 + 0.9 * torch.rand(len(net.width_groups), generator=generator)).tolist()
            small = slimmable.export(slimmable.set_widths(net, widths), widths)
            output = net(images)
            error = (small(images) - output).abs().max() / output.abs().max().clamp(min=1e-12)
            with FlopCounterMode(display=False) as counter:
                small(images[:1])
            record["export_error"] = max(record["export_error"], float(error))
            record["macs_equal"] &= counter.get_total_flops() == 2 * slimmable.macs(net, widths)
            record["params_equal"] &= sum(p.numel() for p in small.parameters()) == \
                slimmable.params(net, widths)
    return net, record


def bench_convert(names=None, out_path=os.path.join("results", "convert.json")):
    """``check_conversion`` of each torchvision CNN (default all 68) at 64x64 (or the smallest
    input it takes); prints a table and writes ``out_path``. A conversion that raises is a row
    with its one-line error."""
    rows = []
    print(f"{'network':<22}{'input':>6}{'seconds':>9}{'groups':>8}{'frozen':>8}{'full=':>7}"
          f"{'export err':>12}{'macs=':>7}{'params=':>9}")
    for name in names or torchvision_cnns():
        size = CONVERT_SIZES.get(name, 64)
        torch.manual_seed(0)
        row = {"network": name, "input": size}
        try:
            row.update(check_conversion(torchvision_cnn(name), torch.randn(2, 3, size, size))[1])
        except Exception as error:  # a failure is a result here: its row says which
            row["error"] = f"{type(error).__name__}: {runs.first_line(error)[:150]}"
            print(f"{name:<22}{size:>6}  FAILED {row['error']}", flush=True)
        else:
            print(f"{name:<22}{size:>6}{row['seconds']:>9.2f}{row['groups']:>8}{row['frozen']:>8}"
                  f"{str(row['full_width_equal']):>7}{row['export_error']:>12.1e}"
                  f"{str(row['macs_equal']):>7}{str(row['params_equal']):>9}", flush=True)
        rows.append(row)
    good = [r for r in rows if "error" not in r and r["full_width_equal"] and r["macs_equal"]
            and r["params_equal"] and r["export_error"] < 1e-4]
    print(f"{len(good)} of {len(rows)} converted and checked; "
          f"{sum(r.get('frozen', 0) > 0 for r in rows)} with frozen groups; "
          f"{sum('error' in r for r in rows)} failed")
    runs.write_json(out_path, {"machine": machine(), "torch": torch.__version__, "rows": rows})
    return rows


def quality_dataset(dataset, datapath):
    """``dataset``, or for "auto": FashionMNIST when its files are there, else synthetic."""
    if dataset != "auto":
        return dataset
    found = all(any(os.path.exists(os.path.join(data.idx_folder(datapath, "FashionMNIST"),
                                                f + ext)) for ext in ("", ".gz"))
                for f in data.IDX_FILES)
    print("quality: --dataset " + ("FashionMNIST" if found else "synthetic (no Fashion-MNIST "
          "files: apt-get install dataset-fashion-mnist, or pass --datapath)"))
    return "FashionMNIST" if found else "synthetic"


def parse_args(argv=None):
    parser = runs.parser(__doc__)
    positive = runs.number(int, 1)
    parser.add_argument("what", choices=["speed", "quality", "recipe", "overhead", "macs",
                                         "sampler", "training", "window", "converter", "search",
                                         "contention", "convert", "gpu"],
                        help="which benchmark to run ('speed' runs every speed benchmark)")
    parser.add_argument("--networks", nargs="+", default=list(models.NETWORKS),
                        choices=list(models.NETWORKS), metavar="NAME",
                        help="networks for the overhead benchmark (default: all)")
    parser.add_argument("--pairs", type=positive, default=20,
                        help="overhead: alternating slimmable/static pairs per entry")
    parser.add_argument("--batch_size", type=positive, default=64,
                        help="batch for the overhead benchmark")
    parser.add_argument("--imagenet_size", type=positive, default=112,
                        help="input resolution of the ImageNet networks in the overhead benchmark")
    parser.add_argument("--threads", type=positive, default=os.cpu_count(),
                        help="torch CPU threads")
    parser.add_argument("--quick", action="store_true",
                        help="quality: a few minutes instead of about an hour; contention: "
                             "the thread counts and OMP_WAIT_POLICY=PASSIVE only; convert: "
                             "one network per family")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="convert: these torchvision networks only")
    parser.add_argument("--steps", type=positive, default=5,
                        help="contention: timed training steps per measurement (default 5)")
    parser.add_argument("--cores", type=positive, default=None,
                        help="contention: torch threads of the widest setting (default: the "
                             "CPUs this process may use, e.g. under taskset)")
    parser.add_argument("--spincounts", type=runs.number(int, 0), nargs="+", default=[1000, 30000],
                        help="contention: GOMP_SPINCOUNT values to measure (default 1000 30000)")
    parser.add_argument("--short_run", action="store_true",
                        help="contention: a 20-step default train.py run, quiet and beside one "
                             "busy process (wall times and the share kept)")
    parser.add_argument("--tuner", action="store_true",
                        help="contention: train.py's ThreadTuner against fixed thread counts, "
                             "--steps quiet then --steps beside one busy process (use --steps 40)")
    parser.add_argument("--repeats", type=positive, default=3,
                        help="contention: rounds over all settings; each figure is the median "
                             "of the rounds (default 3)")
    parser.add_argument("--seeds", type=runs.seed_flag, nargs="+", default=[0, 1, 2],
                        help="quality, recipe: seeds (default 0 1 2)")
    parser.add_argument("--dataset", default="auto", choices=["auto", *QUALITY_DATA],
                        help="quality: the study's data set (default auto: FashionMNIST when "
                             "its files are at --datapath or Debian's folder, else synthetic)")
    parser.add_argument("--datapath", default=None,
                        help="quality, recipe: where the FashionMNIST files are (train.py's flag); "
                             f"gpu: the same (default {GPU_DATAPATH}, git-ignored)")
    parser.add_argument("--name", help="search: time the search of this searched supernet "
                        "(runs/NAME) instead of a tiny one, and compare its configurations with "
                        "uniform widths at matched MACs")
    parser.add_argument("--device", type=runs.device_flag, default="cuda",
                        help="gpu: where the parts run (default cuda; cpu with --tiny)")
    parser.add_argument("--tiny", action="store_true",
                        help="gpu: the same plumbing on tiny data and sizes, seconds on a CPU")
    parser.add_argument("--budget_s", type=runs.number(float, 0, low_open=True), default=480,
                        help="gpu: seconds for all parts; the real-data schedule takes what the "
                             "others leave (default 480: under 9 minutes with start-up)")
    parser.add_argument("--out", default=GPU_OUT, help=f"gpu: the JSON (default {GPU_OUT})")
    parser.add_argument("--parts", nargs="+", default=list(GPU_PARTS), choices=GPU_PARTS,
                        help="gpu: the parts to run, in their order (default all; subnets needs "
                             "scripts)")
    args = parser.parse_args(argv)
    if args.what == "gpu" and args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("gpu: no CUDA device here; use --device cpu --tiny")
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(machine())
    kept = runs.keep_freed_memory()
    print(f"glibc malloc keeps freed memory (runs.keep_freed_memory): {kept}")
    if args.what == "gpu":
        bench_gpu(args.device, args.tiny, args.budget_s, args.datapath, args.out, args.threads,
                  [part for part in GPU_PARTS if part in args.parts])
    if args.what == "recipe":
        bench_recipe(args.seeds, threads=args.threads, datapath=args.datapath)
    if args.what == "quality":
        bench_quality(args.seeds, quality_dataset(args.dataset, args.datapath), args.quick,
                      threads=args.threads, datapath=args.datapath)
    if args.what in ("speed", "macs"):
        bench_macs()
    if args.what in ("speed", "sampler"):
        bench_sampler()
    if args.what in ("speed", "converter"):
        bench_converter()
    if args.what in ("speed", "search"):
        bench_search(args.name)
        if args.name:
            compare_with_uniform(args.name)
        torch.set_num_threads(args.threads)  # the search benchmarks run with 1 thread
    if args.what in ("speed", "training"):
        bench_training()
    if args.what in ("speed", "window"):
        bench_window_share()
    if args.what == "contention":
        if args.short_run:
            bench_short_run()
        elif args.tuner:
            bench_thread_tuner(steps=args.steps)
        else:
            bench_contention(args.cores, args.steps, args.quick, args.spincounts,
                             repeats=args.repeats)
    if args.what == "convert":
        bench_convert(args.only or (CONVERT_QUICK if args.quick else None))
    if args.what in ("speed", "overhead"):
        bench_overhead(args.networks, batch_size=args.batch_size, pairs=args.pairs,
                       imagenet_size=args.imagenet_size)


if __name__ == "__main__":
    main()
