"""Datasets, transforms, splits and the LMDB converter for slimnets.

A width search needs three disjoint splits: `train` trains the slimmable supernet, `val` is held
out FROM THE TRAINING SET and scores candidate widths (AutoSlim §3.1 searched on ImageNet
val, which leaks the test set; we carve a fixed, seeded held-out part instead, as the Joslim
digest recommends), and `test` is only ever reported. `get_loaders` returns all three.

Datasets (`--dataset`, any case):
  synthetic  the default; built in memory from `--data_seed` in a few seconds, so every script
             runs on a laptop CPU with no download. CIFAR-shaped: 32x32 RGB, 10 classes.
  CIFAR10 / CIFAR100  the python-pickle folders (`cifar-10-batches-py`, `cifar-100-python`)
             under `--datapath` (the parent or the folder itself). Nothing is downloaded.
  ImageNet   any ImageFolder tree converted to LMDB: `--datapath` holds train.lmdb and
             val.lmdb (val.lmdb becomes the test split); --image_size crops (224).

How the synthetic set is made, and why width matters on it. A "world" drawn from the seed
holds 10 classes (--synthetic_classes) x 2 modes = 20 prototype textures: each a 16x16 patch
whose elliptical grey pattern averages two cosine gratings of random orientation, frequency and
phase, painted in a mode colour. An image is a smooth random colour field (bilinear 5x5 noise)
plus pixel noise, with one prototype of its class pasted at a random place in a jittered
colour. Position, colour jitter, background and noise are nuisances; telling 20 textures
apart anywhere in the image needs many distinct oriented, colour-aware filters, so capacity
pays off (README, "Results", has the figures measured with the demo). The patches are large
enough that a network leaves the chance plateau within a few dozen steps even under the
sandwich rule, whose students distil from a teacher that starts at chance (with 40 12x12
patches the demo sat at chance for 200 steps). Defaults: --synthetic_train 10000, of which
--val_size 1000 are held out; 2000 test images. Train and test images come from separate
random streams of the same world; classes are exactly balanced.

LMDB layout written by `python data.py to-lmdb SRC DST.lmdb` (ImageFolder: sorted class
folders give label indices). Key b"%08d" % i holds one image: an 8-byte header (label,
CRC-32 of the bytes; little-endian uint32s) then the ENCODED file bytes, so the database is as
small as the JPEGs and decoding happens in the loader workers. b"__classes__" holds the class
names (JSON), and b"__len__" the record count, written last: a database without it is
incomplete. The converter writes DST.tmp-PID and renames it only after success.

Example:
    python data.py info                                  # synthetic split sizes
    python data.py info --dataset cifar100 --datapath ./data
    python data.py to-lmdb ~/imagenet/train ./data/train.lmdb
    python data.py to-lmdb ~/imagenet/val ./data/val.lmdb
    python data.py check --dataset ImageNet --datapath ./data   # decodes every record

    import argparse, data
    parser = argparse.ArgumentParser(); data.add_data_args(parser)
    loaders = data.get_loaders(parser.parse_args([]), batch_size=128)
    images, labels = next(iter(loaders.train))       # (128, 3, 32, 32) float, (128,) int64
"""
import argparse
import io
import json
import math
import os
import pickle
import shutil
import struct
import sys
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

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
RECORD_HEADER = struct.Struct("<II")  # label, CRC-32 of the encoded image bytes
LEN_KEY, CLASSES_KEY = b"__len__", b"__classes__"


class DataError(Exception):
    """A data problem the user can fix; str(error) is the one line to show them."""

    def __init__(self, message):
        # A DataLoader worker's exception comes back as type(e)("Caught DataError in DataLoader
        # worker ...\n<traceback>"); keep our own last line so the user still sees one line.
        self.worker_traceback = None
        if message.startswith("Caught DataError"):
            self.worker_traceback = message
            lines = [line for line in message.splitlines() if "DataError: " in line]
            message = lines[-1].split("DataError: ", 1)[1] if lines else message
        super().__init__(message)


def _first_line(error):
    return (str(error).splitlines() or [type(error).__name__])[0]


# ----------------------------------------------------------------------------- synthetic

def _prototype_textures(rng, count, size):
    """`count` grey textures (count, size, size) in [-1, 1]: two gratings inside an ellipse."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) - (size - 1) / 2
    theta = rng.uniform(0, np.pi, (count, 2, 1, 1))
    frequency = rng.uniform(0.3, 1.4, (count, 2, 1, 1))  # radians per pixel: 4 to 20 px periods
    phase = rng.uniform(0, 2 * np.pi, (count, 2, 1, 1))
    pattern = np.cos(frequency * (np.cos(theta) * xx + np.sin(theta) * yy) + phase).mean(1)
    radius_y, radius_x = (rng.uniform(0.35, 0.5, (2, count, 1, 1)) * size)
    inside = (yy / radius_y) ** 2 + (xx / radius_x) ** 2 <= 1
    return (pattern * inside).astype(np.float32), inside


def make_synthetic_images(num_images, num_classes=10, seed=0, split=0, modes_per_class=2,
                          patch_size=16, image_size=32, color_jitter=0.2):
    """Return (uint8 images (N, 3, 32, 32), int64 labels (N,)), a pure function of its args.

    The prototypes depend on `seed` only; `split` picks an independent stream of images (0 for
    train, 1 for test), so both splits show the same classes but never the same image.
    """
    world = np.random.default_rng([seed, 0])
    num_prototypes = num_classes * modes_per_class
    textures, inside = _prototype_textures(world, num_prototypes, patch_size)
    colours = world.uniform(-1, 1, (num_prototypes, 3)).astype(np.float32)

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

def _read_cifar_file(path, label_key):
    """(uint8 images (N, 3, 32, 32), int64 labels) of one CIFAR python-pickle file."""
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="bytes")  # the CIFAR files are Python 2 pickles
        entry = {key.decode() if isinstance(key, bytes) else key: v for key, v in entry.items()}
        images = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)  # RGB planes
        labels = np.asarray(entry[label_key], dtype=np.int64)
    except FileNotFoundError:
        raise DataError(f"missing {path}") from None
    except Exception as error:  # truncated, not a pickle, wrong keys or shapes
        raise DataError(f"{path} is not a CIFAR python-pickle file with 'data' and "
                        f"'{label_key}' ({type(error).__name__})") from None
    if len(images) != len(labels):
        raise DataError(f"{path} holds {len(images)} images but {len(labels)} labels")
    return images, labels


def read_cifar(datapath, name):
    """(train images, train labels, test images, test labels) of CIFAR10/CIFAR100 under datapath."""
    folder_name, train_files, test_file, label_key, num_classes = {
        "CIFAR10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
                    "test_batch", "labels", 10),
        "CIFAR100": ("cifar-100-python", ["train"], "test", "fine_labels", 100)}[name]
    folder = datapath
    if not os.path.exists(os.path.join(folder, test_file)):
        folder = os.path.join(datapath, folder_name)  # --datapath may be the parent folder
    if not os.path.isdir(folder):
        raise DataError(f"no {name} at {datapath}: expected the python-pickle folder "
                        f"{folder_name}/ (from cs.toronto.edu/~kriz) there or as --datapath")
    parts = [_read_cifar_file(os.path.join(folder, file), label_key) for file in train_files]
    train_images = np.concatenate([images for images, _ in parts])
    train_labels = np.concatenate([labels for _, labels in parts])
    test_images, test_labels = _read_cifar_file(os.path.join(folder, test_file), label_key)
    if any(np.any((labels < 0) | (labels >= num_classes)) for labels in (train_labels, test_labels)):
        raise DataError(f"labels outside 0..{num_classes - 1} in {folder}")
    return train_images, train_labels, test_images, test_labels


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


# ----------------------------------------------------------------------------- MNIST format

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
# Where Debian's packages put the files (apt-get install dataset-fashion-mnist); MNIST has none.
IDX_SYSTEM_FOLDERS = {"FashionMNIST": "/usr/share/datasets/fashion-mnist"}
IDX_SOURCES = {"FashionMNIST": "apt-get install dataset-fashion-mnist puts them in "
                               "/usr/share/datasets/fashion-mnist",
               "MNIST": "torchvision.datasets.MNIST(ROOT, download=True) on a machine with "
                        "internet puts them in ROOT/MNIST/raw"}
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
    MNIST or FashionMNIST: the four standard IDX files, each raw or gzipped (``.gz``), read by
    torchvision's own IDX reader. DataError (one line) when a file is missing or malformed."""
    from torchvision.datasets import mnist, utils  # seconds to import; only these sets need it
    import tempfile
    folder = idx_folder(datapath, name)
    expected = (f"expected {', '.join(IDX_FILES)} (each raw or .gz) in {folder}; "
                f"{IDX_SOURCES[name]}")
    arrays = []
    with tempfile.TemporaryDirectory(prefix="slimnets-idx-") as scratch:
        for file in IDX_FILES:
            path = os.path.join(folder, file)
            if not os.path.exists(path):
                path += ".gz"
            if not os.path.exists(path):
                raise DataError(f"no {name} at {folder}: missing {file}; {expected}")
            try:
                readable = utils.extract_archive(path, scratch) if path.endswith(".gz") else path
                reader = mnist.read_image_file if "images" in file else mnist.read_label_file
                arrays.append(reader(readable).numpy())
            except Exception as error:  # truncated gzip, wrong magic number, wrong dimensions
                raise DataError(f"{path} is not an IDX {'image' if 'images' in file else 'label'}"
                                f" file ({type(error).__name__}); {expected}") from None
    train_images, train_labels, test_images, test_labels = arrays
    for images, labels, file in ((train_images, train_labels, "train"),
                                 (test_images, test_labels, "t10k")):
        if len(images) != len(labels):
            raise DataError(f"{folder}: {file} has {len(images)} images but {len(labels)} "
                            f"labels; {expected}")
        if labels.size and not 0 <= labels.min() <= labels.max() <= 9:
            raise DataError(f"{folder}: {file} labels outside 0..9; {expected}")
    return (train_images[:, None], train_labels.astype(np.int64),
            test_images[:, None], test_labels.astype(np.int64))


# ----------------------------------------------------------------------------- ImageNet

class PCALighting:
    """AlexNet-style lighting noise: add sum_j eigvec[:, j] * alpha_j * eigval_j to every pixel
    of a [0, 1] tensor, alpha_j ~ N(0, alphastd). Applied after ToTensor, before Normalize."""

    def __init__(self, alphastd=0.1):
        self.alphastd = alphastd

    def __call__(self, image):
        alpha = torch.randn(3) * self.alphastd
        rgb_shift = (PCA_EIGVEC * alpha.view(1, 3) * PCA_EIGVAL.view(1, 3)).sum(1)
        return image + rgb_shift.view(3, 1, 1)


def imagenet_transform(train, scale_ratio=0.08, slim_dataaug=False, image_size=224):
    """Train: RandomResizedCrop(image_size, scale=(scale_ratio, 1)) [+ ColorJitter + PCA
    lighting] + flip. Eval: Resize(round(image_size * 256 / 224)) + CenterCrop(image_size), the
    standard 256 -> 224 ratio (224: Resize(256) + CenterCrop(224), as the papers). Both end in
    ImageNet's Normalize. ``image_size`` in pixels (``--image_size``)."""
    from torchvision import transforms  # imported here: it takes seconds, and only ImageNet needs it
    normalize = transforms.Normalize(*IMAGENET_MEAN_STD)
    if not train:
        return transforms.Compose([transforms.Resize(round(image_size * 256 / 224)),
                                   transforms.CenterCrop(image_size), transforms.ToTensor(),
                                   normalize])
    steps = [transforms.RandomResizedCrop(image_size, scale=(scale_ratio, 1.0))]
    if slim_dataaug:
        steps.append(transforms.ColorJitter(0.4, 0.4, 0.4))
    steps += [transforms.RandomHorizontalFlip(), transforms.ToTensor()]
    if slim_dataaug:
        steps.append(PCALighting(0.1))
    return transforms.Compose(steps + [normalize])


def _require_lmdb():
    if lmdb is None:
        raise DataError("ImageNet LMDB files need the lmdb package: pip install lmdb")


def _open_lmdb(path):
    """A read-only environment; lock=False because readers never write (and NFS has no locks)."""
    if not os.path.exists(path):
        raise DataError(f"missing {path}: make it with python data.py to-lmdb IMAGE_FOLDER {path}")
    _require_lmdb()
    try:
        env = lmdb.open(path, subdir=os.path.isdir(path), readonly=True, lock=False,
                        readahead=False, meminit=False)
        # A truncated copy would kill the process with SIGBUS at its first read past the end:
        # the meta page says how far the pages go, so check that before reading any.
        needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    except lmdb.Error as error:
        raise DataError(f"{path} is not a readable LMDB database ({_first_line(error)})") from None
    data_file = os.path.join(path, "data.mdb") if os.path.isdir(path) else path
    size = os.path.getsize(data_file)
    if needed > size:
        env.close()
        raise DataError(f"{path} is truncated: its pages need {needed} bytes, {data_file} holds "
                        f"{size}; copy it again, or rebuild it with python data.py to-lmdb")
    return env


_ENVIRONMENTS = {}  # database path -> (process id, its read-only environment there)


def _shared_lmdb(path):
    """This process's read-only environment of `path`, opened on first use and shared by every
    dataset that reads it: py-lmdb refuses to open one database twice in a process, and the
    ImageNet train and val splits both read train.lmdb (with --workers 0, in one process). A
    forked DataLoader worker closes the copy it inherited (an environment must not cross a
    fork) and opens its own."""
    pid, env = _ENVIRONMENTS.get(path, (None, None))
    if pid != os.getpid():
        if env is not None:
            env.close()  # the parent's, inherited by fork: unmapped here only
        env = _open_lmdb(path)
        _ENVIRONMENTS[path] = (os.getpid(), env)
    return env


def _read_lmdb_header(path):
    """(record count, class names) of a database written by `to-lmdb`."""
    pid, shared = _ENVIRONMENTS.get(path, (None, None))
    env = shared if pid == os.getpid() else _open_lmdb(path)
    try:
        with env.begin() as txn:
            length, classes = txn.get(LEN_KEY), txn.get(CLASSES_KEY)
        if length is None or classes is None:
            raise DataError(f"{path} is incomplete (no __len__ key): its conversion did not "
                            f"finish; delete it and run python data.py to-lmdb again")
        return int(length), json.loads(classes)
    except (lmdb.Error, ValueError) as error:
        raise DataError(f"{path} is not a to-lmdb database ({_first_line(error)})") from None
    finally:
        if env is not shared:
            env.close()


class LMDBImageFolder(Dataset):
    """Images from a `to-lmdb` database; `indices` picks a subset of its records.

    The LMDB environment is opened lazily, once per process and database (`_shared_lmdb`):
    an environment must not cross a fork or a pickle into DataLoader workers, so each worker
    opens its own on first use, and the train and val splits of one file share it.
    """

    def __init__(self, path, transform, indices=None):
        self.path, self.transform = path, transform
        self.num_records, self.classes = _read_lmdb_header(path)
        self.indices = range(self.num_records) if indices is None else indices

    def __len__(self):
        return len(self.indices)

    def read_record(self, record):
        """(encoded image bytes, label) of record number `record`, checked against its CRC."""
        env = _shared_lmdb(self.path)
        where = f"{self.path}: record {record}"
        try:
            with env.begin() as txn:
                value = txn.get(b"%08d" % record)
        except lmdb.Error as error:
            raise DataError(f"{where} cannot be read ({_first_line(error)}); rebuild the "
                            f"database") from None
        if value is None or len(value) < RECORD_HEADER.size:
            raise DataError(f"{where} is missing or truncated; rebuild the database with to-lmdb")
        label, checksum = RECORD_HEADER.unpack_from(value)
        image_bytes = value[RECORD_HEADER.size:]
        if zlib.crc32(image_bytes) != checksum or label >= len(self.classes):
            raise DataError(f"{where} is corrupt (checksum or label mismatch); rebuild the database")
        return image_bytes, label

    def __getitem__(self, index):
        """(transformed image, label); `transform=None` gives the decoded RGB PIL image."""
        record = self.indices[index]
        image_bytes, label = self.read_record(record)
        try:
            image = Image.open(io.BytesIO(image_bytes)).convert("RGB")  # forces the full decode
        except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, ...
            raise DataError(f"{self.path}: record {record} does not decode as an image "
                            f"({_first_line(error)}); rebuild the database") from None
        return (self.transform(image) if self.transform else image), label


# ----------------------------------------------------------------------------- converter

def scan_image_folder(source_dir):
    """(class names, [(file path, label)]) of an ImageFolder tree: one sub-folder per class,
    sorted by name to give label indices, image files found recursively (as torchvision)."""
    if not os.path.isdir(source_dir):
        raise DataError(f"{source_dir} is not a folder: expected one sub-folder per class")
    classes = sorted(entry.name for entry in os.scandir(source_dir) if entry.is_dir())
    samples = []
    for label, name in enumerate(classes):
        for folder, _, files in sorted(os.walk(os.path.join(source_dir, name), followlinks=True)):
            samples += [(os.path.join(folder, file), label) for file in sorted(files)
                        if file.lower().endswith(IMAGE_EXTENSIONS)]
    if not samples:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in class sub-folders of "
                        f"{source_dir}")
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
    """Write every image of an ImageFolder tree into a new LMDB database at `lmdb_path`.

    Records go to `lmdb_path`.tmp-PID first; the record count is written last and the folder
    is renamed into place only after everything succeeded, so an interrupted conversion never
    leaves a database at `lmdb_path`. Returns the number of images written.
    """
    if os.path.exists(lmdb_path):
        raise DataError(f"{lmdb_path} already exists; delete it or choose another destination")
    parent = os.path.dirname(os.path.abspath(lmdb_path))
    if not os.path.isdir(parent):
        raise DataError(f"the folder {parent} does not exist; create it first")
    if records_per_commit < 1:
        raise DataError(f"--records_per_commit {records_per_commit} must be at least 1")
    _require_lmdb()
    classes, samples = scan_image_folder(source_dir)
    log(f"to-lmdb: {len(samples)} images in {len(classes)} classes from {source_dir}")
    temporary_path = f"{lmdb_path}.tmp-{os.getpid()}"
    start = time.time()
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
        _put_all(env, [(CLASSES_KEY, json.dumps(classes).encode())])
        _put_all(env, [(LEN_KEY, str(len(samples)).encode())])  # last: marks it complete
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


# ----------------------------------------------------------------------------- splits, loaders

def held_out_split(num_train, val_size, seed=HELD_OUT_SEED):
    """(train indices, val indices): a fixed random `val_size` of range(num_train) held out."""
    if not 0 <= val_size < num_train:
        raise DataError(f"--val_size {val_size} must be in 0..{num_train - 1} (training images)")
    permutation = np.random.default_rng(seed).permutation(num_train)
    return np.sort(permutation[val_size:]), np.sort(permutation[:val_size])


def canonical_dataset_name(name):
    """'cifar100' -> 'CIFAR100'; an unknown name is returned as given (get_loaders reports it)."""
    return {known.lower(): known for known in DATASETS}.get(name.lower(), name)


def add_data_args(parser):
    """Add the data flags shared by train.py, search.py and evaluate.py."""
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", type=canonical_dataset_name, default="synthetic", help=
                       "synthetic (default, made in memory), CIFAR10, CIFAR100, FashionMNIST, "
                       "MNIST or ImageNet; any case")
    group.add_argument("--datapath", default=None, help="CIFAR: the folder holding (or being) "
                       "cifar-10-batches-py or cifar-100-python; FashionMNIST/MNIST: the folder "
                       "holding the four IDX files (raw or .gz; or NAME/raw below it); ImageNet: "
                       "the folder holding train.lmdb and val.lmdb (default ./data; "
                       "FashionMNIST: /usr/share/datasets/fashion-mnist when it exists)")
    group.add_argument("--val_size", type=int, default=None,
                       help="images held out of the training set for width search (default: "
                            "synthetic 1000, CIFAR/MNIST/FashionMNIST 5000, ImageNet 10000; "
                            "0 = none)")
    group.add_argument("--train_size", type=int, default=0,
                       help="train on a fixed random subset of this many of the images left "
                            "after the held-out split (default 0: all of them); short studies")
    group.add_argument("--workers", type=int, default=2,
                       help="DataLoader worker processes per training process (default 2)")
    group.add_argument("--pin_memory", action=argparse.BooleanOptionalAction, default=True,
                       help="page-locked batches for faster GPU copies (default on)")
    group.add_argument("--scale_ratio", type=float, default=0.08,
                       help="ImageNet: smallest area fraction of RandomResizedCrop (default 0.08)")
    group.add_argument("--image_size", type=int, default=IMAGENET_SIZE,
                       help="ImageNet: side in pixels of the training crop and of the test centre "
                            "crop (the test image is first resized to image_size * 256/224); "
                            "the networks' MACs are counted at it (default 224, the papers'; "
                            "smaller: quick studies and tests)")
    group.add_argument("--slim_dataaug", action="store_true",
                       help="ImageNet: add ColorJitter(0.4, 0.4, 0.4) and PCA lighting (0.1)")
    group.add_argument("--synthetic_train", type=int, default=10000,
                       help="synthetic: training images, held-out val included (default 10000)")
    group.add_argument("--synthetic_test", type=int, default=2000,
                       help="synthetic: test images (default 2000)")
    group.add_argument("--synthetic_classes", type=int, default=10,
                       help="synthetic: number of classes (default 10)")
    group.add_argument("--data_seed", type=int, default=0,
                       help="synthetic: seed the whole data set is generated from (default 0)")
    return parser


def data_flag_names():
    """The names (argparse destinations) of the flags ``add_data_args`` adds."""
    return set(vars(add_data_args(argparse.ArgumentParser(add_help=False)).parse_args([])))


def first_batches(loader, count=None, images=None, seed=None):
    """The first ``count`` batches of ``loader``, or its first ``images`` images, as a list of
    ``(inputs, targets)``: drawn without touching torch's global RNG, which is seeded with
    ``seed`` inside (when given) so that random transforms and workers draw the same each call."""
    batches, seen = [], 0
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        for batch in loader:
            inputs, targets = batch[0], batch[1]
            if images is not None:
                inputs, targets = inputs[:images - seen], targets[:images - seen]
            batches.append((inputs, targets))
            seen += len(targets)
            if len(batches) == count or (images is not None and seen >= images):
                break
    return batches


def flag_problem(args, rules):
    """One line naming the first flag of ``rules`` ({flag: (test of a value, what it must be)})
    whose value is invalid, or None. A flag left unset (None) is skipped, each value of a list
    flag is tested, and a float that is not finite is invalid. train.py, search.py, evaluate.py
    and ``check_data_args`` validate their flags through this, each with its own table."""
    for flag, (valid, meaning) in rules.items():
        value = getattr(args, flag)
        if value is None:
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, float) and not math.isfinite(item) or not valid(item):
                shown = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else value
                return f"--{flag} {shown} is invalid: it must be {meaning}"
    return None


DATA_FLAG_RULES = {  # the flags of add_data_args: (test of the value, what it must be)
    "workers": (lambda v: v >= 0, "at least 0"), "train_size": (lambda v: v >= 0, "at least 0"),
    "synthetic_train": (lambda v: v >= 1, "at least 1"),
    "synthetic_test": (lambda v: v >= 1, "at least 1"),
    "synthetic_classes": (lambda v: v >= 2, "at least 2"),
    "val_size": (lambda v: v >= 0, "0 (none) or more"),
    "scale_ratio": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "image_size": (lambda v: v >= 1, "at least 1 (pixels)"),
}


def check_data_args(args):
    """One line saying which flag of ``add_data_args`` is invalid, or None (the scripts call it
    once while parsing their flags)."""
    problem = flag_problem(args, DATA_FLAG_RULES)
    if problem is None and args.image_size != IMAGENET_SIZE and \
            canonical_dataset_name(args.dataset) != "ImageNet":
        problem = (f"--image_size {args.image_size} applies to ImageNet only: "
                   f"{canonical_dataset_name(args.dataset)} images keep their own size")
    return problem


class Loaders(NamedTuple):
    train: DataLoader            # augmented, shuffled, drop_last
    val: Optional[DataLoader]    # held out of the training set, eval transforms; None if val_size 0
    test: DataLoader             # eval transforms; report only
    num_classes: int
    input_size: int              # 32, 28, or ImageNet's --image_size (224)
    dataset: str                 # canonical name, e.g. "CIFAR100"
    in_channels: int = 3         # 3 (RGB) or 1 (MNIST, FashionMNIST)


def train_subset(train_indices, size, seed=HELD_OUT_SEED):
    """`size` of the training indices (a fixed random choice, sorted); all of them for 0."""
    if size == 0:
        return train_indices
    if not 0 < size <= len(train_indices):
        raise DataError(f"--train_size {size} must be in 1..{len(train_indices)} (the training "
                        f"images left after the held-out split), or 0 for all")
    chosen = np.random.default_rng([seed, 1]).permutation(len(train_indices))[:size]
    return train_indices[np.sort(chosen)]


def build_datasets(args):
    """(train, val or None, test) Datasets, number of classes, input size, image channels."""
    name = canonical_dataset_name(args.dataset)
    if name not in DATASETS:
        raise DataError(f"unknown dataset {args.dataset!r}: choose one of {', '.join(DATASETS)}")
    val_size = DEFAULT_VAL_SIZE[name] if args.val_size is None else args.val_size
    datapath = args.datapath or "./data"
    if name == "ImageNet":
        train_path, test_path = (os.path.join(datapath, f) for f in ("train.lmdb", "val.lmdb"))
        if not (os.path.exists(train_path) and os.path.exists(test_path)):
            raise DataError(f"no ImageNet at {datapath}: expected train.lmdb and val.lmdb "
                            f"there (make them with python data.py to-lmdb)")
        num_train, classes = _read_lmdb_header(train_path)
        train_indices, val_indices = held_out_split(num_train, val_size)
        train_indices = train_subset(train_indices, args.train_size)
        evaluation = imagenet_transform(False, image_size=args.image_size)
        train = LMDBImageFolder(train_path, imagenet_transform(
            True, args.scale_ratio, args.slim_dataaug, args.image_size), train_indices)
        val = LMDBImageFolder(train_path, evaluation, val_indices) if val_size else None
        test = LMDBImageFolder(test_path, evaluation)
        if test.classes != classes:
            raise DataError(f"{test_path} and {train_path} list different classes")
        return train, val, test, len(classes), args.image_size, 3
    padding, flip = 4, True
    if name == "synthetic":
        if args.synthetic_classes < 2 or min(args.synthetic_train, args.synthetic_test) < 1:
            raise DataError("--synthetic_classes must be at least 2 and the sizes positive")
        train_images, train_labels = make_synthetic_images(
            args.synthetic_train, args.synthetic_classes, args.data_seed, split=0)
        test_images, test_labels = make_synthetic_images(
            args.synthetic_test, args.synthetic_classes, args.data_seed, split=1)
        pixels = torch.from_numpy(train_images).float().div_(255)  # the set's own mean/std
        mean, std = pixels.mean((0, 2, 3)).tolist(), pixels.std((0, 2, 3)).tolist()
        num_classes = args.synthetic_classes
    elif name in IDX_MEAN_STD:
        train_images, train_labels, test_images, test_labels = read_idx(args.datapath, name)
        mean, std = IDX_MEAN_STD[name]
        num_classes, padding, flip = 10, 2, name == "FashionMNIST"
    else:
        train_images, train_labels, test_images, test_labels = read_cifar(datapath, name)
        mean, std = CIFAR_MEAN_STD[name]
        num_classes = 10 if name == "CIFAR10" else 100
    train_indices, val_indices = held_out_split(len(train_images), val_size)
    train_indices = train_subset(train_indices, args.train_size)
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


# ----------------------------------------------------------------------------- command line

def check_lmdb(path, workers=2):
    """Decode every record of a `to-lmdb` database (in `workers` processes); DataError on the
    first bad one. Returns the number of records."""
    dataset = LMDBImageFolder(path, transform=None)
    loader = DataLoader(dataset, batch_size=64, num_workers=workers, collate_fn=len)
    checked, start = 0, time.time()
    for batch_length in loader:
        checked += batch_length
        if checked % 12800 == 0:
            print(f"check: {path}: {checked}/{len(dataset)} records, "
                  f"{checked / (time.time() - start):.0f}/s", flush=True)
    return checked


def main(argv=None):
    parser = argparse.ArgumentParser(allow_abbrev=False, description="Inspect slimnets' data "
                                     "sets; convert and check ImageNet LMDB databases.")
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser(
        "to-lmdb", allow_abbrev=False,
        help="convert an ImageFolder tree (one sub-folder per class) to LMDB",
        description="Store every image of SRC_DIR (class sub-folders, sorted -> labels "
                    "0..C-1), still encoded, in a new LMDB database DST. DST appears only "
                    "once the conversion has succeeded.")
    convert.add_argument("source_dir", metavar="SRC_DIR", help="e.g. ~/imagenet/train")
    convert.add_argument("lmdb_path", metavar="DST", help="e.g. ./data/train.lmdb (must not exist)")
    convert.add_argument("--records_per_commit", type=int, default=1000,
                         help="images written per LMDB transaction (default 1000)")
    info = commands.add_parser("info", allow_abbrev=False,
                               help="print the split sizes of a data set")
    check = commands.add_parser("check", allow_abbrev=False,
                                help="like info, and decode every ImageNet LMDB record")
    for command in (info, check):
        add_data_args(command)
    args = parser.parse_args(argv)
    try:
        if args.command == "to-lmdb":
            convert_folder_to_lmdb(args.source_dir, args.lmdb_path, args.records_per_commit,
                                   log=lambda line: print(line, flush=True))
            return 0
        if args.command == "check" and canonical_dataset_name(args.dataset) == "ImageNet":
            for name in ("train.lmdb", "val.lmdb"):  # every record, whatever the split flags
                path = os.path.join(args.datapath or "./data", name)
                print(f"check: {path}: all {check_lmdb(path, args.workers)} records decode")
            return 0
        train, val, test, num_classes, input_size, in_channels = build_datasets(args)
        print(f"{canonical_dataset_name(args.dataset)}: {num_classes} classes, "
              f"{input_size}x{input_size}x{in_channels} inputs, train {len(train)}, "
              f"val {len(val) if val is not None else 0}, test {len(test)}")
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
