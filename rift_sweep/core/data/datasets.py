"""Datasets as in-memory uint8 tensors, deterministic splits and a fast tensor-side batch iterator.

Every dataset is read from its real, official on-disk layout by a small reader of our own (one per
format: CIFAR pickles, Tiny-ImageNet JPEG tree, IDX files, scikit-learn digits), so nothing goes
through PIL transforms or DataLoader workers at training time. Images stay uint8 [N, C, H, W]
at rest; `iterate_batches` turns a batch into float32 in [0, 1] on the target device and augments
it there, vectorised over the whole batch.

Splits: `val` is always carved from the official TRAINING set (seeded, disjoint from `train`),
so model selection never looks at the official test split, which is kept for reporting only.
Two datasets have no labelled official test split:
- tiny-imagenet: the official test images are unlabelled, so its official VAL folder is our test split.
- digits: scikit-learn ships one set of 1797 images; a fixed, seeded 20% of it is our test split.
"""

from __future__ import annotations

import gzip
import logging
import pickle
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from rift_sweep.core.errors import DataNotFound, InputError
from rift_sweep.core.files import atomic_write

logger = logging.getLogger(__name__)

AUGMENTATIONS = ("none", "crop", "crop_flip")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    image_shape: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]  # per channel, for the model's normalisation layer
    std: tuple[float, ...]
    augment: str  # the usual training augmentation: "crop_flip" | "crop" | "none"
    crop_padding: int
    default_root: str
    ood_name: str | None  # the matching corruption benchmark, if any


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            "cifar10",
            10,
            (3, 32, 32),
            (0.4914, 0.4822, 0.4465),
            (0.2471, 0.2435, 0.2616),
            "crop_flip",
            4,
            "~/.cache/rift-sweep/data/cifar10",
            "cifar10-c",
        ),
        DatasetInfo(
            "cifar100",
            100,
            (3, 32, 32),
            (0.5071, 0.4865, 0.4409),
            (0.2673, 0.2564, 0.2762),
            "crop_flip",
            4,
            "~/.cache/rift-sweep/data/cifar100",
            "cifar100-c",
        ),
        DatasetInfo(
            "tiny-imagenet",
            200,
            (3, 64, 64),
            (0.4802, 0.4481, 0.3975),
            (0.2770, 0.2691, 0.2821),
            "crop_flip",
            4,
            "~/.cache/rift-sweep/data/tiny-imagenet",
            "tiny-imagenet-c",
        ),
        # Clothes are left/right symmetric enough to flip; digits are not ("crop" only).
        DatasetInfo(
            "fashion-mnist",
            10,
            (1, 28, 28),
            (0.2860,),
            (0.3530,),
            "crop_flip",
            2,
            "/usr/share/datasets/fashion-mnist",
            None,
        ),
        DatasetInfo("mnist", 10, (1, 28, 28), (0.1307,), (0.3081,), "crop", 2, "~/.cache/rift-sweep/data/mnist", None),
        # Mean/std computed once over all 1797 images after the uint8 scaling below, divided by 255.
        # 8x8 images are too small to crop. Digits ship inside scikit-learn, so `root` is unused.
        DatasetInfo("digits", 10, (1, 8, 8), (0.3053,), (0.3759,), "none", 0, "", None),
    )
}


@dataclass
class Split:
    x: torch.Tensor  # uint8 [N, C, H, W]
    y: torch.Tensor  # int64 [N]

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.dim() != 4:
            raise ValueError(f"Split.x must be uint8 [N, C, H, W], got {self.x.dtype} {tuple(self.x.shape)}")
        if self.y.dtype != torch.int64 or self.y.shape != (self.x.shape[0],):
            raise ValueError(f"Split.y must be int64 [{self.x.shape[0]}], got {self.y.dtype} {tuple(self.y.shape)}")

    def __len__(self) -> int:
        return self.x.shape[0]

    def subset(self, n: int | None, seed: int) -> Split:
        """A seeded random `n` examples (in their original order); None or n >= len returns self."""
        _check_subset_size(n, "n")
        if n is None or n >= len(self):
            return self
        chosen = torch.randperm(len(self), generator=_seeded(seed))[:n]
        return _select(self, chosen.sort().values)


@dataclass
class DataSplits:
    info: DatasetInfo
    train: Split
    val: Split  # carved from the official training set, disjoint from train
    test: Split  # the official test split (see module docstring); for reporting only


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return DATASETS[name]


def load_split_arrays(name: str, root: str | Path | None = None, *, train: bool, download: bool = False) -> Split:
    """The official training (train=True) or test split of `name`, read from its on-disk layout."""
    info = dataset_info(name)
    root_path = Path(root if root is not None else info.default_root).expanduser()
    split = _LOADERS[name](name, root_path, train, download)
    if tuple(split.x.shape[1:]) != info.image_shape:
        raise InputError(
            f"{name} images have shape {tuple(split.x.shape[1:])}, expected {info.image_shape}; "
            f"the files under {root_path} are not the official {name} data"
        )
    return split


def load_splits(
    name: str,
    root: str | Path | None = None,
    *,
    val_size: int | float = 0.1,
    seed: int = 0,
    train_subset: int | None = None,
    val_subset: int | None = None,
    test_subset: int | None = None,
    download: bool = False,
) -> DataSplits:
    """Train/val/test splits; val is a seeded carve of the official training set, subsets are taken after it."""
    info = dataset_info(name)
    _check_val_size(val_size)
    for arg_name, n in (("train_subset", train_subset), ("val_subset", val_subset), ("test_subset", test_subset)):
        _check_subset_size(n, arg_name)
    official_train = load_split_arrays(name, root, train=True, download=download)
    test = load_split_arrays(name, root, train=False, download=download)
    train, val = _carve_validation(official_train, val_size, seed)
    return DataSplits(
        info, train.subset(train_subset, seed), val.subset(val_subset, seed), test.subset(test_subset, seed)
    )


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 images → float32 in [0, 1], by the same operation on every device: CUDA computes `x / 255` as
    x * (1/255) while the CPU divides (126 of the 256 byte values then differ in the last bit), so multiply."""
    return images.float().mul_(1 / 255)


def iterate_batches(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool = False,
    augment: str = "none",
    crop_padding: int = 0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (float32 [B, C, H, W] in [0, 1], int64 [B]) on `device`, augmented there if asked."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    _check_augment(augment, crop_padding)
    n = len(split)
    order = torch.arange(n)
    if shuffle:
        order = torch.randperm(n, generator=generator, device=_rng_device(generator, "cpu"))
    for start in range(0, n, batch_size):
        indices = order[start : start + batch_size]
        if drop_last and len(indices) < batch_size:
            return
        # Move uint8 (4x fewer bytes than float) and convert on the device.
        x = to_unit(split.x[indices.to(split.x.device)].to(device, non_blocking=True))
        y = split.y[indices.to(split.y.device)].to(device, non_blocking=True)
        yield augment_batch(x, augment, crop_padding, generator), y


def augment_batch(x: torch.Tensor, kind: str, padding: int, generator: torch.Generator | None) -> torch.Tensor:
    """Random crop with zero padding (+ horizontal flip for "crop_flip"), vectorised over the batch."""
    _check_augment(kind, padding)
    if not x.is_floating_point() or x.dim() != 4:
        raise ValueError(f"augment_batch takes a float [B, C, H, W] batch, got {x.dtype} {tuple(x.shape)}")
    if kind == "none":
        return x
    if padding > 0:
        x = _random_crop(x, padding, generator)
    if kind == "crop_flip":
        flip = torch.rand(x.shape[0], generator=generator, device=_rng_device(generator, x.device)).to(x.device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


def _random_crop(x: torch.Tensor, padding: int, generator: torch.Generator | None) -> torch.Tensor:
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))  # zeros, as the standard CIFAR recipe
    offsets = torch.randint(
        0, 2 * padding + 1, (2, n), generator=generator, device=_rng_device(generator, x.device)
    ).to(x.device)
    # Two gathers (rows, then columns) with per-example index ranges: about 2x faster on CPU than
    # one 4-D advanced-indexing gather.
    rows = (offsets[0][:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (offsets[1][:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    cropped_rows = padded.gather(2, rows.expand(n, c, h, w + 2 * padding))
    return cropped_rows.gather(3, cols.expand(n, c, h, w))


def _rng_device(generator: torch.Generator | None, default: torch.device | str) -> torch.device | str:
    """Random numbers must be drawn on the generator's own device (then moved where they are used)."""
    return generator.device if generator is not None else default


def _check_augment(kind: str, padding: int) -> None:
    if kind not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {kind!r}; choose one of {', '.join(AUGMENTATIONS)}")
    if padding < 0:
        raise ValueError(f"crop padding must be >= 0, got {padding}")


# --- splits -----------------------------------------------------------------------------------


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _select(split: Split, indices: torch.Tensor) -> Split:
    return Split(split.x[indices], split.y[indices])


def _check_subset_size(n: int | None, arg_name: str) -> None:
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"{arg_name} must be a positive int or None (all examples), got {n!r}")


def _check_val_size(val_size: int | float) -> None:
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float)):
        raise ValueError(f"val_size must be an int count or a float fraction in (0, 1), got {val_size!r}")
    if isinstance(val_size, float) and not 0 < val_size < 1:
        raise ValueError(f"val_size as a fraction must lie in (0, 1), got {val_size}; pass an int for a count")
    if isinstance(val_size, int) and val_size < 1:
        raise ValueError(f"val_size must be >= 1 example, got {val_size}")


def _carve_validation(official_train: Split, val_size: int | float, seed: int) -> tuple[Split, Split]:
    n = len(official_train)
    n_val = round(val_size * n) if isinstance(val_size, float) else val_size
    if not 1 <= n_val < n:
        raise InputError(
            f"val_size={val_size} gives {n_val} validation examples out of {n} training examples; "
            f"it must leave at least one on each side"
        )
    order = torch.randperm(n, generator=_seeded(seed))
    return _select(official_train, order[n_val:].sort().values), _select(official_train, order[:n_val].sort().values)


# --- readers: one per on-disk format ----------------------------------------------------------


def _not_found(dataset: str, looked_for: list[Path], how_to_get: str) -> DataNotFound:
    paths = "\n  ".join(str(p) for p in looked_for)
    more = f" (and {len(looked_for) - 1} other path(s); --verbose lists them)" if len(looked_for) > 1 else ""
    return DataNotFound(
        f"{dataset} data not found: {looked_for[0]}{more}. {how_to_get}", details=f"looked for:\n  {paths}"
    )


def _require_files(paths: list[Path], dataset: str, how_to_get: str) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise _not_found(dataset, missing, how_to_get)


class _CifarUnpickler(pickle.Unpickler):
    """Reconstructs only numpy arrays (plus the builtin dicts/lists/bytes the opcodes make themselves).

    CIFAR's official format is a pickle, and a pickle can run arbitrary code when loaded; this
    allow-list refuses anything but the globals a data-only numpy pickle names. Still, only point
    the reader at CIFAR files you trust.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: not a data-only CIFAR pickle")
        return super().find_class(module, name)


def _read_cifar_pickles(paths: list[Path], label_key: bytes) -> Split:
    images, labels = [], []
    for path in paths:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()  # keys are bytes, as in the official files
        data = batch[b"data"]
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise InputError(
                f"{path} is not a CIFAR batch: data is {data.dtype} {data.shape}, expected uint8 [N, 3072]"
            )
        images.append(data.reshape(-1, 3, 32, 32))  # rows hold the R, G, B planes, each 32x32 row-major
        labels.extend(batch[label_key])
    return Split(torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.int64))


@dataclass(frozen=True)
class _CifarLayout:
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: bytes
    torchvision_class: str
    url: str


_CIFAR_LAYOUTS = {
    "cifar10": _CifarLayout(
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        b"labels",
        "CIFAR10",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    ),
    "cifar100": _CifarLayout(
        "cifar-100-python",
        ("train",),
        ("test",),
        b"fine_labels",
        "CIFAR100",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    ),
}


def _load_cifar(name: str, root: Path, train: bool, download: bool) -> Split:
    layout = _CIFAR_LAYOUTS[name]
    paths = [root / layout.folder / f for f in (layout.train_files if train else layout.test_files)]
    if download and not all(p.is_file() for p in paths):
        import torchvision.datasets

        getattr(torchvision.datasets, layout.torchvision_class)(str(root), train=train, download=True)
    _require_files(
        paths,
        name,
        f"Pass download=True to fetch {layout.url}, or pass the root folder that contains {layout.folder}/.",
    )
    return _read_cifar_pickles(paths, layout.label_key)


_TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
_TINY_IMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"


def _tiny_imagenet_files(base: Path, train: bool) -> tuple[list[Path], list[int]]:
    """Image paths and class indices (class index = line order in wnids.txt)."""
    wnids = (base / "wnids.txt").read_text().split()
    if train:
        paths, labels = [], []
        for label, wnid in enumerate(wnids):
            images = sorted((base / "train" / wnid / "images").glob("*.JPEG"))
            paths += images
            labels += [label] * len(images)
        return paths, labels
    # val_annotations.txt: filename <tab> wnid <tab> bounding box
    rows = [line.split("\t") for line in (base / "val" / "val_annotations.txt").read_text().splitlines() if line]
    class_of = {wnid: i for i, wnid in enumerate(wnids)}
    return [base / "val" / "images" / row[0] for row in rows], [class_of[row[1]] for row in rows]


def _read_jpegs(paths: list[Path]) -> np.ndarray:
    from PIL import Image

    images = None
    for i, path in enumerate(tqdm(paths, desc="decoding JPEGs", leave=False, disable=len(paths) < 1000)):
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))  # some Tiny-ImageNet images are grayscale
        if images is None:
            images = np.empty((len(paths), *pixels.shape), np.uint8)
        images[i] = pixels
    return images.transpose(0, 3, 1, 2)  # NHWC -> NCHW


def _write_cache(cache: Path, split: Split) -> None:
    """Best effort: the dataset folder may be read-only, and the cache only saves time."""
    try:
        with atomic_write(cache) as tmp, open(tmp, "wb") as f:
            np.savez(f, x=split.x.numpy(), y=split.y.numpy())
    except OSError as error:
        logger.warning("could not cache decoded images at %s (%s); they will be decoded again next time", cache, error)


def tiny_imagenet_wnids(root: str | Path | None = None) -> list[str]:
    """The wnids in label order (tiny-imagenet-200/wnids.txt): how Tiny-ImageNet-C's class folders map to labels."""
    path = Path(root if root is not None else DATASETS["tiny-imagenet"].default_root).expanduser()
    path = path / "tiny-imagenet-200" / "wnids.txt"
    if not path.is_file():
        raise _not_found("tiny-imagenet", [path], "Load the dataset first (download=True fetches it).")
    return path.read_text().split()


def _load_tiny_imagenet(name: str, root: Path, train: bool, download: bool) -> Split:
    base = root / "tiny-imagenet-200"
    index = base / ("train" if train else "val/val_annotations.txt")
    if download and not (base / "wnids.txt").is_file():
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(_TINY_IMAGENET_URL, str(root), md5=_TINY_IMAGENET_MD5)
    if not (base / "wnids.txt").is_file() or not index.exists():
        raise _not_found(
            name,
            [base / "wnids.txt", index],
            f"Pass download=True to fetch {_TINY_IMAGENET_URL}, "
            f"or pass the root folder that contains tiny-imagenet-200/.",
        )
    # Decoding 100k JPEGs takes minutes; the decoded arrays are cached beside the data. Delete to rebuild.
    cache = base / f"rift_sweep_{'train' if train else 'val'}_uint8.npz"
    if cache.is_file():
        with np.load(cache) as arrays:
            return Split(torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"]))
    paths, labels = _tiny_imagenet_files(base, train)
    incomplete = "The tiny-imagenet-200 folder is incomplete; extract the archive again."
    if not paths:
        raise _not_found(name, [index], f"No images listed under {index}. {incomplete}")
    _require_files(paths, name, incomplete)
    split = Split(torch.from_numpy(np.ascontiguousarray(_read_jpegs(paths))), torch.tensor(labels, dtype=torch.int64))
    _write_cache(cache, split)
    return split


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or plain) as a uint8 array; the format is: 0, 0, dtype, ndim, big-endian dims, data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise InputError(f"{path} is a damaged gzip file ({error}); delete it and download it again") from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise InputError(
            f"{path} is not a uint8 IDX file (bad magic number {raw[:4].hex()}); delete it and download it again"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise InputError(f"{path} is truncated inside its header; delete it and download it again")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise InputError(
            f"{path} is truncated or padded: header promises {expected} bytes of data for shape {dims}, "
            f"found {len(raw) - header}; delete it and download it again"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


_IDX_SOURCES = {  # torchvision's folder name and how to get the files
    "fashion-mnist": (
        "FashionMNIST",
        "Pass download=True (fetches via torchvision), or install the Debian "
        "package with `apt-get install dataset-fashion-mnist` "
        "(-> /usr/share/datasets/fashion-mnist).",
    ),
    "mnist": ("MNIST", "Pass download=True (fetches via torchvision), or pass the folder holding the IDX files."),
}


def _idx_candidates(stem: str, folders: list[Path]) -> list[Path]:
    return [folder / (stem + suffix) for folder in folders for suffix in ("", ".gz")]


def _first_file(candidates: list[Path]) -> Path | None:
    return next((p for p in candidates if p.is_file()), None)


def _load_idx_dataset(name: str, root: Path, train: bool, download: bool) -> Split:
    torchvision_folder, how_to_get = _IDX_SOURCES[name]
    folders = [root, root / torchvision_folder / "raw"]  # flat (Debian) and torchvision layouts
    prefix = "train" if train else "t10k"
    candidates = [_idx_candidates(f"{prefix}-{kind}", folders) for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")]
    found = [_first_file(c) for c in candidates]
    if download and None in found:
        import torchvision.datasets

        getattr(torchvision.datasets, torchvision_folder)(str(root), train=train, download=True)
        found = [_first_file(c) for c in candidates]
    if None in found:
        raise _not_found(name, [p for c, f in zip(candidates, found) if f is None for p in c], how_to_get)
    images, labels = (_read_idx(path) for path in found)
    if images.ndim != 3 or labels.shape != (images.shape[0],):
        raise InputError(f"{name}: images {images.shape} and labels {labels.shape} in {found} do not match")
    return Split(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


_DIGITS_TEST_FRACTION = 0.2
_DIGITS_TEST_SEED = 0  # fixed so every run reports on the same held-out digits


def _load_digits(name: str, root: Path, train: bool, download: bool) -> Split:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255 / 16)).astype(np.uint8)[:, None]  # 0..16 -> 0..255, one channel
    split = Split(torch.from_numpy(images), torch.from_numpy(bunch.target.astype(np.int64)))
    order = torch.randperm(len(split), generator=_seeded(_DIGITS_TEST_SEED))
    n_test = round(_DIGITS_TEST_FRACTION * len(split))
    return _select(split, (order[n_test:] if train else order[:n_test]).sort().values)


_LOADERS = {  # each called as loader(name, root, train, download)
    "cifar10": _load_cifar,
    "cifar100": _load_cifar,
    "tiny-imagenet": _load_tiny_imagenet,
    "fashion-mnist": _load_idx_dataset,
    "mnist": _load_idx_dataset,
    "digits": _load_digits,
}
