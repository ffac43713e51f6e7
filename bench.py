"""Speed and quality benchmarks, each measured side by side in one run on this machine.

Speed figures are ratios or rates taken in one process with the candidates interleaved, so a busy
machine slows both sides alike. Nothing here is asserted by the tests.

    python bench.py speed               # every speed table below, with the machine recorded
    python bench.py overhead            # slimmable vs exported static model, forward+backward
    python bench.py macs                # vectorized MAC counting
    python bench.py overhead --networks slim_resnet20 --repeats 5
"""
import argparse
import os
import platform
import statistics
import time

import torch

import models
import slimmable


def machine():
    """One line naming the machine the figures came from."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
            f"torch {torch.__version__} with {torch.get_num_threads()} threads, {device}")


def _step_seconds(model, inputs, targets):
    """Wall time of one forward+backward pass."""
    start = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(model(inputs), targets)
    loss.backward()
    return time.perf_counter() - start


def bench_overhead(networks, widths_list=(1.0, 0.71, 0.42), batch_size=64, repeats=5,
                   imagenet_size=112):
    """Forward+backward time of the slimmable model at a width against ``slimmable.export`` of it,
    alternating the two, median over ``repeats``. Ratio = slimmable / static (goal <= 1.05)."""
    print(f"slimmable vs static, forward+backward, batch {batch_size}, median of {repeats} "
          f"alternating runs (ImageNet networks at {imagenet_size}x{imagenet_size})")
    print(f"{'network':<24}{'width':>6}{'slim ms':>10}{'static ms':>11}{'ratio':>8}")
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
            slim_times, static_times = [], []
            for i in range(repeats + 1):  # the first round warms both up and is dropped
                for model, times in ((net, slim_times), (static, static_times)):
                    model.zero_grad(set_to_none=True)
                    seconds = _step_seconds(model, inputs, targets)
                    if i > 0:
                        times.append(seconds)
            slim_ms = 1000 * statistics.median(slim_times)
            static_ms = 1000 * statistics.median(static_times)
            rows.append((name, widths, slim_ms, static_ms, slim_ms / static_ms))
            print(f"{name:<24}{widths:>6}{slim_ms:>10.1f}{static_ms:>11.1f}"
                  f"{slim_ms / static_ms:>8.3f}", flush=True)
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


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["speed", "overhead", "macs"],
                        help="which benchmark to run ('speed' runs every speed benchmark)")
    parser.add_argument("--networks", nargs="+", default=list(models.NETWORKS),
                        choices=list(models.NETWORKS), metavar="NAME",
                        help="networks for the overhead benchmark (default: all)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per entry")
    parser.add_argument("--batch_size", type=int, default=64, help="batch for the overhead benchmark")
    parser.add_argument("--imagenet_size", type=int, default=112,
                        help="input resolution of the ImageNet networks in the overhead benchmark")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine())
    if args.what in ("speed", "macs"):
        bench_macs()
    if args.what in ("speed", "overhead"):
        bench_overhead(args.networks, batch_size=args.batch_size, repeats=args.repeats,
                       imagenet_size=args.imagenet_size)


if __name__ == "__main__":
    main()
