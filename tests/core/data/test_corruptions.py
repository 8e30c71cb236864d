"""Tests for rift_sweep.core.data.corruptions: the corruptions themselves, the -C readers, generation and caching."""

from __future__ import annotations

import colorsys
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_digits

from rift_sweep.core.data.corruptions import (
    CORRUPTIONS,
    FAMILIES,
    OFFICIAL_CORRUPTIONS,
    OODSet,
    _elastic_source_coords,
    _local_shuffle,
    _motion_blur,
    _sweep,
    _sweep_shifts,
    corrupt,
    generate_c,
    load_ood,
    read_cifar_c,
    read_tiny_imagenet_c,
)
from rift_sweep.core.data.datasets import Split

SEVERITIES = (1, 2, 3, 4, 5)


def _digits(n: int, size: int, channels: int) -> torch.Tensor:
    """Real handwritten digits, upscaled, as tinted strokes on a tinted background (real-looking edges
    and flat regions, colour for the colour-aware corruptions)."""
    strokes = torch.tensor(load_digits().images[:n], dtype=torch.float32)[:, None] / 16
    strokes = F.interpolate(strokes, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    if channels == 1:
        return 0.1 + 0.8 * strokes
    generator = torch.Generator().manual_seed(0)
    ink = 0.4 + 0.6 * torch.rand(n, 3, 1, 1, generator=generator)
    paper = 0.4 * torch.rand(n, 3, 1, 1, generator=generator)
    return paper * (1 - strokes) + ink * strokes


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def digits32() -> torch.Tensor:
    return _digits(24, 32, 3)


@pytest.fixture(scope="module")
def corrupted32(digits32) -> dict[tuple[str, int], torch.Tensor]:
    """Every corruption at every severity of the 32x32 batch, seed 0 (computed once, shared)."""
    return {(name, s): corrupt(digits32, name, s, _gen(0)) for name in CORRUPTIONS for s in SEVERITIES}


# ---------------------------------------------------------------- the corruptions


def test_registry_covers_every_family():
    assert len(CORRUPTIONS) >= 10
    assert set(FAMILIES) == {"noise", "blur", "weather", "digital"}
    assert sorted(n for names in FAMILIES.values() for n in names) == sorted(CORRUPTIONS)
    assert set(CORRUPTIONS) <= set(OFFICIAL_CORRUPTIONS)  # names match the published files


def _check_output(x: torch.Tensor, y: torch.Tensor, where: str) -> None:
    assert y.shape == x.shape and y.dtype == torch.float32, where
    assert y.min() >= 0 and y.max() <= 1, where
    assert (y - x).abs().max() > 1e-3, f"unchanged: {where}"


def test_every_corruption_keeps_shape_range_and_is_seeded(digits32, corrupted32):
    for (name, severity), y in corrupted32.items():
        _check_output(digits32, y, f"{name} severity {severity}")
        assert torch.equal(y, corrupt(digits32, name, severity, _gen(0))), f"not deterministic: {name} {severity}"


@pytest.mark.parametrize("shape", [(3, 1, 28, 28), (2, 3, 64, 64), (3, 1, 8, 8)])
def test_every_corruption_works_on_other_sizes(shape):
    n, c, size, _ = shape
    x = _digits(n, size, c)
    for name in CORRUPTIONS:
        for severity in SEVERITIES:
            _check_output(x, corrupt(x, name, severity, _gen(3)), f"{name} severity {severity} on {shape}")


def test_random_corruptions_depend_on_the_seed(digits32, corrupted32):
    deterministic = {"defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression"}
    for name in sorted(set(CORRUPTIONS) - deterministic):
        assert not torch.equal(corrupted32[name, 3], corrupt(digits32, name, 3, _gen(1))), name


@pytest.mark.parametrize("name", sorted(set(CORRUPTIONS) - {"elastic_transform", "glass_blur"}))
def test_damage_grows_with_severity(digits32, corrupted32, name):
    changes = [(corrupted32[name, s] - digits32).abs().mean().item() for s in SEVERITIES]
    # motion blur severities 3 and 4 differ only in taps of weight ~1e-8 (the published table), hence the slack
    assert all(b >= a - 1e-6 for a, b in zip(changes, changes[1:])), (name, changes)
    assert changes[-1] > 1.5 * changes[0], (name, changes)


def test_elastic_local_deformation_grows_with_severity():
    """The CIFAR-10-C table shrinks the global affine jitter while it raises the local (non-affine)
    displacement, so pixel error falls with severity; the damage is the local warping. Its measure:
    the Laplacian of the sampling map, exactly zero for an affine map."""

    def warping(severity: int) -> float:
        source = _elastic_source_coords(16, 32, 32, severity, _gen(0), torch.device("cpu"))
        lap = (
            4 * source[:, 1:-1, 1:-1]
            - source[:, :-2, 1:-1]
            - source[:, 2:, 1:-1]
            - source[:, 1:-1, :-2]
            - source[:, 1:-1, 2:]
        )
        return lap.abs().mean().item()

    values = [warping(s) for s in SEVERITIES]
    assert values[0] < 1e-4  # severity 1 is the affine part alone
    assert all(b > a for a, b in zip(values, values[1:])), values


def test_glass_blur_each_knob_adds_damage(digits32, corrupted32):
    """The table raises sigma over severities 1-3, then doubles the passes with a smaller sigma (4-5), so no
    single pixel error is monotone. Each knob does damage in its own direction: more blur at equal passes
    removes more detail; a second pass at equal sigma moves pixels further."""
    outputs = {s: corrupted32["glass_blur", s] for s in SEVERITIES}

    def detail(y: torch.Tensor) -> float:
        return ((y[..., 1:, :] - y[..., :-1, :]).abs().mean() + (y[..., 1:] - y[..., :-1]).abs().mean()).item()

    assert detail(outputs[1]) > detail(outputs[2]) > detail(outputs[3])
    assert detail(outputs[4]) > detail(outputs[5])
    change = {s: (y - digits32).abs().mean().item() for s, y in outputs.items()}
    assert change[4] > change[2] and change[5] > change[3]  # same sigma, two passes instead of one


def test_glass_shuffle_wavefronts_equal_the_sequential_sweep():
    n, c, h, w, d = 3, 2, 11, 9, 1
    x = torch.arange(n * c * h * w, dtype=torch.float32).reshape(n, c, h, w)
    positions, _ = _sweep(h, w, d)
    shifts = _sweep_shifts(n, len(positions), d, _gen(5))
    expected = x.clone()
    k = 0
    for r in range(h - d, d, -1):  # the reference's loop, one swap at a time
        for col in range(w - d, d, -1):
            for i in range(n):
                rr, cc = r + int(shifts[0, k, i]), col + int(shifts[1, k, i])
                kept = expected[i, :, r, col].clone()
                expected[i, :, r, col] = expected[i, :, rr, cc]
                expected[i, :, rr, cc] = kept
            k += 1
    assert torch.equal(_local_shuffle(x, d, shifts), expected)


def test_motion_blur_streaks_an_impulse_along_the_angle():
    x = torch.zeros(1, 1, 32, 32)
    x[0, 0, 10, 20] = 1
    out = _motion_blur(x, 6, 1.0, torch.tensor([0.0]))[0, 0]
    taps = torch.exp(-(torch.arange(13.0) ** 2) / 2)
    taps /= taps.sum()
    # ImageMagick's kernel at angle 0 reads pixels to the right, so an impulse smears to the left
    assert torch.allclose(out[10, 8:21].flip(0), taps, atol=1e-6)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_brightness_matches_an_hsv_value_shift():
    x = torch.rand(2, 3, 4, 4, generator=_gen(0))
    x[0, :, 0, 0] = 0  # black turns grey
    y = corrupt(x, "brightness", 5, None)
    for n, i, j in [(0, 0, 0), (0, 1, 2), (1, 3, 3), (1, 2, 0)]:
        h, s, v = colorsys.rgb_to_hsv(*x[n, :, i, j].tolist())
        expected = colorsys.hsv_to_rgb(h, s, min(v + 0.3, 1.0))
        assert y[n, :, i, j].tolist() == pytest.approx(expected, abs=1e-5)


def test_pixelate_matches_pil_box_resampling():
    x = _digits(3, 32, 3)
    images = (x * 255).round().to(torch.uint8)
    y = (corrupt(images.float() / 255, "pixelate", 4, None) * 255).round()
    for n in range(3):
        pil = Image.fromarray(images[n].permute(1, 2, 0).numpy())
        pil = pil.resize((24, 24), Image.BOX).resize((32, 32), Image.BOX)
        expected = torch.from_numpy(np.array(pil)).permute(2, 0, 1).float()
        assert (y[n] - expected).abs().max() <= 2  # PIL rounds in fixed point twice


def test_corrupt_rejects_bad_input(digits32):
    with pytest.raises(ValueError, match="gaussian_noise"):
        corrupt(digits32, "gausian_noise", 1, None)
    for bad in (0, 6, 2.0, True):
        with pytest.raises(ValueError, match=r"\(1, 2, 3, 4, 5\)"):
            corrupt(digits32, "contrast", bad, None)
    with pytest.raises(ValueError, match="float"):
        corrupt((digits32 * 255).to(torch.uint8), "contrast", 1, None)
    with pytest.raises(ValueError, match=r"severity"):
        CORRUPTIONS["contrast"](digits32, 0, None)  # direct calls validate too (no silent table[-1])


# ---------------------------------------------------------------- readers of the published layouts


def _write_cifar_c(folder: Path, names: list[str], n: int = 6) -> np.ndarray:
    """The CIFAR-10-C layout: <corruption>.npy uint8 [5n, 32, 32, 3] severity 1 first, labels.npy uint8 [5n]."""
    folder.mkdir(parents=True)
    labels = np.tile(np.arange(n, dtype=np.uint8) % 10, 5)
    np.save(folder / "labels.npy", labels)
    for k, name in enumerate(names):
        images = np.zeros((5 * n, 32, 32, 3), dtype=np.uint8)
        for row in range(5 * n):
            severity, index = divmod(row, n)
            images[row, :, :, 0] = 10 * (severity + 1) + index  # encodes where the row came from
            images[row, :, :, 2] = k
        np.save(folder / f"{name}.npy", images)
    return labels


def test_read_cifar_c_picks_severity_blocks(tmp_path):
    _write_cifar_c(tmp_path / "CIFAR-10-C", ["gaussian_noise", "contrast"])
    sets = read_cifar_c(tmp_path / "CIFAR-10-C", ["gaussian_noise", "contrast"], severities=(2, 5))
    assert list(sets) == ["gaussian_noise", "contrast"]
    x, y = sets["contrast"].x, sets["contrast"].y
    assert x.dtype == torch.uint8 and x.shape == (12, 3, 32, 32) and y.dtype == torch.int64
    assert x[:, 0, 0, 0].tolist() == [20 + i for i in range(6)] + [50 + i for i in range(6)]
    assert x[:, 2].unique().tolist() == [1]  # NHWC -> NCHW kept the channels apart
    assert y.tolist() == [0, 1, 2, 3, 4, 5] * 2


def test_read_cifar_c_names_missing_files(tmp_path):
    _write_cifar_c(tmp_path / "c", ["gaussian_noise"])
    with pytest.raises(FileNotFoundError, match="fog.npy"):
        read_cifar_c(tmp_path / "c", ["gaussian_noise", "fog"])


def _write_tiny_imagenet_c(folder: Path, wnids: list[str], names: list[str]) -> None:
    """The Tiny-ImageNet-C layout: <corruption>/<severity>/<wnid>/*.JPEG (64x64)."""
    for name in names:
        for severity in SEVERITIES:
            for k, wnid in enumerate(wnids):
                d = folder / name / str(severity) / wnid
                d.mkdir(parents=True)
                for i in range(2):
                    value = 40 * k + 10 * i + severity
                    mode = "L" if (k, i) == (0, 1) else "RGB"  # some Tiny-ImageNet JPEGs are grayscale
                    Image.new(mode, (64, 64), value if mode == "L" else (value,) * 3).save(
                        d / f"val_{k}_{i}.JPEG", format="JPEG", quality=95
                    )


def test_read_tiny_imagenet_c_labels_follow_the_wnid_list(tmp_path):
    wnids = ["n09", "n01", "n05"]  # wnids.txt order, not sorted
    _write_tiny_imagenet_c(tmp_path / "Tiny-ImageNet-C", wnids, ["fog"])
    sets = read_tiny_imagenet_c(tmp_path / "Tiny-ImageNet-C", wnids, ["fog"], severities=(1, 4))
    x, y = sets["fog"].x, sets["fog"].y
    assert x.shape == (12, 3, 64, 64) and x.dtype == torch.uint8
    # folders are read in sorted order (n01, n05, n09) -> list positions 1, 2, 0
    assert y.tolist() == [1, 1, 2, 2, 0, 0] * 2
    expected = [40 * k + 10 * i + s for s in (1, 4) for k in (1, 2, 0) for i in (0, 1)]
    assert (x.float().mean(dim=(1, 2, 3)) - torch.tensor(expected)).abs().max() <= 2


def test_read_tiny_imagenet_c_errors(tmp_path):
    _write_tiny_imagenet_c(tmp_path / "t", ["n01"], ["fog"])
    with pytest.raises(FileNotFoundError, match="snow/1"):
        read_tiny_imagenet_c(tmp_path / "t", ["n01"], ["fog", "snow"])
    with pytest.raises(ValueError, match="wnids"):
        read_tiny_imagenet_c(tmp_path / "t", ["n02"], ["fog"])


# ---------------------------------------------------------------- generation, cache and load_ood


@pytest.fixture()
def small_split() -> Split:
    x = (_digits(10, 32, 3) * 255).round().to(torch.uint8)
    return Split(x, torch.arange(10, dtype=torch.int64) % 3)


def _npy_stamps(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.npy")}


def test_generated_set_is_written_once_in_the_cifar_c_layout(tmp_path, small_split, caplog):
    caplog.set_level(logging.INFO, logger="rift_sweep.core.data.corruptions")
    names = ["gaussian_noise", "zoom_blur", "jpeg_compression"]
    ood = load_ood(small_split, dataset="cifar10", root=None, cache_dir=tmp_path, seed=1, corruptions=names)
    assert [r.message for r in caplog.records if r.message.startswith("generating")]
    assert ood.source == "generated" and ood.severities == SEVERITIES and list(ood.sets) == names
    (folder,) = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    info = json.loads((folder / "info.json").read_text())
    assert info["source"] == "generated" and info["seed"] == 1 and info["corruptions"] == names
    stored = np.load(folder / "zoom_blur.npy")
    assert stored.dtype == np.uint8 and stored.shape == (50, 32, 32, 3)
    assert np.array_equal(np.load(folder / "labels.npy"), np.tile(small_split.y.numpy(), 5))
    # the official reader accepts it, and severity blocks hold the corrupted copies of the split in order
    again = read_cifar_c(folder, names)["zoom_blur"]
    assert torch.equal(again.x, ood.sets["zoom_blur"].x)
    expected = (corrupt(small_split.x.float() / 255, "zoom_blur", 3, None) * 255).round().to(torch.uint8)
    assert torch.equal(ood.sets["zoom_blur"].x[20:30], expected)

    stamps = _npy_stamps(folder)
    caplog.clear()
    second = load_ood(small_split, dataset="cifar10", root=None, cache_dir=tmp_path, seed=1, corruptions=names)
    assert _npy_stamps(folder) == stamps  # read back, not regenerated
    assert not [r.message for r in caplog.records if r.message.startswith("generating")]
    assert len(list(tmp_path.iterdir())) == 1  # no leftover temporary folder
    for name in names:
        assert torch.equal(second.sets[name].x, ood.sets[name].x)
        assert torch.equal(second.sets[name].y, ood.sets[name].y)


def test_a_subset_generates_only_the_source_images_it_keeps(tmp_path, small_split):
    kwargs = dict(dataset="cifar10", root=None, seed=2, corruptions=["contrast", "fog"], severities=(1, 4))
    full = load_ood(small_split, cache_dir=tmp_path / "full", **kwargs)
    few = load_ood(small_split, cache_dir=tmp_path / "few", per_corruption=6, **kwargs)  # 3 per severity
    (folder,) = [p for p in (tmp_path / "few").iterdir() if not p.name.startswith(".")]
    assert json.loads((folder / "info.json").read_text())["images_per_severity"] == 3  # not the split's 10
    kept = full.subset(6, seed=2)
    for name in kwargs["corruptions"]:  # the same source images as subsetting the whole generated copy
        assert torch.equal(few.sets[name].y, kept.sets[name].y) and few.sets[name].x.shape == kept.sets[name].x.shape
    # contrast draws no noise: the kept images' corrupted copies are the very same
    assert torch.equal(few.sets["contrast"].x, kept.sets["contrast"].x)


def test_generated_cache_key_follows_inputs(tmp_path, small_split):
    kwargs = dict(dataset="digits", seed=0, corruptions=["contrast"], severities=(1, 3))
    first = generate_c(small_split, tmp_path, **kwargs)
    assert generate_c(small_split, tmp_path, **kwargs) == first
    assert generate_c(small_split, tmp_path, **{**kwargs, "seed": 1}) != first
    assert generate_c(small_split, tmp_path, **{**kwargs, "severities": (1, 4)}) != first
    changed = Split(small_split.x.clone(), small_split.y.clone())
    changed.x[0, 0, 0, 0] ^= 1
    assert generate_c(changed, tmp_path, **kwargs) != first
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 4


def test_generated_one_channel_small_images(tmp_path):
    x = (_digits(6, 8, 1) * 255).round().to(torch.uint8)
    ood = load_ood(
        Split(x, torch.zeros(6, dtype=torch.int64)),
        dataset="digits",
        root=None,
        cache_dir=tmp_path,
        corruptions=["glass_blur", "snow", "jpeg_compression"],
        severities=(5,),
    )
    assert {tuple(s.x.shape) for s in ood.sets.values()} == {(6, 1, 8, 8)}


def test_load_ood_uses_the_real_set_when_present(tmp_path, small_split):
    _write_cifar_c(tmp_path / "data" / "CIFAR-10-C", ["gaussian_noise", "contrast"])
    kwargs = dict(dataset="cifar10", cache_dir=tmp_path / "cache", corruptions=["contrast"], severities=(1, 2))
    for root in (tmp_path / "data", tmp_path / "data" / "CIFAR-10-C"):  # the parent or the folder itself
        real = load_ood(small_split, root=root, **kwargs)
        assert real.source == "real" and real.sets["contrast"].x.shape == (12, 3, 32, 32)
    assert not (tmp_path / "cache").exists()
    generated = load_ood(small_split, root=tmp_path / "data", use_real=False, **kwargs)
    assert generated.source == "generated" and generated.sets["contrast"].x.shape == (20, 3, 32, 32)
    missing_root = load_ood(small_split, root=tmp_path / "nowhere", **kwargs)
    assert missing_root.source == "generated"
    with pytest.raises(FileNotFoundError, match="fog.npy"):
        load_ood(small_split, root=tmp_path / "data", **{**kwargs, "corruptions": ["contrast", "fog"]})


def test_load_ood_tiny_imagenet_real(tmp_path):
    wnids = ["n02", "n01"]
    _write_tiny_imagenet_c(tmp_path / "Tiny-ImageNet-C", wnids, ["contrast"])
    split = Split(torch.zeros(1, 3, 64, 64, dtype=torch.uint8), torch.zeros(1, dtype=torch.int64))
    kwargs = dict(dataset="tiny-imagenet", root=tmp_path, cache_dir=tmp_path / "cache", corruptions=["contrast"])
    ood = load_ood(split, wnids=wnids, **kwargs)
    assert ood.source == "real" and ood.sets["contrast"].x.shape == (20, 3, 64, 64)
    with pytest.raises(ValueError, match="wnids"):
        load_ood(split, **kwargs)


def test_load_ood_rejects_bad_names_and_severities(tmp_path, small_split):
    kwargs = dict(dataset="cifar10", root=None, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="choose from .*gaussian_noise"):
        load_ood(small_split, corruptions=["rain"], **kwargs)
    with pytest.raises(ValueError, match="frost"):
        load_ood(small_split, corruptions=["frost"], **kwargs)
    with pytest.raises(ValueError, match=r"\(1, 2, 3, 4, 5\)"):
        load_ood(small_split, severities=(0, 1), **kwargs)
    with pytest.raises(ValueError, match="distinct"):
        load_ood(small_split, severities=(2, 2), **kwargs)
    with pytest.raises(ValueError, match="list of names"):
        load_ood(small_split, corruptions="fog", **kwargs)
    assert not any(tmp_path.iterdir())  # nothing was computed or written


def test_subset_takes_the_same_images_everywhere():
    n, severities = 20, (1, 3, 5)
    base = torch.arange(n, dtype=torch.uint8)
    sets = {}
    for k, name in enumerate(["a", "b"]):
        x = torch.stack([base + 50 * b for b in range(3)]).reshape(-1)  # value = 50 * block + index
        x = (x[:, None, None, None] + k).expand(-1, 1, 2, 2).contiguous()
        sets[name] = Split(x, (base.long() % 4).repeat(3))
    ood = OODSet("generated", sets, severities)
    small = ood.subset(7, seed=3)  # 7 // 3 = 2 images per severity
    assert small.source == "generated" and small.severities == severities
    values = small.sets["a"].x[:, 0, 0, 0].long()
    assert len(values) == 6
    index, block = values % 50, values // 50
    assert block.tolist() == [0, 0, 1, 1, 2, 2] and index[:2].tolist() == index[2:4].tolist() == index[4:].tolist()
    assert torch.equal(small.sets["b"].x - 1, small.sets["a"].x)  # same rows in every corruption
    assert torch.equal(small.sets["a"].y, index % 4)
    assert torch.equal(ood.subset(7, seed=3).sets["a"].x, small.sets["a"].x)
    assert not torch.equal(ood.subset(7, seed=4).sets["a"].x, small.sets["a"].x)
    assert ood.subset(None, seed=0) is ood and ood.subset(60, seed=0) is ood
    with pytest.raises(ValueError, match="positive"):
        ood.subset(0, seed=0)
