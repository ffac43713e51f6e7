"""Benchmarks of search.py: how fast the greedy search scores candidates, and whether its
configurations beat uniform widths of the same supernet at matched MACs.

    python bench_part_search.py speed                  # trains a tiny supernet in a temp folder
    python bench_part_search.py speed --name autoslim  # or searches runs/autoslim (a copy of it)
    python bench_part_search.py uniform --name autoslim  # after search.py --name autoslim
"""
import argparse
import json
import os
import shutil
import tempfile
import time

import torch

import models
import search
import slimmable
import train


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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["speed", "uniform"])
    parser.add_argument("--name", default=None, help="run with a supernet (uniform: required)")
    parser.add_argument("--bn", default=None, choices=["batch", "calibrate"],
                        help="uniform: BN policy of the comparison (default: the search's)")
    parser.add_argument("--threads", type=int, default=1)
    options = parser.parse_args()
    if options.what == "speed":
        bench_search(options.name, threads=options.threads)
    else:
        compare_with_uniform(options.name or "autoslim", bn=options.bn, threads=options.threads)
