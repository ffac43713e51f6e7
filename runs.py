"""A run on disk and the process that works on it: everything train.py, search.py and evaluate.py
share that is not the method.

A run lives in ``runs/NAME/``: ``checkpoint.pt`` (a plain dict, read back with
``weights_only=True`` so a shared file cannot run code), ``log.txt``, ``curves.json``, ``search/``,
and ``train.lock``, which one process at a time holds. Every file is written whole or not at all
(``write_atomic``). The process: ``start`` reads torchrun's environment and sets the CPU threads;
``ThreadTuner`` and ``stop_requests`` serve the training loop. User errors raise ``Fail``; ``cli``
prints its first line and exits with status 2. Tracebacks are left for bugs.

    import runs
    def job(args):
        device, rank, world_size = runs.start(args.device, args.threads)
        folder = runs.run_folder(args.name)       # runs/NAME, the name checked
        ...
    sys.exit(runs.cli(job, args))
"""
import argparse
import contextlib
import ctypes
import glob
import io
import json
import math
import os
import pickle
import random
import re
import signal
import statistics
import sys
import tempfile

import numpy as np
import torch
import torch.distributed as dist

class Fail(Exception):
    """A problem the user can fix: ``cli`` prints its first line and exits with status 2."""


def first_line(error):
    """The first line of an exception's message, or its type's name when it has none."""
    return (str(error).splitlines() or [type(error).__name__])[0]


def cli(job, *args, user_errors=(),
        interrupted="interrupted: rerun the same command to continue from the last saved state"):
    """``job(*args)``'s exit status; ``Fail`` and ``user_errors`` end in one line on stderr and
    status 2, Ctrl-C outside a training step in ``interrupted`` and status 130."""
    try:
        status = job(*args)
        status = status if isinstance(status, int) else 0
    except (Fail, *user_errors) as error:
        print(f"error: {first_line(error)}", file=sys.stderr)
        status = 2
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        status = 130
    if dist.is_initialized():
        if status == 0:  # a rank leaving while gloo still talks to it aborts the other
            dist.barrier()
        dist.destroy_process_group()
    return status


# ---------------------------------------------------------------------------------------------
# The command line


def parser(description):
    """An ``argparse.ArgumentParser`` that takes no abbreviated flags and ends a bad value with
    one line, ``error: ...``, and exit status 2."""
    made = argparse.ArgumentParser(description=description, allow_abbrev=False,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    made.error = lambda message: made.exit(2, f"error: {message}\n")
    return made


def number(kind=float, low=None, high=None, low_open=False, high_open=False):
    """An argparse ``type=``: a finite ``kind`` (int or float) in the given range, else argparse's
    one-line error saying what the value must be."""
    def parse(text):
        try:
            value = kind(text)
            finite = math.isfinite(value)
        except (ValueError, OverflowError):  # not a number, or an integer beyond any float
            value, finite = None, False
        if finite and (low is None or value > low or value == low and not low_open) \
                and (high is None or value < high or value == high and not high_open):
            return value
        shown = str if kind is int else "{:g}".format
        bounds = [f"{'>' if low_open else '>='} {shown(low)}"] if low is not None else []
        bounds += [f"{'<' if high_open else '<='} {shown(high)}"] if high is not None else []
        must = f"{'an integer' if kind is int else 'a number'} {' and '.join(bounds)}".strip()
        raise argparse.ArgumentTypeError(f"{text!r} is invalid: it must be {must}")
    return parse


def add_process_flags(parser, threads_help="CPU threads per process (0: cores / processes)"):
    """``--device`` and ``--threads``, which ``start`` reads, as every script declares them."""
    parser.add_argument("--device", type=device_flag, default="auto",
                        help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=number(int, 0), default=0, help=threads_help)


def matching(pattern, rule):
    """An argparse ``type=``: the text when it matches ``pattern`` whole, else ``rule``."""
    def parse(text):
        if not re.fullmatch(pattern, text):
            raise argparse.ArgumentTypeError(f"{text!r} is invalid: {rule}")
        return text
    return parse


# --name: so that runs/NAME and results/NAME_* stay inside their folders
run_name = matching(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}", "a run name is letters, digits, '.', "
                    "'_' and '-', not starting with '.', at most 100 characters")
device_flag = matching(r"auto|cpu|cuda(:\d+)?", "it must be auto, cpu, cuda or cuda:N")
seed_flag = number(int, 0, 2**32 - 1)  # NumPy's global seed (np.random.seed) is 32 bits


def explicit_flags(parser_, argv):
    """The flags ``argv`` sets explicitly (their dest names), as opposed to defaults."""
    unset = object()
    names = vars(parser_.parse_args(argv))
    given = parser_.parse_args(argv, namespace=argparse.Namespace(**{k: unset for k in names}))
    return {key for key, value in vars(given).items() if value is not unset}


# ---------------------------------------------------------------------------------------------
# The run's folder: lock, log, durable files, checkpoints


def run_folder(name):
    """``runs/NAME``; ``Fail`` for a name that ``run_name`` refuses."""
    try:
        return os.path.join("runs", run_name(name))
    except argparse.ArgumentTypeError as error:
        raise Fail(f"--name {error}") from None


def checkpoint_path(name):
    return os.path.join(run_folder(name), "checkpoint.pt")


@contextlib.contextmanager
def lock(folder, doing="trained"):
    """Hold ``folder/train.lock`` (an flock, released by the kernel however the process ends, so
    it never goes stale) while one process works on the run: another one gets ``Fail`` naming
    the holder. A folder this call made and nothing but the lock wrote into is removed again."""
    import fcntl  # POSIX only; imported here so that the rest of this file works elsewhere
    created, path = not os.path.isdir(folder), os.path.join(folder, "train.lock")
    try:
        os.makedirs(folder, exist_ok=True)
        handle = open(path, "a+")
    except OSError as error:  # a read-only disk, a file where the folder should be
        raise Fail(f"cannot write into {folder}: {error.strerror}") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "used by another process"
            raise Fail(f"{folder} is being {holder}; wait for it to finish (or stop it), or "
                       f"pick another --name") from None
        handle.truncate(0)
        handle.write(f"{doing} by process {os.getpid()} on {os.uname().nodename}")
        handle.flush()
        try:
            yield
        finally:
            if created and os.listdir(folder) == ["train.lock"]:
                os.remove(path)
                os.rmdir(folder)
            fcntl.flock(handle, fcntl.LOCK_UN)


def writable(folder):
    """Make ``folder`` when missing and check that a file can be written into it, before any
    long work; ``Fail`` in one line if not (a read-only disk, a file where the folder should be)."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise Fail(f"cannot write into {folder}: {error.strerror}") from None


class Log:
    """Lines printed and appended to ``path``, on rank 0 only; the file is opened at the first
    line, so a run refused before it says anything leaves no log behind."""

    def __init__(self, path, rank=0):
        self.path, self.rank, self.file = path, rank, None

    def __call__(self, message):
        if self.rank != 0:
            return
        print(message, flush=True)
        if self.file is None:
            try:
                os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
                self.file = open(self.path, "a", buffering=1)  # line-buffered: flushed per line
            except OSError as error:
                raise Fail(f"cannot write {self.path}: {error.strerror}") from None
        self.file.write(message + "\n")

    def close(self):
        if self.file is not None:
            self.file.close()


UMASK = os.umask(0o022)  # reading the process's umask means setting it: set it back at once
os.umask(UMASK)


def write_atomic(path, content):
    """Write ``content`` (str or bytes) to ``path`` whole or not at all: into a temporary file in
    the same folder, fsynced, renamed over ``path``, the folder entry synced; readable as any file
    the process creates (the umask's mode, not mkstemp's owner-only 0600). On failure ``path``
    keeps its previous content and ``Fail`` names the file and the reason ("No space left on
    device"). The next write of the same file removes temporary files a killed process left."""
    folder = os.path.dirname(path) or "."
    temporary = None
    try:
        os.makedirs(folder, exist_ok=True)
        for stale in glob.glob(glob.escape(path) + ".*.tmp"):
            os.remove(stale)
        descriptor, temporary = tempfile.mkstemp(prefix=os.path.basename(path) + ".",
                                                 suffix=".tmp", dir=folder)
        with os.fdopen(descriptor, "wb") as handle:
            os.fchmod(handle.fileno(), 0o666 & ~UMASK)
            handle.write(content.encode() if isinstance(content, str) else content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        temporary = None
        directory = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as error:
        raise Fail(f"cannot write {path}: {error.strerror or first_line(error)}") from None
    finally:
        if temporary is not None and os.path.exists(temporary):
            os.remove(temporary)


def write_json(path, content):
    write_atomic(path, json.dumps(content, indent=1))


def save_checkpoint(path, state):
    """``torch.save(state)`` through ``write_atomic``: serialized in memory first, so that a full
    disk is an OSError naming its cause rather than torch's "unexpected pos"."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(path, buffer.getvalue())


def load_checkpoint(path, required=("model",), what="a checkpoint written by train.py"):
    """The dict at ``path``, read with ``weights_only=True`` on the CPU (nothing in the file is
    run). ``Fail`` in one line for a missing, truncated, foreign or diverged file, or one that lacks
    a key of ``required``."""
    if not os.path.exists(path):
        raise Fail(f"no file at {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise Fail(f"{path} holds objects other than tensors, numbers, strings and containers, "
                   f"so it is not {what} (nothing in it was run)") from None
    except Exception as error:  # truncated or not a torch file
        raise Fail(f"cannot read {path} ({first_line(error)[:200]}): it is not {what}") from None
    if not isinstance(loaded, dict) or not set(required) <= set(loaded):
        raise Fail(f"{path} is not {what}")
    if broken := not_finite(loaded.get("model") or loaded.get("state_dict") or {}):
        raise Fail(f"{path} holds weights that are not finite ({broken}): the training that "
                   f"wrote it diverged; train again with a lower --baselr")
    return loaded


def load_weights(net, state_dict, path):
    """``net.load_state_dict(state_dict)``; ``Fail`` in one line when the file at ``path`` holds
    another network's weights."""
    try:
        net.load_state_dict(state_dict)
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:240]
        raise Fail(f"{path} holds the weights of another network ({detail}...)") from None


def not_finite(state_dict):
    """The names of the floating-point tensors of ``state_dict`` that hold a NaN or an infinity
    (at most three, then a count), or "" when all are finite."""
    names = [name for name, value in state_dict.items() if torch.is_tensor(value)
             and value.is_floating_point() and not bool(torch.isfinite(value).all())]
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def resume(path, args, required, free):
    """The checkpoint at ``path`` that continues the run ``args`` describe, or None for a new
    run (no checkpoint, or ``args.restart``). ``Fail`` in one line when ``args.resume`` finds
    none, or the file holds another run: it lacks a key of ``required``, or a flag recorded in
    its ``"args"`` other than the ``free`` ones differs (named, old and new values)."""
    if args.restart or not os.path.exists(path):
        if args.resume and not args.restart:
            raise Fail(f"--resume: no checkpoint at {path}")
        return None
    other = "pick another --name, or --restart to overwrite it"
    try:
        checkpoint = load_checkpoint(path, required)
    except Fail as error:
        raise Fail(f"{error}; {other}") from None
    recorded = checkpoint["args"]
    changed = [f"--{key} {recorded[key]!r} -> {value!r}" for key, value in
               sorted(vars(args).items()) if key in recorded and key not in free
               and recorded[key] != value]
    if changed:
        raise Fail(f"{path} was trained with other settings ({'; '.join(changed)}): rerun with "
                   f"its settings to continue it, or {other}")
    return checkpoint


def plain(value):
    """``value`` with NumPy arrays made tensors and NumPy scalars Python numbers, through dicts,
    lists and tuples: what ``load_checkpoint`` reads back."""
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(item) for item in value)
    if type(value).__module__ == "numpy":
        return torch.from_numpy(value.copy()) if getattr(value, "shape", ()) else value.item()
    return value


def rng_states():
    """Every random stream a training step draws from: torch's, Python's and NumPy's."""
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": plain(np.random.get_state())}


def set_rng_states(states):
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])  # NumPy reads its key array from the tensor


# ---------------------------------------------------------------------------------------------
# The process: devices, ranks, threads, signals


def start(device_flag="auto", threads=0, set_threads=True):
    """``(device, rank, world size)`` from torchrun's environment (one process without it): the
    process group (NCCL on CUDA, gloo on the CPU) whenever torchrun started the process, even as
    its only one, so that one process runs what many do; the CUDA device of this local rank, the
    torch thread count (``threads``, or 0 for the usable cores shared out; ``set_threads=False``
    keeps the caller's when alone) and glibc's memory reuse (``keep_freed_memory``)."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = device_flag.startswith("cuda") or (device_flag == "auto" and
                                                   torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise Fail("--device cuda asked for, but no CUDA device is available")
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if "WORLD_SIZE" in os.environ and not dist.is_initialized():  # set by torchrun
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    keep_freed_memory()
    if set_threads or threads or world_size > 1:
        torch.set_num_threads(threads or default_threads(world_size))
    return device, rank, world_size


def usable_cpus():
    """CPUs this process may run on: its affinity mask (``taskset``, a container's or a batch
    scheduler's cpuset), not ``os.cpu_count()``, which counts every CPU of the machine."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_threads(world_size):
    """torch CPU threads for one of this machine's processes: the usable CPUs shared out over
    ``LOCAL_WORLD_SIZE`` processes (torchrun; ``world_size`` without it)."""
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    return max(1, usable_cpus() // local_size)


def keep_freed_memory(trim_bytes=1 << 30):
    """Ask glibc's malloc to keep freed memory for reuse instead of handing it back to the OS.

    By default glibc serves every block over 32 MiB with a fresh ``mmap`` and unmaps it on free,
    so a training step's activations (and a sliced weight's full-size gradient buffer) cost page
    faults again every step. Measured on a 2-core CPU (``python bench.py overhead``): a training
    step of MobileNetV3-Large at 112x112, batch 64, went from 830-1010 ms to 615-660 ms, for 6-12%
    more peak memory. Returns True when applied; False (nothing changed) without glibc, or when
    the user set ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_MMAP_MAX_``.
    """
    user_set = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_MMAP_MAX_")
    if any(name in os.environ for name in user_set):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl without mallopt)
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's <malloc.h>
    # M_MMAP_MAX = 0: big blocks come from the heap too, so they are reused, not unmapped
    return bool(mallopt(m_trim_threshold, trim_bytes)) and bool(mallopt(m_mmap_max, 0))


def broadcast(value):
    """Rank 0's ``value`` (any picklable object) on every rank; ``value`` itself alone."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_dict(mine):
    """Every rank's ``{key: value}`` dict merged, on every rank."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return mine
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return {key: value for part in everyone for key, value in part.items()}


def check_ranks_agree(net, digest, log):
    """Every rank must end with the same weights of ``net``, having seen the same ``digest``
    (a float fingerprint of what it trained): RuntimeError (a bug) if not."""
    weights = sum(p.detach().double().sum() + p.detach().double().abs().sum()
                  for p in net.parameters()).item()
    everyone = list(gather_dict({dist.get_rank(): (weights, digest)}).values())
    if not all(math.isclose(a, b, rel_tol=1e-9) for pair in everyone
               for a, b in zip(pair, everyone[0])):
        raise RuntimeError(f"ranks diverged: {everyone}")
    log(f"all {len(everyone)} ranks hold identical weights and trained the same configurations")


class ThreadTuner:
    """The torch thread count that trains fastest now, for ``--threads 0`` on the CPU.

    OpenMP's threads spin while they wait at a barrier: fastest on idle cores, but when another
    process takes one of the CPUs every barrier waits for its time slice (measured on 2 CPUs:
    2 threads 142 images/s quiet and 34 beside one busy process, 1 thread 83 and 72). So after
    ``first`` steps, then every ``period`` steps, the next ``probe`` steps run with one thread
    fewer or one more (in turn, within 1..``most``), and the count whose steps did more
    multiply-accumulates per second (the median step: the sampled widths change the work of a
    step) is kept if it is ``margin`` faster. Thread counts change float summation order, so a
    run with ``--threads 0`` is exactly reproducible only on an equally loaded machine."""

    def __init__(self, most, period=100, probe=4, margin=1.1, first=None):
        self.most, self.period, self.probe, self.margin = most, period, probe, margin
        self.first = period if first is None else first
        self.threads, self.trying, self.direction = most, None, -1
        self.recent, self.trial, self.steps = [], [], 0

    def record(self, seconds, macs):
        """After a step of ``seconds`` that trained ``macs`` multiply-accumulates per image:
        returns a message when the thread count changed, else None."""
        rate = macs / max(seconds, 1e-9)
        self.steps += 1
        if self.trying is None:
            self.recent = (self.recent + [rate])[-self.probe:]
            if self.steps >= self.first and (self.steps - self.first) % self.period == 0 \
                    and self.most > 1:
                if not 1 <= self.threads + self.direction <= self.most:
                    self.direction = -self.direction
                self.trying, self.trial = self.threads + self.direction, []
                torch.set_num_threads(self.trying)
            return None
        self.trial.append(rate)
        if len(self.trial) < self.probe:
            return None
        before, after = statistics.median(self.recent), statistics.median(self.trial)
        tried, self.trying = self.trying, None
        if after > self.margin * before:
            message = (f"threads {self.threads} -> {tried}: {100 * (after / before - 1):.0f}% "
                       f"faster (other processes are using the CPUs, or have stopped)")
            self.threads, self.recent = tried, self.trial
            return message
        torch.set_num_threads(self.threads)
        self.direction = -self.direction
        return None


@contextlib.contextmanager
def stop_requests():
    """Ctrl-C (SIGINT) and SIGTERM, deferred to the end of the current training step. Yields
    ``requested()``, the signal number to stop for or 0, the same on every rank (all-reduced: a
    signal may reach one process only); the loop asks it after each step, so the checkpoint then
    saved holds whole steps and the RNG state before the next batch (a resumed run is exact).
    A second signal raises KeyboardInterrupt at once. The previous handlers come back on exit."""
    received = []

    def handle(signum, frame):
        if received:
            raise KeyboardInterrupt
        received.append(signum)

    def requested():
        if not dist.is_initialized():
            return received[0] if received else 0
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"  # NCCL reduces CUDA tensors
        flag = torch.tensor(received[:1] or [0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
