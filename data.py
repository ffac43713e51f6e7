"""Datasets, transforms, the held-out split and the ImageNet LMDB converter for slimnets.

A width search needs three disjoint splits: `train` trains the slimmable supernet, `val` scores
candidate widths and `test` is only reported. AutoSlim (§3.1) searched on ImageNet's validation
set, the very set it reports, so its search was fitted to the reported figure; `val` here is a
fixed, seeded part held out OF THE TRAINING SET instead. `get_loaders` returns all three.

Datasets (`--dataset`, any case; nothing is downloaded):
  synthetic  the default, made in memory from --data_seed in seconds: 32x32 RGB, 10 classes.
  CIFAR10, CIFAR100  the python-pickle folder cifar-10-batches-py or cifar-100-python, as
             --datapath or inside it, read by an unpickler that admits nothing but arrays.
  MNIST, FashionMNIST  the four IDX files (raw or .gz) in --datapath or --datapath/NAME/raw.
  ImageNet   train.lmdb and val.lmdb (the test split) in --datapath, made by `to-lmdb`.

LMDB layout (`python data.py to-lmdb SRC DST.lmdb`; SRC's sorted class folders give labels
0..C-1): key b"%08d" % i holds record i, an 8-byte header (label, CRC-32 of the image bytes;
little-endian uint32s) then the image file's bytes still ENCODED, so the database is as small as
the JPEGs and the loader workers decode. b"__classes__" holds the class names (JSON); b"__len__",
the record count (ASCII digits), is written last: a database without it is incomplete.

Examples:
    python data.py info                                  # synthetic split sizes
    python data.py info --dataset cifar100 --datapath ./data
    python data.py to-lmdb ~/imagenet/train ./data/train.lmdb    # and ~/imagenet/val
    python data.py check --dataset ImageNet --datapath ./data   # decodes every record

    import argparse, data
    args = data.add_data_args(argparse.ArgumentParser()).parse_args([])
    images, labels = next(iter(data.get_loaders(args, batch_size=128).train))
    # images (128, 3, 32, 32) float32, labels (128,) int64
"""
import argparse
import io
import itertools
import json
import math
import os
import pickle
import shutil
import struct
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, Optional

try:
    import lmdb
except ImportError:  # only ImageNet's LMDB files need it; bench.py runs where it is missing
    lmdb = None
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

DATASETS = ("synthetic", "CIFAR10", "CIFAR100", "FashionMNIST", "MNIST", "ImageNet")
DEFAULT_VAL_SIZE = {"synthetic": 1000, "CIFAR10": 5000, "CIFAR100": 5000, "FashionMNIST": 5000,
                    "MNIST": 5000, "ImageNet": 10000}
HELD_OUT_SEED = 1995  # the seed AutoSlim used to pick its held-out ImageNet training images

CIFAR_MEAN_STD = {"CIFAR10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
                  "CIFAR100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
IMAGENET_SIZE = 224  # the papers' training crop and test centre crop (--image_size), pixels
# AlexNet's PCA of ImageNet RGB pixels (Krizhevsky et al. 2012, §4.1), as used by US-Nets.
PCA_EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
PCA_EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009],
                           [-0.5808, -0.0045, -0.8140],
                           [-0.5836, -0.6948, 0.4203]])

RECORD_HEADER = struct.Struct("<II")  # label, CRC-32 of the encoded image bytes
LEN_KEY, CLASSES_KEY = b"__len__", b"__classes__"


class DataError(Exception):
    """A data problem the user can fix; str(error) is the one line to show them."""

    def __init__(self, message):
        # A DataLoader worker's error comes back as DataError("Caught DataError in DataLoader
        # worker ...\n<traceback>"): keep the line our code raised, so it stays one line.
        if message.startswith("Caught DataError"):
            lines = [line for line in message.splitlines() if "DataError: " in line]
            message = lines[-1].split("DataError: ", 1)[1] if lines else message
        super().__init__(message)


def _first_line(error):
    return (str(error).splitlines() or [type(error).__name__])[0]


def _number(kind, low, high=math.inf, low_open=False):
    """An argparse ``type=``: a finite ``kind`` (int or float) >= ``low`` (> it when
    ``low_open``) and <= ``high``; anything else ends in argparse's one-line error."""
    def parse(text):
        try:
            value = kind(text)
            if math.isfinite(value) and (low < value if low_open else low <= value) and value <= high:
                return value
        except (ValueError, OverflowError):  # not a number, or an integer beyond any float
            pass
        bounds = f"{'>' if low_open else '>='} {low}" + \
            (f" and <= {high}" if high < math.inf else "")
        what = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is invalid: it must be {what} {bounds}")
    return parse


def _checked(where, images, labels, num_classes, hint=""):
    """``(images, labels)``, once their counts agree and every label is in 0..num_classes-1;
    else ``DataError`` naming ``where``, then ``hint`` (what to do)."""
    if len(images) != len(labels):
        raise DataError(f"{where} holds {len(images)} images but {len(labels)} labels{hint}")
    if labels.size and not 0 <= labels.min() <= labels.max() < num_classes:
        raise DataError(f"{where} holds labels outside 0..{num_classes - 1}{hint}")
    return images, labels


# ----------------------------------------------------------------------------- synthetic

def make_synthetic_images(num_images, num_classes=10, seed=0, split=0, modes_per_class=2,
                          patch_size=16, image_size=32, color_jitter=0.2):
    """Return (uint8 images (N, 3, 32, 32), int64 labels (N,)), a pure function of its args.

    The seed draws two prototype textures per class, each a 16x16 ellipse holding the mean of two
    cosine gratings (random orientation, frequency, phase) in its own colour. An image is a smooth
    random colour field plus pixel noise, with one prototype of its class pasted at a random place
    in a jittered colour. Telling the textures apart anywhere takes many oriented, colour-aware
    filters, so wider networks score better; the patches are large enough that training leaves
    chance within a few dozen steps even under the sandwich rule (12x12 ones sat at chance for 200
    steps). `split` picks an independent stream of images (0 for train, 1 for test) of the same
    prototypes, so the splits never share an image; classes are exactly balanced.
    """
    world = np.random.default_rng([seed, 0])  # each prototype: two gratings in an ellipse
    shape = (num_classes * modes_per_class, 2, 1, 1)  # (prototype, grating, y, x)
    yy, xx = np.mgrid[0:patch_size, 0:patch_size].astype(np.float32) - (patch_size - 1) / 2
    theta = world.uniform(0, np.pi, shape)
    frequency = world.uniform(0.3, 1.4, shape)  # radians per pixel: 4 to 20 px periods
    phase = world.uniform(0, 2 * np.pi, shape)
    pattern = np.cos(frequency * (np.cos(theta) * xx + np.sin(theta) * yy) + phase).mean(1)
    radius_y, radius_x = world.uniform(0.35, 0.5, (2, shape[0], 1, 1)) * patch_size
    inside = (yy / radius_y) ** 2 + (xx / radius_x) ** 2 <= 1
    textures = (pattern * inside).astype(np.float32)  # in [-1, 1], 0 outside the ellipse
    colours = world.uniform(-1, 1, (shape[0], 3)).astype(np.float32)

    rng = np.random.default_rng([seed, 1 + split])
    labels = np.arange(num_images) % num_classes  # exactly balanced, then shuffled
    rng.shuffle(labels)
    prototype = labels * modes_per_class + rng.integers(0, modes_per_class, num_images)
    coarse = torch.from_numpy(rng.standard_normal((num_images, 3, 5, 5), dtype=np.float32) * 0.5)
    images = F.interpolate(coarse, size=image_size, mode="bilinear", align_corners=True).numpy()
    images += rng.standard_normal(images.shape, dtype=np.float32) * 0.15
    top, left = rng.integers(0, image_size - patch_size + 1, (2, num_images))
    colour = colours[prototype] + rng.standard_normal((num_images, 3), dtype=np.float32) * color_jitter
    for i, k in enumerate(prototype):  # paste the prototype: overwrite the pixels of its ellipse
        region = images[i, :, top[i]:top[i] + patch_size, left[i]:left[i] + patch_size]
        np.copyto(region, colour[i][:, None, None] * textures[k], where=inside[k])
    images = np.clip(images * 64 + 128, 0, 255, out=images)
    return images.astype(np.uint8), labels.astype(np.int64)


# ----------------------------------------------------------------------------- CIFAR

# Every global a CIFAR batch (a dict of a NumPy array and lists) may name: NumPy's array
# rebuilders under NumPy 1 and 2 module names, pickle protocols 2 to 5, and the codec through
# which protocol-2 pickles written by Python 3 store bytes.
CIFAR_PICKLE_GLOBALS = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")} | {
    (f"numpy.{core}.{module}", name) for core in ("core", "_core") for module, name in
    (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))}


class _CifarUnpickler(pickle.Unpickler):
    """Refuses every global outside CIFAR_PICKLE_GLOBALS before importing it: a pickle calls
    the globals it names (a crafted file's ``__reduce__`` names os.system)."""

    def find_class(self, module, name):
        if (module, name) not in CIFAR_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}, which no CIFAR file "
                                         f"holds and which could run code")
        return super().find_class(module, name)


def read_cifar(datapath, name):
    """(train images, train labels, test images, test labels) of CIFAR10 or CIFAR100 in or
    under `datapath`: uint8 (N, 3, 32, 32) RGB planes and int64 (N,)."""
    folder_name, train_files, test_file, label_key, num_classes = {
        "CIFAR10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
                    "test_batch", "labels", 10),
        "CIFAR100": ("cifar-100-python", ["train"], "test", "fine_labels", 100)}[name]
    folder = datapath if os.path.exists(os.path.join(datapath, test_file)) else \
        os.path.join(datapath, folder_name)  # --datapath may be the parent folder
    if not os.path.isdir(folder):
        raise DataError(f"no {name} at {datapath}: expected the python-pickle folder "
                        f"{folder_name}/ (from cs.toronto.edu/~kriz) there or as --datapath")

    def read(file):
        path = os.path.join(folder, file)
        try:
            with open(path, "rb") as f:
                entry = _CifarUnpickler(f, encoding="bytes").load()  # Python 2 pickles
            entry = {key.decode() if isinstance(key, bytes) else key: v for key, v in entry.items()}
            images = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            labels = np.asarray(entry[label_key], dtype=np.int64)
        except FileNotFoundError:
            raise DataError(f"missing {path}") from None
        except Exception as error:  # refused, truncated, not a pickle, wrong keys or shapes
            raise DataError(f"{path} is not a CIFAR python-pickle file with 'data' and "
                            f"'{label_key}' ({type(error).__name__}: {_first_line(error)})") from None
        return _checked(path, images, labels, num_classes)

    train = [read(file) for file in train_files]
    return (np.concatenate([images for images, _ in train]),
            np.concatenate([labels for _, labels in train]), *read(test_file))


# ----------------------------------------------------------------------------- in memory

class InMemoryImages(Dataset):
    """uint8 images (N, C, H, W) in memory, returned normalised per channel (C = len(mean));
    `augment` adds RandomCrop(H, padding) [+ RandomHorizontalFlip when `flip`], done by slicing
    uint8 tensors (the same distribution as torchvision's PIL transforms, without a PIL round
    trip per image). CIFAR: padding 4 and flips; Fashion-MNIST: padding 2 and flips; MNIST:
    padding 2, no flips (a mirrored digit is another symbol or none)."""

    def __init__(self, images, labels, mean, std, augment, padding=4, flip=True):
        self.images = torch.as_tensor(images)
        self.labels = torch.as_tensor(labels)
        self.mean_255 = torch.tensor(mean).view(-1, 1, 1) * 255  # ToTensor's /255 folded in
        self.std_255 = torch.tensor(std).view(-1, 1, 1) * 255
        self.augment, self.padding, self.flip = augment, padding, flip

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        image = self.images[index]
        if self.augment:
            size, pad = image.shape[-1], self.padding
            top, left = torch.randint(0, 2 * pad + 1, (2,)).tolist()  # torch RNG: seeded per worker
            image = F.pad(image, (pad, pad, pad, pad))[:, top:top + size, left:left + size]
            if self.flip and torch.rand(()) < 0.5:
                image = image.flip(-1)
        return (image.float() - self.mean_255) / self.std_255, int(self.labels[index])


class DeviceBatches:
    """The training batches of an `InMemoryImages` set, drawn and augmented where the set lives:
    the whole set on `device` as uint8, zero-padded once (on a GPU no loader workers set the
    pace; 60,000 28x28 images padded by 2 take 61 MB), each batch cropped, flipped and normalised
    in one gather: the same distribution as `InMemoryImages.__getitem__`, drawn in another order.

    An epoch is a function of (seed, epoch) alone: a CPU `torch.Generator` seeded with
    ``seed * 1_000_003 + epoch`` draws `randperm(N)`, then for each of the ``total =
    ceil(N / world_size) * world_size`` positions of that order (padded by repeating its start,
    as DistributedSampler pads) the crop's top, then its left offset in 0..2*padding, then a
    uniform number whose value < 0.5 flips the image. Rank r takes positions r, r + world_size,
    ... and cuts them into batches of `batch_size` (the last partial one dropped). The draws move
    to `device` once per epoch, so every device gives the same batches, and a resumed run skips
    batches without drawing them.

        batches = DeviceBatches(train_set, 128, torch.device("cuda"))
        for inputs, labels in batches.batches(seed=0, epoch=0):
            ...  # inputs (128, C, H, W) float32 normalised, labels (128,) int64, on the GPU
    """

    def __init__(self, dataset, batch_size, device, rank=0, world_size=1):
        self.augment, self.padding, self.flip = dataset.augment, dataset.padding, dataset.flip
        self.images = F.pad(dataset.images.to(device), (self.padding if self.augment else 0,) * 4)
        self.labels = dataset.labels.to(device)
        self.mean_255, self.std_255 = dataset.mean_255.to(device), dataset.std_255.to(device)
        self.steps = torch.arange(dataset.images.shape[-1], device=device)  # a crop's rows, columns
        self.channels = torch.arange(dataset.images.shape[1], device=device)[:, None, None]
        self.batch_size, self.device, self.rank, self.world_size = \
            batch_size, device, rank, world_size
        self.per_rank = math.ceil(len(self.images) / world_size)

    def __len__(self):
        """Batches per epoch, as many as a DataLoader over a DistributedSampler with drop_last."""
        return self.per_rank // self.batch_size

    def batches(self, seed, epoch, skip=0):
        """Yield the epoch's batches from the `skip`-th on: (inputs (B, C, H, W) float32
        normalised, labels (B,) int64), both on the device."""
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        total, count = self.per_rank * self.world_size, len(self.images)
        order = torch.randperm(count, generator=generator).repeat(math.ceil(total / count))[:total]
        tops, lefts = torch.randint(0, 2 * self.padding + 1, (2, total), generator=generator)
        flips = (torch.rand(total, generator=generator) < 0.5) & self.flip
        shard = slice(self.rank, total, self.world_size)
        plan = [values[shard].to(self.device) for values in (order, tops, lefts, flips)]
        for start in range(skip * self.batch_size, len(self) * self.batch_size, self.batch_size):
            index, top, left, flip = (values[start:start + self.batch_size] for values in plan)
            if self.augment:  # crop at (top, left) of the padded images, mirror where flip
                rows = top[:, None] + self.steps  # (B, H)
                columns = left[:, None] + torch.where(flip[:, None], self.steps.flip(0), self.steps)
                images = self.images[index[:, None, None, None], self.channels,
                                     rows[:, None, :, None], columns[:, None, None, :]]
            else:
                images = self.images[index]
            yield (images.float() - self.mean_255) / self.std_255, self.labels[index]


# ----------------------------------------------------------------------------- MNIST format

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
# Where Debian's packages put the files (apt-get install dataset-fashion-mnist); MNIST has none.
IDX_SYSTEM_FOLDERS = {"FashionMNIST": "/usr/share/datasets/fashion-mnist"}
IDX_SOURCES = {"FashionMNIST": "apt-get install dataset-fashion-mnist puts them in "
                               + IDX_SYSTEM_FOLDERS["FashionMNIST"],
               "MNIST": "torchvision.datasets.MNIST(ROOT, download=True) puts them in ROOT/MNIST/raw"}
# Mean and std of the 60,000 training images' pixels in [0, 1] (computed from the files).
IDX_MEAN_STD = {"FashionMNIST": ((0.2860,), (0.3530,)), "MNIST": ((0.1307,), (0.3081,))}


def idx_folder(datapath, name):
    """The folder holding `name`'s four IDX files: `datapath` itself or torchvision's layout
    `datapath/NAME/raw`; None for `datapath` means Debian's folder when it exists, else ./data."""
    if datapath is None:
        system = IDX_SYSTEM_FOLDERS.get(name)
        datapath = system if system and os.path.isdir(system) else "./data"
    nested = os.path.join(datapath, name, "raw")
    has_files = lambda folder: any(os.path.exists(os.path.join(folder, f)) or
                                   os.path.exists(os.path.join(folder, f + ".gz"))
                                   for f in IDX_FILES)
    return nested if not has_files(datapath) and has_files(nested) else datapath


def read_idx(datapath, name):
    """(train images (60000, 1, 28, 28) uint8, train labels int64, test images, test labels) of
    MNIST or FashionMNIST: the four IDX files, each raw or gzipped, read by torchvision's IDX
    reader (a .gz unpacked to a scratch folder first, as torchvision's download does)."""
    from torchvision.datasets import mnist, utils  # seconds to import; only these sets need it
    folder = idx_folder(datapath, name)
    expected = f"expected {', '.join(IDX_FILES)} (each raw or .gz) in {folder}; {IDX_SOURCES[name]}"
    arrays = []
    with tempfile.TemporaryDirectory(prefix="slimnets-idx-") as scratch:
        for file in IDX_FILES:
            path = os.path.join(folder, file)
            path = path if os.path.exists(path) else path + ".gz"
            if not os.path.exists(path):
                raise DataError(f"no {name} at {folder}: missing {file}; {expected}")
            kind = "image" if "images" in file else "label"
            try:
                readable = utils.extract_archive(path, scratch) if path.endswith(".gz") else path
                arrays.append(getattr(mnist, f"read_{kind}_file")(readable).numpy())
            except Exception as error:  # truncated gzip, wrong magic number, wrong dimensions
                raise DataError(f"{path} is not an IDX {kind} file ({type(error).__name__}); "
                                f"{expected}") from None
    return (*_checked(f"{folder}: train", arrays[0][:, None], arrays[1], 10, f"; {expected}"),
            *_checked(f"{folder}: t10k", arrays[2][:, None], arrays[3], 10, f"; {expected}"))


# ----------------------------------------------------------------------------- ImageNet

class PCALighting:
    """AlexNet-style lighting noise (torchvision has none): add sum_j eigvec[:, j] * alpha_j *
    eigval_j to every pixel of a [0, 1] tensor, alpha_j ~ N(0, alphastd). After ToTensor."""

    def __init__(self, alphastd=0.1):
        self.alphastd = alphastd

    def __call__(self, image):
        alpha = torch.randn(3) * self.alphastd
        return image + (PCA_EIGVEC * alpha.view(1, 3) * PCA_EIGVAL.view(1, 3)).sum(1).view(3, 1, 1)


def imagenet_transform(train, scale_ratio=0.08, slim_dataaug=False, image_size=224):
    """Train: RandomResizedCrop(image_size, scale=(scale_ratio, 1)) [+ ColorJitter + PCA
    lighting] + flip. Eval: Resize(round(image_size * 256 / 224)) + CenterCrop(image_size), the
    papers' 256 -> 224 ratio. Both end in ImageNet's Normalize; ``image_size`` in pixels."""
    from torchvision import transforms  # imported here: it takes seconds, and only ImageNet needs it
    if not train:
        steps = [transforms.Resize(round(image_size * 256 / 224)), transforms.CenterCrop(image_size),
                 transforms.ToTensor()]
    else:
        jitter, lighting = ([transforms.ColorJitter(0.4, 0.4, 0.4)], [PCALighting(0.1)]) \
            if slim_dataaug else ([], [])
        steps = [transforms.RandomResizedCrop(image_size, scale=(scale_ratio, 1.0)), *jitter,
                 transforms.RandomHorizontalFlip(), transforms.ToTensor(), *lighting]
    return transforms.Compose(steps + [transforms.Normalize(*IMAGENET_MEAN_STD)])


def _require_lmdb():
    if lmdb is None:
        raise DataError("ImageNet LMDB files need the lmdb package: pip install lmdb")


def _open_lmdb(path):
    """A new read-only environment of `path`; lock=False: readers never write (and NFS has no
    locks)."""
    if not os.path.exists(path):
        raise DataError(f"missing {path}: make it with python data.py to-lmdb IMAGE_FOLDER {path}")
    _require_lmdb()
    data_file = os.path.join(path, "data.mdb") if os.path.isdir(path) else path
    try:
        env = lmdb.open(path, subdir=os.path.isdir(path), readonly=True, lock=False,
                        readahead=False, meminit=False)
        # A truncated copy would kill the process with SIGBUS at its first read past the end:
        # the meta page says how far the pages go, so check that before reading any.
        needed, size = (env.info()["last_pgno"] + 1) * env.stat()["psize"], os.path.getsize(data_file)
    except lmdb.Error as error:
        raise DataError(f"{path} is not a readable LMDB database ({_first_line(error)})") from None
    if needed > size:
        env.close()
        raise DataError(f"{path} is truncated: its pages need {needed} bytes, {data_file} holds "
                        f"{size}; copy it again or rebuild it with to-lmdb")
    return env


_ENVIRONMENTS = {}  # database path -> (process id, its read-only environment there)


def _shared_lmdb(path):
    """This process's environment of `path`, opened at its first record read and shared by
    every dataset reading it: py-lmdb refuses to open one database twice in a process, and the
    ImageNet train and val splits both read train.lmdb. A forked DataLoader worker closes the
    copy it inherited (an environment must not cross a fork) and opens its own."""
    pid, env = _ENVIRONMENTS.get(path, (None, None))
    if pid != os.getpid():
        if env is not None:
            env.close()  # the parent's, inherited by fork: unmapped here only
        env = _open_lmdb(path)
        _ENVIRONMENTS[path] = (os.getpid(), env)
    return env


class LMDBImageFolder(Dataset):
    """The images of a `to-lmdb` database, or of its records `indices`, as (transformed image,
    label); `transform=None` gives the decoded RGB PIL image. It opens the database in each
    process at its first read (`_shared_lmdb`), so it crosses into DataLoader workers as a path.
    A record that fails its CRC or does not decode fully is a DataError."""

    def __init__(self, path, transform, indices=None):
        self.path, self.transform = path, transform
        # The header is read through this process's shared environment if it has one, else
        # through one closed after: a process keeps no database open that it reads no record of.
        own = _ENVIRONMENTS.get(path, (None,))[0] != os.getpid()
        env = _open_lmdb(path) if own else _ENVIRONMENTS[path][1]
        try:
            with env.begin() as txn:
                length, classes = txn.get(LEN_KEY), txn.get(CLASSES_KEY)
            if length is None or classes is None:
                raise DataError(f"{path} is incomplete (no __len__ key): its conversion did not "
                                f"finish; delete it and run python data.py to-lmdb again")
            self.classes = json.loads(classes)
            self.indices = range(int(length)) if indices is None else indices
        except (lmdb.Error, ValueError) as error:
            raise DataError(f"{path} is not a to-lmdb database ({_first_line(error)})") from None
        finally:
            if own:
                env.close()

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, index):
        record = self.indices[index]
        env = _shared_lmdb(self.path)
        try:
            with env.begin() as txn:
                value = txn.get(b"%08d" % record) or b""
            label, checksum = RECORD_HEADER.unpack_from(value)  # struct.error if short or missing
            image_bytes = value[RECORD_HEADER.size:]
            if zlib.crc32(image_bytes) != checksum or label >= len(self.classes):
                raise ValueError("checksum or label mismatch")
            image = Image.open(io.BytesIO(image_bytes)).convert("RGB")  # forces the full decode
        except Exception as error:  # lmdb.Error, struct.error, PIL's OSError, SyntaxError, ...
            raise DataError(f"{self.path}: record {record} is missing or corrupt "
                            f"({_first_line(error)}); rebuild the database with to-lmdb") from None
        return (self.transform(image) if self.transform else image), label


# ----------------------------------------------------------------------------- converter

def scan_image_folder(source_dir):
    """(class names, [(file path, label)]) of an ImageFolder tree: one sub-folder per class,
    sorted by name to give labels; the image files in each, found recursively and in sorted
    order, by torchvision's own ImageFolder listing."""
    from torchvision.datasets import folder  # seconds to import; only the converter needs it
    try:
        classes, class_to_idx = folder.find_classes(source_dir)
        samples = folder.make_dataset(source_dir, class_to_idx, folder.IMG_EXTENSIONS,
                                      allow_empty=True)
    except OSError:  # no such folder, or no class sub-folders in it
        samples = []
    if not samples:
        raise DataError(f"no images ({', '.join(folder.IMG_EXTENSIONS)}) in class sub-folders "
                        f"of {source_dir}")
    return classes, samples


def _encode_record(path, label):
    try:
        with open(path, "rb") as f:
            image_bytes = f.read()
        with Image.open(io.BytesIO(image_bytes)):  # reads the header only: cheap
            pass
    except Exception as error:
        raise DataError(f"{path} is not a readable image ({_first_line(error)}); remove or "
                        f"replace it, then convert again") from None
    return RECORD_HEADER.pack(label, zlib.crc32(image_bytes)) + image_bytes


def _put_all(env, items):
    """Write (key, value) pairs in one transaction, growing the memory map when it is full."""
    while True:
        try:
            with env.begin(write=True) as txn:
                for key, value in items:
                    txn.put(key, value)
            return
        except lmdb.MapFullError:  # the transaction was aborted: double the map and redo it
            env.set_mapsize(env.info()["map_size"] * 2)


def convert_folder_to_lmdb(source_dir, lmdb_path, records_per_commit=1000, log=print):
    """Write every image of an ImageFolder tree into a new LMDB database at `lmdb_path`; returns
    the number of images. Records go to `lmdb_path`.tmp-PID, the class names and record count
    last, and the folder is renamed into place only after all succeeded: an interrupted
    conversion leaves no database at `lmdb_path`."""
    if os.path.exists(lmdb_path):
        raise DataError(f"{lmdb_path} already exists; delete it or choose another destination")
    parent = os.path.dirname(os.path.abspath(lmdb_path))
    if not os.path.isdir(parent):
        raise DataError(f"the folder {parent} does not exist; create it first")
    _require_lmdb()
    classes, samples = scan_image_folder(source_dir)
    log(f"to-lmdb: {len(samples)} images in {len(classes)} classes from {source_dir}")
    temporary_path, start = f"{lmdb_path}.tmp-{os.getpid()}", time.time()
    try:
        env = lmdb.open(temporary_path, subdir=True, map_size=1 << 30, meminit=False)
    except lmdb.Error as error:
        raise DataError(f"cannot create {temporary_path} ({_first_line(error)})") from None
    reader_threads = ThreadPoolExecutor(8)  # overlap the waits of file reads on slow disks
    try:
        for first in range(0, len(samples), records_per_commit):
            chunk = samples[first:first + records_per_commit]
            records = reader_threads.map(_encode_record, *zip(*chunk))
            _put_all(env, [(b"%08d" % record, value) for record, value in enumerate(records, first)])
            done = first + len(chunk)
            log(f"to-lmdb: {done}/{len(samples)} images, {done / (time.time() - start):.0f}/s")
        # The record count is what marks a database complete, so it goes in the last commit.
        _put_all(env, [(CLASSES_KEY, json.dumps(classes).encode()),
                       (LEN_KEY, str(len(samples)).encode())])
        env.close()  # every commit was already synced to disk (lmdb's default)
        os.rename(temporary_path, lmdb_path)
    except BaseException:  # includes Ctrl-C: leave nothing half-written behind
        env.close()
        shutil.rmtree(temporary_path, ignore_errors=True)
        raise
    finally:
        reader_threads.shutdown(cancel_futures=True)
    log(f"to-lmdb: wrote {lmdb_path} in {time.time() - start:.1f} s")
    return len(samples)


# ----------------------------------------------------------------------------- flags

def canonical_dataset_name(name):
    """'cifar100' -> 'CIFAR100'; an unknown name is returned as given (for argparse to refuse)."""
    return {known.lower(): known for known in DATASETS}.get(name.lower(), name)


def add_data_args(parser):
    """Add the data flags shared by train.py, search.py and evaluate.py; returns `parser`."""
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", type=canonical_dataset_name, choices=DATASETS,
                       default="synthetic", help="any case (default synthetic, made in memory)")
    group.add_argument("--datapath", default=None, help="CIFAR: the folder holding (or being) "
                       "cifar-10-batches-py or cifar-100-python; FashionMNIST/MNIST: the folder "
                       "holding the four IDX files (or NAME/raw below it); ImageNet: the folder "
                       "holding train.lmdb and val.lmdb (default ./data; FashionMNIST: "
                       "/usr/share/datasets/fashion-mnist when it exists)")
    group.add_argument("--val_size", type=_number(int, 0), default=None,
                       help="images held out of the training set for width search, 0 for none "
                            "(default: synthetic 1000, ImageNet 10000, others 5000)")
    group.add_argument("--train_size", type=_number(int, 0), default=0,
                       help="train on a fixed random subset of this many of the images left "
                            "after the held-out split (default 0: all of them)")
    group.add_argument("--workers", type=_number(int, 0), default=2,
                       help="DataLoader worker processes per training process (default 2)")
    group.add_argument("--pin_memory", action=argparse.BooleanOptionalAction, default=True,
                       help="page-locked batches for faster GPU copies (default on)")
    group.add_argument("--scale_ratio", type=_number(float, 0, 1, low_open=True), default=0.08,
                       help="ImageNet: smallest area fraction of RandomResizedCrop (default 0.08)")
    group.add_argument("--image_size", type=_number(int, 1), default=IMAGENET_SIZE,
                       help="ImageNet: training crop and test centre crop in pixels, the test "
                            "image first resized to image_size * 256/224; MACs are counted at "
                            "it (default 224, the papers'; smaller: quick studies)")
    group.add_argument("--slim_dataaug", action="store_true",
                       help="ImageNet: add ColorJitter(0.4, 0.4, 0.4) and PCA lighting (0.1)")
    group.add_argument("--synthetic_train", type=_number(int, 1), default=10000,
                       help="synthetic: training images, held-out val included (default 10000)")
    group.add_argument("--synthetic_test", type=_number(int, 1), default=2000,
                       help="synthetic: test images (default 2000)")
    group.add_argument("--synthetic_classes", type=_number(int, 2), default=10,
                       help="synthetic: number of classes (default 10)")
    group.add_argument("--data_seed", type=_number(int, 0, 2**32 - 1), default=0,
                       help="synthetic: seed the whole data set is generated from (default 0)")
    return parser


def data_flag_names():
    """The names (argparse destinations) of the flags `add_data_args` adds."""
    return set(vars(add_data_args(argparse.ArgumentParser(add_help=False)).parse_args([])))


def check_data_args(args):
    """One line naming data flags that are valid alone (argparse's types check that) but not
    together, or None; the scripts call it once after parsing."""
    name = canonical_dataset_name(args.dataset)
    if args.image_size != IMAGENET_SIZE and name != "ImageNet":
        return f"--image_size {args.image_size} applies to ImageNet only: {name} images keep " \
               f"their own size"
    return None


# ----------------------------------------------------------------------------- splits, loaders

def held_out_count(dataset, val_size):
    """The images ``--dataset``'s ``--val_size`` holds out of the training set (None: the
    dataset's default). A smaller count holds out a subset of a larger one's images."""
    return DEFAULT_VAL_SIZE[canonical_dataset_name(dataset)] if val_size is None else val_size


# The data flags that decide which images a run trained on (--datapath only says where they are)
HELD_OUT_FLAGS = ("dataset", "data_seed", "synthetic_train", "synthetic_classes")


def held_out_problem(args, recorded, who):
    """One line when the data flags ``args`` would not hold out only images that ``who`` (e.g.
    "run demo"), trained with the data flags ``recorded`` (a dict), never trained on: one of
    ``HELD_OUT_FLAGS`` differs (other images), or ``--val_size`` is larger (the held-out split is
    the first val_size of a fixed permutation, so a larger one reaches into the trained images);
    else None."""
    for key in HELD_OUT_FLAGS:
        if key in recorded and getattr(args, key) != recorded[key]:
            return (f"{who} was trained with --{key} {recorded[key]}, not {getattr(args, key)}: "
                    f"leave --{key} out or give its value")
    held_out = held_out_count(args.dataset, recorded.get("val_size"))
    if held_out_count(args.dataset, args.val_size) > held_out:
        return (f"{who} held out {held_out} of its training images: a larger --val_size would "
                f"hold images it trained on; give at most {held_out}")
    return None


def held_out_split(num_train, val_size, train_size=0, seed=HELD_OUT_SEED):
    """(train indices, val indices), each sorted: a fixed random `val_size` of range(num_train)
    held out, and of the rest a fixed random `train_size` trained on (0: all of them)."""
    if not 0 <= val_size < num_train:
        raise DataError(f"--val_size {val_size} must be in 0..{num_train - 1} (training images)")
    permutation = np.random.default_rng(seed).permutation(num_train)
    train, val = np.sort(permutation[val_size:]), np.sort(permutation[:val_size])
    if train_size > len(train):
        raise DataError(f"--train_size {train_size} must be at most {len(train)} (the training "
                        f"images left after the held-out split), or 0 for all")
    if train_size:
        train = train[np.sort(np.random.default_rng([seed, 1]).permutation(len(train))[:train_size])]
    return train, val


class Loaders(NamedTuple):
    train: DataLoader            # augmented, shuffled, drop_last
    val: Optional[DataLoader]    # held out of the training set, eval transforms; None if val_size 0
    test: DataLoader             # eval transforms; report only
    num_classes: int
    input_size: int              # 32, 28, or ImageNet's --image_size (224)
    dataset: str                 # canonical name, e.g. "CIFAR100"
    in_channels: int = 3         # 3 (RGB) or 1 (MNIST, FashionMNIST)


def build_datasets(args):
    """(train, val or None, test) Datasets, number of classes, input size, image channels."""
    name = canonical_dataset_name(args.dataset)
    val_size = held_out_count(name, args.val_size)
    if name == "ImageNet":  # --datapath's train.lmdb; its val.lmdb is the test split
        train_path, test_path = (os.path.join(args.datapath or "./data", file)
                                 for file in ("train.lmdb", "val.lmdb"))
        evaluation = imagenet_transform(False, image_size=args.image_size)
        train = LMDBImageFolder(train_path, imagenet_transform(
            True, args.scale_ratio, args.slim_dataaug, args.image_size))
        test = LMDBImageFolder(test_path, evaluation)
        if test.classes != train.classes:
            raise DataError(f"{test_path} and {train_path} list different classes")
        train.indices, val_indices = held_out_split(len(train), val_size, args.train_size)
        val = LMDBImageFolder(train_path, evaluation, val_indices) if val_size else None
        return train, val, test, len(train.classes), args.image_size, 3
    padding, flip = 4, True
    num_classes = {"synthetic": args.synthetic_classes, "CIFAR100": 100}.get(name, 10)
    if name == "synthetic":
        train_images, train_labels = make_synthetic_images(
            args.synthetic_train, num_classes, args.data_seed, split=0)
        test_images, test_labels = make_synthetic_images(
            args.synthetic_test, num_classes, args.data_seed, split=1)
        pixels = torch.from_numpy(train_images).float().div_(255)  # the set's own mean/std
        mean, std = pixels.mean((0, 2, 3)).tolist(), pixels.std((0, 2, 3)).tolist()
    elif name in IDX_MEAN_STD:
        train_images, train_labels, test_images, test_labels = read_idx(args.datapath, name)
        (mean, std), padding, flip = IDX_MEAN_STD[name], 2, name == "FashionMNIST"
    else:
        train_images, train_labels, test_images, test_labels = read_cifar(
            args.datapath or "./data", name)
        mean, std = CIFAR_MEAN_STD[name]
    train_indices, val_indices = held_out_split(len(train_images), val_size, args.train_size)
    train = InMemoryImages(train_images[train_indices], train_labels[train_indices], mean, std,
                           True, padding, flip)
    val = InMemoryImages(train_images[val_indices], train_labels[val_indices], mean, std,
                         False) if val_size else None
    test = InMemoryImages(test_images, test_labels, mean, std, False)
    return train, val, test, num_classes, train_images.shape[-1], train_images.shape[1]


def get_loaders(args, batch_size, eval_batch_size=None):
    """Train/val/test DataLoaders for the flags of `add_data_args`.

    `batch_size` is the GLOBAL batch. Under torch.distributed each process loads
    batch_size // world_size: training through a shuffling DistributedSampler (call
    `set_epoch` every epoch), val and test through the unpadded shard rank::world_size, so
    every image counts exactly once (shards may differ by one image: sum correct counts and
    totals across processes after the loop, do not all-reduce per batch).
    """
    train_set, val_set, test_set, num_classes, input_size, in_channels = build_datasets(args)
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    world_size = torch.distributed.get_world_size() if distributed else 1
    rank = torch.distributed.get_rank() if distributed else 0
    per_process = batch_size // world_size
    per_process_eval = (eval_batch_size or batch_size) // world_size
    if per_process < 1 or per_process_eval < 1:
        raise DataError(f"batch size {batch_size} is smaller than the {world_size} processes")
    # A training set smaller than one batch gives an empty train loader, not an error here: the
    # callers that draw training batches say so (train.py, calibration in evaluate/search), and
    # those that only test (evaluate.py --subnet) need none.
    common = dict(num_workers=args.workers,
                  pin_memory=args.pin_memory and torch.cuda.is_available())
    train_sampler = DistributedSampler(train_set, world_size, rank, shuffle=True) if distributed else None
    # Fresh training workers every epoch: each seeds its augmentation from torch's RNG when the
    # epoch's iterator is made, so an epoch depends on (that RNG state, epoch) alone and a
    # resumed run repeats it. Persistent workers would carry their RNG over from earlier epochs.
    train = DataLoader(train_set, per_process, shuffle=train_sampler is None, sampler=train_sampler,
                       drop_last=True, persistent_workers=False, **common)

    def evaluation_loader(dataset):
        # No randomness, so its workers may persist; its own generator, because every new
        # iterator draws a seed from it, and drawing from torch's global RNG would shift the
        # training augmentation whenever the trainer reads held-out batches.
        shard = range(rank, len(dataset), world_size) if distributed else None
        return DataLoader(dataset, per_process_eval, shuffle=False, sampler=shard,
                          persistent_workers=args.workers > 0, generator=torch.Generator(),
                          **common)

    val = evaluation_loader(val_set) if val_set is not None else None
    return Loaders(train, val, evaluation_loader(test_set), num_classes, input_size,
                   canonical_dataset_name(args.dataset), in_channels)


def set_epoch(loaders, epoch):
    """Reshuffle the distributed training shards for `epoch` (a no-op without distributed)."""
    if isinstance(loaders.train.sampler, DistributedSampler):
        loaders.train.sampler.set_epoch(epoch)


def first_batches(loader, count=None, images=None, seed=None):
    """The first ``count`` batches of ``loader``, or its first ``images`` images, as a list of
    ``(inputs, targets)``: drawn without touching torch's global RNG, which is seeded with
    ``seed`` inside (when given) so that random transforms and workers draw the same each call."""
    batches, seen = [], 0
    if count == 0 or images == 0:
        return batches
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        for inputs, targets in loader:
            if images is not None:
                inputs, targets = inputs[:images - seen], targets[:images - seen]
            batches.append((inputs, targets))
            seen += len(targets)
            if len(batches) == count or (images is not None and seen >= images):
                break
    return batches


# ----------------------------------------------------------------------------- command line

def main(argv=None):
    parser = argparse.ArgumentParser(allow_abbrev=False, description="Inspect slimnets' data "
                                     "sets; convert and check ImageNet LMDB databases.")
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser(
        "to-lmdb", allow_abbrev=False, help="convert an ImageFolder tree to LMDB",
        description="Store every image of SRC_DIR (one sub-folder per class, sorted -> labels "
                    "0..C-1), still encoded, in a new LMDB database DST, which appears only "
                    "once the conversion has succeeded.")
    convert.add_argument("source_dir", metavar="SRC_DIR", help="e.g. ~/imagenet/train")
    convert.add_argument("lmdb_path", metavar="DST", help="e.g. ./data/train.lmdb (must not exist)")
    convert.add_argument("--records_per_commit", type=_number(int, 1), default=1000,
                         help="images written per LMDB transaction (default 1000)")
    info = add_data_args(commands.add_parser("info", allow_abbrev=False,
                                             help="print a data set's split sizes"))
    check = add_data_args(commands.add_parser(
        "check", allow_abbrev=False, help="like info, and decode every ImageNet LMDB record"))
    for command in (parser, convert, info, check):  # a bad flag: one line, exit status 2
        command.error = lambda message: parser.exit(2, f"error: {message}\n")
    args = parser.parse_args(argv)
    try:
        if args.command == "to-lmdb":
            convert_folder_to_lmdb(args.source_dir, args.lmdb_path, args.records_per_commit,
                                   log=lambda line: print(line, flush=True))
        elif args.command == "check" and args.dataset == "ImageNet":
            for name in ("train.lmdb", "val.lmdb"):  # every record, whatever the split flags
                path, start = os.path.join(args.datapath or "./data", name), time.time()
                records = LMDBImageFolder(path, transform=None)  # decoded in --workers processes
                batches = DataLoader(records, batch_size=64, num_workers=args.workers, collate_fn=len)
                for checked in itertools.accumulate(batches):
                    if checked % 12800 == 0:
                        print(f"check: {path}: {checked}/{len(records)} records, "
                              f"{checked / (time.time() - start):.0f}/s", flush=True)
                print(f"check: {path}: all {len(records)} records decode")
        else:
            problem = check_data_args(args)
            if problem:
                parser.error(problem)
            train, val, test, num_classes, input_size, in_channels = build_datasets(args)
            print(f"{args.dataset}: {num_classes} classes, {input_size}x{input_size}x"
                  f"{in_channels} inputs, train {len(train)}, "
                  f"val {0 if val is None else len(val)}, test {len(test)}")
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
