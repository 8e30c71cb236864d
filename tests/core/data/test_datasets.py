"""Tests for rift_sweep.core.data.datasets: readers on the official on-disk layouts (written here into tmp_path),
the real Fashion-MNIST and digits, seeded splits, and the vectorised augmentation/batching."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rift_sweep.core.data.datasets import (
    DATASETS,
    Split,
    augment_batch,
    dataset_info,
    iterate_batches,
    load_split_arrays,
    load_splits,
)

from helpers import requires

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


# --- fixture writers: the official layouts ----------------------------------------------------


class _Python2Pickler(pickle._Pickler):
    """Pickles the way Python 2's cPickle wrote the official CIFAR files: str as BINSTRING (which
    encoding="bytes" reads back as bytes) and numpy's module named numpy.core, as numpy 1 did."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_python2_str(self, obj: str | bytes) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_python2_str
    dispatch[str] = save_python2_str

    def save_global(self, obj, name=None) -> None:
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)


def _write_python2_pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        _Python2Pickler(f, protocol=2).dump(obj)


def _random_cifar_batch(rng: np.random.Generator, n: int, num_classes: int) -> tuple[np.ndarray, list[int]]:
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, num_classes, n).tolist()


def write_cifar10(root: Path, per_batch: int = 4) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for i, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        data, labels = _random_cifar_batch(rng, per_batch + i, 10)  # unequal sizes catch a dropped batch
        _write_python2_pickle(
            folder / name,
            {
                "batch_label": f"batch {name}",
                "labels": labels,
                "data": data,
                "filenames": [f"img_{j}.png" for j in range(len(labels))],
            },
        )
        written[name] = (data, labels)
    (folder / "batches.meta").write_bytes(b"")  # present in the real folder, not read
    return written


def write_cifar100(root: Path) -> dict[str, tuple[np.ndarray, list[int], list[int]]]:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    written = {}
    for name, n in (("train", 7), ("test", 3)):
        data, fine = _random_cifar_batch(rng, n, 100)
        coarse = [label // 5 for label in fine]
        _write_python2_pickle(
            folder / name,
            {
                "filenames": [f"f{j}.png" for j in range(n)],
                "batch_label": name,
                "fine_labels": fine,
                "coarse_labels": coarse,
                "data": data,
            },
        )
        written[name] = (data, fine, coarse)
    return written


# wnids.txt is NOT alphabetical, so a reader that sorts folders would assign the wrong classes.
TINY_WNIDS = ["n03000000", "n01000000", "n02000000"]
TINY_COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]


def _write_jpeg(path: Path, color: tuple[int, int, int] | int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "L" if isinstance(color, int) else "RGB"
    Image.new(mode, (64, 64), color).save(path, "JPEG", quality=95)


def write_tiny_imagenet(root: Path) -> None:
    base = root / "tiny-imagenet-200"
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(TINY_WNIDS) + "\n")
    (base / "words.txt").write_text("".join(f"{w}\tthing {i}\n" for i, w in enumerate(TINY_WNIDS)))
    for wnid, color in zip(TINY_WNIDS, TINY_COLORS):
        for j in range(2):
            _write_jpeg(base / "train" / wnid / "images" / f"{wnid}_{j}.JPEG", color)
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text(f"{wnid}_0.JPEG\t0\t0\t63\t63\n")
    _write_jpeg(base / "train" / TINY_WNIDS[1] / "images" / f"{TINY_WNIDS[1]}_2.JPEG", 128)  # grayscale
    annotations = [("val_0.JPEG", 2), ("val_1.JPEG", 0), ("val_2.JPEG", 1)]
    for filename, label in annotations:
        _write_jpeg(base / "val" / "images" / filename, TINY_COLORS[label])
    (base / "val" / "val_annotations.txt").write_text(
        "".join(f"{filename}\t{TINY_WNIDS[label]}\t0\t0\t63\t63\n" for filename, label in annotations)
    )
    _write_jpeg(base / "test" / "images" / "test_0.JPEG", 99)  # unlabelled, never read


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX: two zero bytes, dtype code 0x08 (uint8), ndim, big-endian uint32 dims, then the data."""
    payload = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def identifiable_images(n: int, rng: np.random.Generator) -> np.ndarray:
    """28x28 images whose first two pixels encode the example's index, so splits can be traced."""
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    images[:, 0, 0], images[:, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
    return images


def example_ids(split: Split) -> list[int]:
    return (split.x[:, 0, 0, 0].long() + 256 * split.x[:, 0, 0, 1].long()).tolist()


def write_mnist_like(
    root: Path, folder_in_root: str = "", gz: bool = True, n_train: int = 100, n_test: int = 30
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    suffix = ".gz" if gz else ""
    arrays = {
        "train-images-idx3-ubyte": identifiable_images(n_train, rng),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": identifiable_images(n_test, rng),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for stem, array in arrays.items():
        write_idx(root / folder_in_root / (stem + suffix), array)
    return arrays


# --- registry ---------------------------------------------------------------------------------


def test_registry_has_the_six_datasets_with_consistent_fields():
    assert set(DATASETS) == {"cifar10", "cifar100", "tiny-imagenet", "fashion-mnist", "mnist", "digits"}
    for name, info in DATASETS.items():
        assert info.name == name and dataset_info(name) is info
        assert len(info.mean) == len(info.std) == info.image_shape[0]
        assert info.augment in ("crop_flip", "crop", "none")
    assert dataset_info("cifar10").ood_name == "cifar10-c" and dataset_info("cifar10").crop_padding == 4
    assert dataset_info("mnist").augment == "crop"  # digits must not be mirrored
    assert dataset_info("fashion-mnist").default_root == str(FASHION_MNIST_DIR)


def test_unknown_dataset_error_lists_known_names():
    with pytest.raises(ValueError) as error:
        dataset_info("imagenet")
    for name in DATASETS:
        assert name in str(error.value)
    with pytest.raises(ValueError, match="cifar10"):
        load_splits("svhn")


# --- CIFAR ------------------------------------------------------------------------------------


def test_cifar10_reads_the_official_pickles(tmp_path):
    written = write_cifar10(tmp_path)
    train = load_split_arrays("cifar10", tmp_path, train=True)
    test = load_split_arrays("cifar10", tmp_path, train=False)

    batches = [written[f"data_batch_{i}"] for i in range(1, 6)]
    expected_x = np.concatenate([data for data, _ in batches]).reshape(-1, 3, 32, 32)
    assert train.x.dtype == torch.uint8 and train.y.dtype == torch.int64
    assert torch.equal(train.x, torch.from_numpy(expected_x))
    assert train.y.tolist() == [label for _, labels in batches for label in labels]
    # Channel planes: the first 1024 values of a row are red, the last 1024 blue.
    first_row = written["data_batch_1"][0][0]
    assert torch.equal(train.x[0, 0], torch.from_numpy(first_row[:1024].reshape(32, 32)))
    assert torch.equal(train.x[0, 2], torch.from_numpy(first_row[2048:].reshape(32, 32)))
    assert len(test) == len(written["test_batch"][1]) and test.y.tolist() == written["test_batch"][1]


def test_cifar100_uses_fine_labels(tmp_path):
    written = write_cifar100(tmp_path)
    train = load_split_arrays("cifar100", tmp_path, train=True)
    data, fine, coarse = written["train"]
    assert train.y.tolist() == fine != coarse
    assert torch.equal(train.x, torch.from_numpy(data.reshape(-1, 3, 32, 32)))
    assert len(load_split_arrays("cifar100", tmp_path, train=False)) == 3


class _RunsCode:
    def __reduce__(self):
        return (os.getcwd, ())


def test_cifar_reader_refuses_pickles_that_would_run_code(tmp_path):
    write_cifar10(tmp_path)
    _write_python2_pickle(tmp_path / "cifar-10-batches-py" / "test_batch", {"data": _RunsCode(), "labels": [0]})
    with pytest.raises(pickle.UnpicklingError, match="posix.getcwd|os.getcwd"):
        load_split_arrays("cifar10", tmp_path, train=False)


# --- Tiny-ImageNet ----------------------------------------------------------------------------


def test_tiny_imagenet_reads_train_tree_and_val_annotations(tmp_path):
    write_tiny_imagenet(tmp_path)
    train = load_split_arrays("tiny-imagenet", tmp_path, train=True)
    test = load_split_arrays("tiny-imagenet", tmp_path, train=False)  # the official val folder

    assert train.x.shape == (7, 3, 64, 64) and train.x.dtype == torch.uint8
    assert train.y.tolist() == [0, 0, 1, 1, 1, 2, 2]  # class index = line in wnids.txt
    colors = train.x.float().mean(dim=(2, 3))
    for image_color, label in zip(colors, train.y.tolist()):
        if image_color[0] == image_color[1] == image_color[2]:  # the grayscale image, converted to RGB
            assert abs(image_color[0].item() - 128) < 3
        else:
            assert torch.allclose(image_color, torch.tensor(TINY_COLORS[label], dtype=torch.float), atol=3)
    assert test.y.tolist() == [2, 0, 1]
    assert torch.allclose(test.x[0].float().mean(dim=(1, 2)), torch.tensor(TINY_COLORS[2], dtype=torch.float), atol=3)


def test_tiny_imagenet_reuses_its_decoded_cache(tmp_path):
    write_tiny_imagenet(tmp_path)
    first = load_split_arrays("tiny-imagenet", tmp_path, train=True)
    for jpeg in (tmp_path / "tiny-imagenet-200" / "train").rglob("*.JPEG"):
        jpeg.unlink()  # only the cache can still provide the images now
    again = load_split_arrays("tiny-imagenet", tmp_path, train=True)
    assert torch.equal(first.x, again.x) and torch.equal(first.y, again.y)


# --- IDX (MNIST, Fashion-MNIST) ---------------------------------------------------------------


@pytest.mark.parametrize("name, torchvision_folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
@pytest.mark.parametrize("layout", ["flat", "torchvision"])
@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader_accepts_both_layouts_plain_and_gzipped(tmp_path, name, torchvision_folder, layout, gz):
    folder = "" if layout == "flat" else f"{torchvision_folder}/raw"
    arrays = write_mnist_like(tmp_path, folder, gz=gz)
    train = load_split_arrays(name, tmp_path, train=True)
    test = load_split_arrays(name, tmp_path, train=False)
    assert train.x.shape == (100, 1, 28, 28) and train.x.dtype == torch.uint8 and train.y.dtype == torch.int64
    assert torch.equal(train.x[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert train.y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert test.y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_truncated_idx_file_gives_a_clear_error(tmp_path):
    write_mnist_like(tmp_path, gz=False)
    images = tmp_path / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte is truncated"):
        load_split_arrays("mnist", tmp_path, train=True)
    images.write_bytes(images.read_bytes()[:10])  # cut inside the header
    with pytest.raises(ValueError, match="truncated inside its header"):
        load_split_arrays("mnist", tmp_path, train=True)


def test_truncated_gzip_and_bad_magic_give_clear_errors(tmp_path):
    write_mnist_like(tmp_path, gz=True)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-8])
    with pytest.raises(ValueError, match="damaged gzip"):
        load_split_arrays("mnist", tmp_path, train=False)
    labels.write_bytes(gzip.compress(b"\x00\x00\x0d\x01" + struct.pack(">I", 30) + bytes(120)))  # float32 IDX
    with pytest.raises(ValueError, match="not a uint8 IDX file"):
        load_split_arrays("mnist", tmp_path, train=False)


# --- missing data -----------------------------------------------------------------------------


def test_missing_data_error_names_every_path_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_split_arrays("fashion-mnist", tmp_path, train=True)
    assert "\n" not in str(error.value)  # one line; every path is in the details
    message = f"{error.value} {error.value.details}"
    for folder in (tmp_path, tmp_path / "FashionMNIST" / "raw"):
        for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
            assert str(folder / stem) in message and str(folder / (stem + ".gz")) in message
    assert "apt-get install dataset-fashion-mnist" in message and "download=True" in message

    with pytest.raises(FileNotFoundError) as error:
        load_splits("cifar10", tmp_path)
    message = f"{error.value} {error.value.details}"
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_5") in message
    assert "download=True" in message and "cifar-10-python.tar.gz" in message

    with pytest.raises(FileNotFoundError) as error:
        load_split_arrays("tiny-imagenet", tmp_path, train=False)
    assert str(tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt") in error.value.details
    assert "tiny-imagenet-200.zip" in str(error.value)


# --- real data --------------------------------------------------------------------------------


@requires("fashion-mnist")
def test_real_fashion_mnist_loads_in_full():
    splits = load_splits("fashion-mnist", val_size=5000)
    assert len(splits.train) == 55000 and len(splits.val) == 5000 and len(splits.test) == 10000
    assert splits.train.x.shape[1:] == (1, 28, 28)
    assert splits.info.num_classes == 10 and sorted(splits.test.y.unique().tolist()) == list(range(10))
    assert torch.bincount(splits.test.y).tolist() == [1000] * 10
    # The published normalisation constants must come out of our decoded pixels.
    pixels = torch.cat([splits.train.x, splits.val.x]).float() / 255
    assert abs(pixels.mean().item() - splits.info.mean[0]) < 5e-4
    assert abs(pixels.std().item() - splits.info.std[0]) < 5e-4


def test_digits_load_with_a_fixed_test_split():
    splits = load_splits("digits", val_size=100, seed=0)
    assert len(splits.test) == 359 and len(splits.train) + len(splits.val) == 1797 - 359 and len(splits.val) == 100
    assert splits.train.x.shape[1:] == (1, 8, 8) and splits.train.x.max() == 255
    other_seed = load_splits("digits", val_size=100, seed=1)
    assert torch.equal(splits.test.x, other_seed.test.x)  # the test split never depends on the seed
    assert not torch.equal(splits.val.x, other_seed.val.x)
    everything = torch.cat([splits.train.x, splits.val.x, splits.test.x]).float() / 255
    assert abs(everything.mean().item() - splits.info.mean[0]) < 1e-4
    assert abs(everything.std().item() - splits.info.std[0]) < 1e-3


# --- splits -----------------------------------------------------------------------------------


def test_splits_are_seeded_disjoint_and_sized(tmp_path):
    write_mnist_like(tmp_path, n_train=100, n_test=30)
    splits = load_splits("mnist", tmp_path, val_size=20, seed=3)
    train_ids, val_ids = example_ids(splits.train), example_ids(splits.val)
    assert len(train_ids) == 80 and len(val_ids) == 20
    assert set(train_ids).isdisjoint(val_ids) and set(train_ids) | set(val_ids) == set(range(100))
    assert example_ids(splits.test) == list(range(30))

    same = load_splits("mnist", tmp_path, val_size=20, seed=3)
    assert torch.equal(same.val.x, splits.val.x) and torch.equal(same.train.y, splits.train.y)
    assert example_ids(load_splits("mnist", tmp_path, val_size=20, seed=4).val) != val_ids

    fraction = load_splits("mnist", tmp_path, val_size=0.25, seed=3)
    assert len(fraction.val) == 25 and len(fraction.train) == 75


def test_subsets_are_taken_after_the_carve(tmp_path):
    write_mnist_like(tmp_path, n_train=100, n_test=30)
    full = load_splits("mnist", tmp_path, val_size=20, seed=3)
    small = load_splits("mnist", tmp_path, val_size=20, seed=3, train_subset=10, val_subset=5, test_subset=7)
    assert (len(small.train), len(small.val), len(small.test)) == (10, 5, 7)
    assert set(example_ids(small.train)) <= set(example_ids(full.train))  # never leaks into val
    assert set(example_ids(small.val)) <= set(example_ids(full.val))
    assert example_ids(small.val) == example_ids(load_splits("mnist", tmp_path, val_size=20, seed=3, val_subset=5).val)
    big = load_splits("mnist", tmp_path, val_size=20, seed=3, train_subset=1000)
    assert len(big.train) == 80


@pytest.mark.parametrize(
    "kwargs, problem",
    [
        ({"val_size": 0}, "val_size must be >= 1"),
        ({"val_size": 1.0}, r"\(0, 1\)"),
        ({"val_size": 100}, "leave at least one"),
        ({"val_size": True}, "val_size"),
        ({"train_subset": 0}, "train_subset must be a positive int"),
        ({"test_subset": -3}, "test_subset"),
    ],
)
def test_bad_split_arguments_are_rejected(tmp_path, kwargs, problem):
    write_mnist_like(tmp_path, n_train=100, n_test=30)
    with pytest.raises(ValueError, match=problem):
        load_splits("mnist", tmp_path, **kwargs)


def test_split_subset_and_validation():
    split = Split(torch.arange(50, dtype=torch.uint8).view(50, 1, 1, 1), torch.arange(50))
    assert split.subset(None, seed=0) is split and split.subset(50, seed=0) is split
    part = split.subset(10, seed=1)
    assert len(part) == 10 and torch.equal(part.x, split.subset(10, seed=1).x)
    assert torch.equal(part.x.view(-1).long(), part.y)  # images and labels stay paired
    assert not torch.equal(part.y, split.subset(10, seed=2).y)
    with pytest.raises(ValueError, match="positive"):
        split.subset(0, seed=0)
    with pytest.raises(ValueError, match="uint8"):
        Split(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="int64"):
        Split(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))


# --- augmentation -----------------------------------------------------------------------------


def ramp_batch(n: int, size: int = 8) -> torch.Tensor:
    """n copies of an image with all-distinct, non-zero pixels, increasing left to right."""
    image = (1 + torch.arange(size * size, dtype=torch.float32).view(size, size).T) / (size * size + 1)
    return image.expand(n, 1, size, size).clone()


def crop_offset(crop: torch.Tensor, image: torch.Tensor, padding: int) -> tuple[int, int] | None:
    padded = torch.nn.functional.pad(image, (padding,) * 4)
    size = image.shape[-1]
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            if torch.equal(crop, padded[..., dy : dy + size, dx : dx + size]):
                return dy, dx
    return None


@pytest.mark.parametrize("kind", ["none", "crop", "crop_flip"])
def test_augment_keeps_shape_dtype_and_range(kind):
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = augment_batch(x, kind, 4, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1


def test_crop_shifts_content_and_never_flips():
    x = ramp_batch(200)
    out = augment_batch(x, "crop", 2, torch.Generator().manual_seed(0))
    offsets = [crop_offset(out[i], x[i], 2) for i in range(len(x))]
    assert None not in offsets  # every output is an unflipped shift of its input
    assert len(set(offsets)) >= 20  # of the 25 possible shifts
    assert (2, 2) in offsets  # the centre (no shift) too


def test_crop_flip_mirrors_about_half():
    x = ramp_batch(200)
    out = augment_batch(x, "crop_flip", 0, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, x)])
    unchanged = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    assert bool((flipped | unchanged).all())
    assert 70 <= int(flipped.sum()) <= 130

    shifted = augment_batch(x, "crop_flip", 2, torch.Generator().manual_seed(0))
    for o, i in zip(shifted, x):
        assert crop_offset(o, i, 2) is not None or crop_offset(o, i.flip(-1), 2) is not None


def test_augment_is_deterministic_per_generator_and_validates():
    x = torch.rand(32, 3, 32, 32)
    first = augment_batch(x, "crop_flip", 4, torch.Generator().manual_seed(5))
    assert torch.equal(first, augment_batch(x, "crop_flip", 4, torch.Generator().manual_seed(5)))
    assert not torch.equal(first, augment_batch(x, "crop_flip", 4, torch.Generator().manual_seed(6)))
    assert augment_batch(x, "none", 4, None) is x
    with pytest.raises(ValueError, match="crop_flip"):
        augment_batch(x, "rotate", 4, None)
    with pytest.raises(ValueError, match="padding"):
        augment_batch(x, "crop", -1, None)
    with pytest.raises(ValueError, match="float"):
        augment_batch((x * 255).to(torch.uint8), "crop", 4, None)


# --- batching ---------------------------------------------------------------------------------


def id_split(n: int) -> Split:
    x = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    return Split(x, torch.arange(n))


def test_iterate_batches_covers_each_example_once_with_labels_paired():
    split = id_split(50)
    batches = list(iterate_batches(split, 16, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert [len(y) for _, y in batches] == [16, 16, 16, 2]
    xs = torch.cat([x for x, _ in batches])
    ys = torch.cat([y for _, y in batches])
    assert xs.dtype == torch.float32 and ys.dtype == torch.int64
    assert sorted(ys.tolist()) == list(range(50)) and ys.tolist() != list(range(50))
    # uint8 -> [0, 1] as x * (1/255), the operation CUDA uses for x / 255 too: bit-equal on every device; pairs kept
    assert torch.equal(xs[:, 0, 0, 0], ys.float() * (1 / 255))
    again = iterate_batches(split, 16, shuffle=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ys, torch.cat([y for _, y in again]))


def test_iterate_batches_drop_last_order_and_validation():
    split = id_split(50)
    assert [len(y) for _, y in iterate_batches(split, 16, drop_last=True)] == [16, 16, 16]
    ordered = torch.cat([y for _, y in iterate_batches(split, 7)])
    assert ordered.tolist() == list(range(50))
    with pytest.raises(ValueError, match="batch_size"):
        next(iterate_batches(split, 0))
    with pytest.raises(ValueError, match="augmentation"):
        next(iterate_batches(split, 8, augment="mixup"))


def test_iterate_batches_augments_on_the_fly():
    split = Split((ramp_batch(64) * 255).round().to(torch.uint8), torch.zeros(64, dtype=torch.int64))
    plain = next(iterate_batches(split, 64))[0]
    augmented = next(
        iterate_batches(split, 64, augment="crop", crop_padding=2, generator=torch.Generator().manual_seed(0))
    )[0]
    assert not torch.equal(plain, augmented)
    assert all(crop_offset(a, p, 2) is not None for a, p in zip(augmented, plain))


@pytest.mark.gpu
@requires("cuda")
def test_iterate_batches_on_gpu_matches_cpu():
    split = id_split(40)
    kwargs = dict(shuffle=True, augment="crop_flip", crop_padding=1)
    cpu = list(iterate_batches(split, 16, generator=torch.Generator().manual_seed(0), **kwargs))
    gpu = list(iterate_batches(split, 16, generator=torch.Generator().manual_seed(0), device="cuda", **kwargs))
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        assert xg.device.type == "cuda" and yg.device.type == "cuda"
        assert torch.equal(xc, xg.cpu()) and torch.equal(yc, yg.cpu())


def test_tiny_imagenet_wnids_in_label_order(tmp_path):
    from rift_sweep.core.data.datasets import tiny_imagenet_wnids

    base = tmp_path / "tiny-imagenet-200"
    base.mkdir()
    (base / "wnids.txt").write_text("n02\nn01\nn03\n")
    assert tiny_imagenet_wnids(tmp_path) == ["n02", "n01", "n03"]
    with pytest.raises(FileNotFoundError, match="wnids.txt"):
        tiny_imagenet_wnids(tmp_path / "missing")
