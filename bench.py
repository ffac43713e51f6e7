"""Speed and quality benchmarks, each measured side by side in one run on this machine.

Speed figures are ratios or rates taken in one process with the candidates interleaved, so a busy
machine slows both sides alike. Nothing here is asserted by the tests.

    python bench.py speed               # every speed table below, with the machine recorded
    python bench.py overhead            # slimmable vs exported static model, forward+backward
    python bench.py macs                # vectorized MAC counting
    python bench.py overhead --networks slim_resnet20 --pairs 10
    python bench.py search --name autoslim  # a searched supernet: search speed, searched vs uniform
    python bench.py quality [--quick]   # Joslim vs Slim vs AutoSlim fronts (about an hour)
    python bench.py quality --seeds 0 --threads 1 &   # the same in about 59 minutes on 2 cores:
    python bench.py quality --seeds 1 --threads 1     # one process per seed, then
    python bench.py quality                           # the table of both (reads their results)
"""
import argparse
import contextlib
import json
import os
import shutil
import tempfile
import platform
import statistics
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as train.py: NumPy serves the sampler only
import numpy as np  # noqa: E402
import torch  # noqa: E402

from PIL import Image  # noqa: E402

import data  # noqa: E402
import models  # noqa: E402
import sampler as samplers  # noqa: E402
import search  # noqa: E402
import slimmable  # noqa: E402
import train  # noqa: E402


def machine():
    """One line naming the machine the figures came from."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
            f"torch {torch.__version__} with {torch.get_num_threads()} threads, {device}")


def _step_seconds(model, inputs, targets, steps=1):
    """Wall time of one forward+backward pass (gradients reset as an optimizer step would),
    averaged over ``steps`` passes."""
    start = time.perf_counter()
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(inputs), targets).backward()
    return (time.perf_counter() - start) / steps


def bench_overhead(networks, widths_list=(1.0, 0.71, 0.42), batch_size=64, pairs=20,
                   imagenet_size=112, block_seconds=0.5):
    """Forward+backward time of the slimmable model at a width against ``slimmable.export`` of it.

    ``pairs`` times: one block of about ``block_seconds`` of each, the order alternating; the
    ratio slimmable / static of each pair, so a slow spell of the machine slows both sides of a
    pair alike. Reports the median pair ratio (goal <= 1.05) and the middle half of the pair
    ratios. At width 1.0 both run the same kernels: that row is the machine's A/A noise."""
    print(f"slimmable vs static, forward+backward, batch {batch_size}, {pairs} alternating pairs "
          f"of ~{block_seconds:g} s blocks (ImageNet networks at {imagenet_size}x{imagenet_size})")
    print(f"{'network':<24}{'width':>6}{'slim ms':>10}{'static ms':>11}{'ratio':>8}"
          f"{'middle half':>15}")
    rows = []
    for name in networks:
        cifar = name in models.CIFAR_NETWORKS
        size = 32 if cifar else imagenet_size
        torch.manual_seed(0)
        net = models.get_model(name, 10 if cifar else 1000, input_size=size).train()
        inputs = torch.randn(batch_size, 3, size, size)
        targets = torch.randint(0, 10, (batch_size,))
        for widths in widths_list:
            slimmable.set_widths(net, widths)
            static = slimmable.export(net, widths).train()
            for _ in range(2):  # warm-up: the allocator settles in a step or two
                _step_seconds(static, inputs, targets)
                _step_seconds(net, inputs, targets)
            steps = max(1, round(block_seconds / _step_seconds(net, inputs, targets)))
            slim_times, static_times = [], []
            for i in range(pairs):
                pair = ((net, slim_times), (static, static_times))
                for model, times in pair if i % 2 == 0 else pair[::-1]:
                    times.append(_step_seconds(model, inputs, targets, steps))
            ratios = [a / b for a, b in zip(slim_times, static_times)]
            low, ratio, high = statistics.quantiles(ratios, n=4)
            slim_ms = 1000 * statistics.median(slim_times)
            static_ms = 1000 * statistics.median(static_times)
            rows.append((name, widths, slim_ms, static_ms, ratio, low, high))
            print(f"{name:<24}{widths:>6}{slim_ms:>10.1f}{static_ms:>11.1f}{ratio:>8.3f}"
                  f"{f'{low:.3f}-{high:.3f}':>15}", flush=True)
    return rows


def bench_macs(count=10_000, repeats=5):
    """Seconds to count the MACs of ``count`` random ResNet-56 configurations at once."""
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


def bench_training(networks=("slim_resnet20", "slim_resnet56"), batch_size=128, steps=6):
    """Images/s through the whole sandwich step (full + 2 sampled + smallest network, one
    optimizer step) on random CIFAR-shaped data, median step time of ``steps``."""
    print(f"training throughput, sandwich step with 2 sampled configurations, batch {batch_size}")
    print(f"{'network':<16}{'s/step':>8}{'images/s':>10}")
    rates = {}
    for name in networks:
        torch.manual_seed(0)
        net = models.get_model(name, 10)
        args = _train_args(method="joslim")
        optimizer = train.make_optimizer(net, args, 0.05)
        random_configs = samplers.RandomSampler(len(net.width_groups), 0.42, seed=0)
        inputs, targets = torch.randn(batch_size, 3, 32, 32), torch.randint(0, 10, (batch_size,))
        times = []
        for i in range(steps + 1):
            configs = [row.tolist() for row in random_configs.propose(2)] + [0.42]
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            train.train_step(net, net, inputs, targets, configs, args, contextlib.nullcontext)
            optimizer.step()
            if i:
                times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        rates[name] = batch_size / seconds
        print(f"{name:<16}{seconds:>8.3f}{batch_size / seconds:>10.0f}", flush=True)
    return rates


def bench_window_share(network="slim_resnet56", history=1000, tau=235, batch_size=128,
                       rescore_limits=(120, 250, 0)):
    """Share of one Joslim window spent outside training (re-scoring the history on one held-out
    batch + two GP proposals) with ``history`` configurations, for the CIFAR recipe's window
    (``tau`` steps of ``batch_size``). ``rescore_limit`` 0 re-scores everything (the reference)."""
    torch.manual_seed(0)
    net = models.get_model(network, 100)
    num_dims = len(net.width_groups)
    args = _train_args(method="joslim")
    inputs, targets = torch.randn(batch_size, 3, 32, 32), torch.randint(0, 100, (batch_size,))
    configs = [row.tolist() for row in samplers.RandomSampler(num_dims, 0.42, 1).propose(2)]
    step_times = []
    for i in range(4):
        start = time.perf_counter()
        net.zero_grad(set_to_none=True)
        train.train_step(net, net, inputs, targets, configs + [0.42], args, contextlib.nullcontext)
        if i:
            step_times.append(time.perf_counter() - start)
    window_training = tau * statistics.median(step_times)
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


QUALITY_METHODS = {  # label: train.py flags
    "slim": ["--method", "slim"],
    "joslim-ei": ["--method", "joslim", "--acquisition", "ei"],
    "joslim-ucb": ["--method", "joslim", "--acquisition", "ucb"],
    "autoslim": ["--method", "random"],
}


def bench_quality(seeds=(0, 1), quick=False, out_path="results/quality.svg", threads=None):
    """Joslim (ei, ucb) vs Slim vs AutoSlim on the synthetic set, slim_resnet20, the same training
    steps for every method; AutoSlim = the random-width supernet searched greedily at 9 targets.
    Every run is evaluated by evaluate.py's protocol (BN calibrated per configuration, front
    selected on held-out data, reported on test). Finished runs are reused: rerun to resume, or
    run the seeds in parallel processes (``--seeds 0 --threads 1`` and ``--seeds 1 --threads 1``)
    and then all of them together, which only reads their results."""
    import evaluate
    threads = threads or torch.get_num_threads()
    flags = ["--network", "slim_resnet20", "--print_freq", "100", "--threads", str(threads)]
    if quick:
        flags += ["--epochs", "2", "--synthetic_train", "3000", "--synthetic_test", "1000",
                  "--val_size", "500", "--tau", "10", "--prior_points", "6"]
    names = {label: [] for label in QUALITY_METHODS}
    for seed in seeds:
        for label, method_flags in QUALITY_METHODS.items():
            name = f"quality{'_quick' if quick else ''}_{label}_s{seed}"
            names[label].append(name)
            start = time.time()
            if train.main(["--name", name, "--seed", str(seed)] + method_flags + flags) != 0:
                raise SystemExit(f"training {name} failed")
            if label == "autoslim":
                search.run_search(name, target_ratios=[0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.25,
                                                       0.2], threads=threads)
            print(f"[quality] {name}: trained (and searched) in {time.time() - start:.0f} s",
                  flush=True)
    everything = [name for label in names for name in names[label]]
    rows = {row["name"]: row for row in evaluate.compare(everything, out_path)}
    print(f"\nsynthetic set, slim_resnet20, seeds {list(seeds)}: mean (min..max) over seeds")
    print(f"{'method':<12}{'area (top-1 error %)':>24}"
          + "".join(f"{f'top1@{100 * level:g}%':>12}" for level in evaluate.MATCHED_RATIOS))
    table = []
    for label, run_names in names.items():
        areas = [rows[n]["area"] for n in run_names]
        line = f"{label:<12}{np.mean(areas):>10.2f} ({min(areas):.2f}..{max(areas):.2f})"
        cells = []
        for level in evaluate.MATCHED_RATIOS:
            values = [rows[n]["top1_at"][level] for n in run_names]
            values = [v for v in values if v is not None]
            cells.append(np.mean(values) if values else None)
            line += f"{np.mean(values):>12.2f}" if values else f"{'-':>12}"
        print(line)
        table.append((label, areas, cells))
    print(f"fronts: {out_path}")
    return table


def tiny_supernet(folder, threads=1):
    """runs/bench/checkpoint.pt in ``folder``: slim_resnet20, 1 epoch of --method random."""
    previous = os.getcwd()
    os.chdir(folder)
    try:
        train.main(["--name", "bench", "--method", "random", "--epochs", "1", "--batch_size", "64",
                    "--synthetic_train", "1500", "--val_size", "500", "--synthetic_test", "100",
                    "--workers", "0", "--threads", str(threads)])
    finally:
        os.chdir(previous)


def bench_search(name=None, target_ratios=(0.85,), threads=1, **settings):
    """Search one supernet three ways: BN from batch statistics with each candidate resumed at
    its first changed block (the default), the same run from the image (``--full_forward``), and
    ``--bn calibrate`` (4 batches of 128). Prints steps, candidate evaluations, seconds and
    evaluations/s. ``name``: an existing runs/NAME supernet (searched in a copy); None trains a
    tiny one (1 epoch)."""
    settings = {"search_images": 500, **settings}
    previous = os.getcwd()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        if name is None:
            tiny_supernet(folder, threads)
            name = "bench"
        else:
            os.makedirs(os.path.join(folder, "runs", name))
            shutil.copy(os.path.join("runs", name, "checkpoint.pt"), os.path.join(folder, "runs", name))
        os.chdir(folder)
        try:
            for label, bn, full_forward in (("batch BN, resumed", "batch", False),
                                            ("batch BN, from image", "batch", True),
                                            ("calibrated, resumed", "calibrate", False)):
                result = search.run_search(name, target_ratios=list(target_ratios), restart=True,
                                           bn=bn, full_forward=full_forward, threads=threads, **settings)
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
    print(f"resuming at the changed block: {full['seconds'] / resumed['seconds']:.2f}x faster, same "
          f"configurations: {[r['channels'] for r in resumed['records']] == [r['channels'] for r in full['records']]}; calibrated BN costs "
          f"{rows[2][1]['seconds'] / resumed['seconds']:.2f}x the batch-statistics search")
    return rows


def uniform_below(net, target_macs, lower, iterations=50):
    """The largest uniform multiplier in [lower, 1] whose MACs do not exceed ``target_macs``."""
    below, above = lower, 1.0
    if slimmable.macs(net, 1.0) <= target_macs:
        return 1.0
    for _ in range(iterations):
        middle = (below + above) / 2
        below, above = (middle, above) if slimmable.macs(net, middle) <= target_macs else (below, middle)
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
    calibration, held_out, loaders = search.fixed_images(args, torch.device("cpu"), 0)
    test_set = torch.utils.data.Subset(loaders.test.dataset, range(min(test_images, len(loaders.test.dataset))))
    test = search.load_tensors(test_set, args.eval_batch_size, 0, torch.Generator().manual_seed(0))
    scorers = {split: search.CandidateScorer(net, calibration, images, args.bn)
               for split, images in (("held-out", held_out), ("test", test))}
    counts = {split: sum(len(y) for _, y in images) for split, images in (("held-out", held_out), ("test", test))}

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
        rows.append({"target_mflops": record["target_mflops"], "searched_macs": record["macs"],
                     "searched": top1(record["widths"]), "uniform_multiplier": multiplier,
                     "uniform_macs": uniform_macs, "uniform": top1(multiplier)})
    print(f"{name}: searched vs uniform widths at matched MACs, top-1 % with BN {args.bn} "
          f"({counts['held-out']} held-out images = the search's, {counts['test']} test images)")
    print(f"{'target':>8}{'searched MACs':>15}{'held-out':>9}{'test':>7}{'uniform x':>11}"
          f"{'MACs':>9}{'held-out':>9}{'test':>7}{'gain (test)':>12}")
    for row in rows:
        print(f"{row['target_mflops']:>7.2f}M{row['searched_macs'] / 1e6:>8.2f}M {100 * row['searched_macs'] / full:4.1f}%"
              f"{row['searched']['held-out']:>9.2f}{row['searched']['test']:>7.2f}"
              f"{row['uniform_multiplier']:>11.3f}{row['uniform_macs'] / 1e6:>8.2f}M"
              f"{row['uniform']['held-out']:>9.2f}{row['uniform']['test']:>7.2f}"
              f"{row['searched']['test'] - row['uniform']['test']:>+12.2f}")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["speed", "quality", "overhead", "macs", "sampler",
                                         "training", "window", "converter", "search"],
                        help="which benchmark to run ('speed' runs every speed benchmark)")
    parser.add_argument("--networks", nargs="+", default=list(models.NETWORKS),
                        choices=list(models.NETWORKS), metavar="NAME",
                        help="networks for the overhead benchmark (default: all)")
    parser.add_argument("--pairs", type=int, default=20,
                        help="overhead: alternating slimmable/static pairs per entry")
    parser.add_argument("--batch_size", type=int, default=64, help="batch for the overhead benchmark")
    parser.add_argument("--imagenet_size", type=int, default=112,
                        help="input resolution of the ImageNet networks in the overhead benchmark")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    parser.add_argument("--quick", action="store_true",
                        help="quality: a few minutes instead of about an hour")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="quality: seeds")
    parser.add_argument("--name", help="search: time the search of this searched supernet "
                        "(runs/NAME) instead of a tiny one, and compare its configurations with "
                        "uniform widths at matched MACs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine())
    kept = slimmable.keep_freed_memory()
    print(f"glibc malloc keeps freed memory (slimmable.keep_freed_memory): {kept}")
    if args.what == "quality":
        bench_quality(args.seeds, args.quick, threads=args.threads)
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
    if args.what in ("speed", "overhead"):
        bench_overhead(args.networks, batch_size=args.batch_size, pairs=args.pairs,
                       imagenet_size=args.imagenet_size)


if __name__ == "__main__":
    main()
