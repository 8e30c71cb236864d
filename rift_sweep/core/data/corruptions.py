"""Common corruptions for OOD accuracy: batched torch implementations, readers of the published -C sets,
and a cached generator of -C style copies of any split.

The corruptions follow Hendrycks & Dietterich (ICLR 2019) with the CIFAR-10-C severity parameters
(their make_cifar_c.py), not ImageNet-C's, which are far harsher on small images. Every function takes
a float batch [N, C, H, W] in [0, 1] (C = 1 or 3, any device), a severity 1..5 and an optional
torch.Generator, and returns a batch of the same shape clamped to [0, 1]. Random numbers are drawn on
the generator's device and moved to the batch's, so a CPU generator gives the same draws for a CPU or
a GPU batch.

Image size. The parameters are the 32x32 ones. Spatial lengths in pixels (blur sigmas, the motion-blur
length, the glass-blur shuffle distance; the defocus kernel is stretched whole) are multiplied by
s = max(1, min(H, W) / 32): a 64x64 image gets twice the blur, while smaller images (28x28, 8x8) keep
the 32x32 pixel values, because a blur narrower than a pixel does nothing; on 8x8 images blurs are
therefore relatively strong. Zoom, pixelate, elastic and fog are relative to the image size by
construction; noise, brightness, contrast and JPEG act per pixel and need no scaling.

Faithfulness. Each corruption reproduces the reference recipe and parameters; where the reference
relies on a library we re-implement the operation, and a few details differ on purpose: zoom blur
zooms geometrically about the centre (the reference crops and rounds sizes first); elastic transform
samples the composed affine + elastic map once instead of twice; motion blur uses ImageMagick's kernel
(one-sided Gaussian taps along a random angle, rounded to whole pixels, edge pixels repeated). Glass
blur keeps the reference's sequential pixel-swapping sweep exactly (vectorised over images, and over
wavefronts of swaps that cannot interact). Frost is not available: it needs the reference's frost
photographs. Generated images are rounded to uint8 (the reference truncates).

Data. `load_ood` returns an `OODSet` with `source` "real" (CIFAR-10-C / CIFAR-100-C /
Tiny-ImageNet-C read from disk; these match the official TEST split only) or "generated" (a
corrupted copy of the given split, written once to a cache folder in the CIFAR-10-C layout and read
back on later calls).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from rift_sweep.core.data.datasets import Split
from rift_sweep.core.files import content_key

logger = logging.getLogger(__name__)

SEVERITIES = (1, 2, 3, 4, 5)

# ---- CIFAR-10-C parameters, one entry per severity 1..5 (make_cifar_c.py, Hendrycks & Dietterich 2019) ----
GAUSSIAN_NOISE_STD = (0.04, 0.06, 0.08, 0.09, 0.10)
SHOT_NOISE_PHOTONS = (500, 250, 100, 75, 50)  # Poisson rate per unit intensity
IMPULSE_NOISE_AMOUNT = (0.01, 0.02, 0.03, 0.05, 0.07)  # fraction of values set to 0 or 1
DEFOCUS_BLUR = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1))  # disk radius, anti-alias sigma (px)
GLASS_BLUR = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))  # sigma, max shift, passes
MOTION_BLUR = ((6, 1.0), (6, 1.5), (6, 2.0), (8, 2.0), (9, 2.5))  # ImageMagick radius, sigma (px)
ZOOM_BLUR_FACTORS = (7, 12, 16, 21, 26)  # number of zoom factors 1.00, 1.01, ... averaged (the reference's arange)
# snow: flake mean, flake std, flake zoom, flake threshold, motion radius, motion sigma, image kept
SNOW = (
    (0.1, 0.2, 1.0, 0.6, 8, 3, 0.95),
    (0.1, 0.2, 1.0, 0.5, 10, 4, 0.9),
    (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
    (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
    (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
)
FOG = ((0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75))  # fog strength, fractal roughness decay
BRIGHTNESS = (0.05, 0.1, 0.15, 0.2, 0.3)  # added to HSV value
CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)  # factor on the deviation from the per-channel mean
# elastic: displacement amplitude, displacement smoothness (sigma), affine point jitter; fractions of image size
ELASTIC = ((0.0, 0.0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))
PIXELATE = (0.95, 0.9, 0.85, 0.75, 0.65)  # size factor of the box-filtered thumbnail
JPEG_QUALITY = (80, 65, 58, 50, 40)

Corruption = Callable[[Tensor, int, "torch.Generator | None"], Tensor]


# ---------------------------------------------------------------- helpers


def _param(table: Sequence, severity: int):
    if isinstance(severity, bool) or not isinstance(severity, int) or not 1 <= severity <= 5:
        raise ValueError(f"severity must be an int in {SEVERITIES}; got {severity!r}")
    return table[severity - 1]


def _spatial_scale(x: Tensor) -> float:
    return max(1.0, min(x.shape[-2:]) / 32)


def _draw_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _uniform(
    shape: Sequence[int],
    low: float,
    high: float,
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    u = torch.rand(tuple(shape), generator=generator, device=_draw_device(generator), dtype=dtype)
    return (low + (high - low) * u).to(device)


def _normal(
    shape: Sequence[int], mean: float, std: float, generator: torch.Generator | None, device: torch.device
) -> Tensor:
    z = torch.randn(tuple(shape), generator=generator, device=_draw_device(generator))
    return (mean + std * z).to(device)


def _to_uint8(x: Tensor) -> Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _quantise(x: Tensor) -> Tensor:
    """Round-trip through uint8, as the reference does wherever it saves an intermediate image."""
    return _to_uint8(x).to(x.dtype) / 255


def _depthwise(x: Tensor, kernel: Tensor, pad: tuple[int, int, int, int], pad_mode: str) -> Tensor:
    """Same 2-D kernel on every channel of every image; pad = (left, right, top, bottom)."""
    n, c, h, w = x.shape
    padded = F.pad(x.reshape(n * c, 1, h, w), pad, mode=pad_mode)
    # One image of n*c channels convolved group-wise: several times faster on CPU than n*c images of one.
    weight = kernel.to(x)[None, None].expand(n * c, 1, *kernel.shape)
    return F.conv2d(padded.reshape(1, n * c, *padded.shape[-2:]), weight, groups=n * c).reshape(n, c, h, w)


def _gaussian_blur(x: Tensor, sigma: float, *, truncate: float = 4.0, pad_mode: str = "replicate") -> Tensor:
    """scipy/skimage-style Gaussian filter over H and W (radius int(truncate * sigma + 0.5))."""
    radius = int(truncate * sigma + 0.5)
    if pad_mode == "reflect":  # torch's reflect padding needs pad < size
        radius = min(radius, min(x.shape[-2:]) - 1)
    if sigma <= 0 or radius == 0:
        return x
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    x = _depthwise(x, k[None, :], (radius, radius, 0, 0), pad_mode)
    return _depthwise(x, k[:, None], (0, 0, radius, radius), pad_mode)


@functools.lru_cache(maxsize=256)
def _zoom_matrix(size: int, factor: float) -> Tensor:
    """[size, size] linear interpolation weights of a zoom by `factor` about the centre along one axis."""
    source = ((torch.arange(size, dtype=torch.float64) + 0.5 - size / 2) / factor + size / 2 - 0.5).clamp(0, size - 1)
    low = source.floor().long()
    high = (low + 1).clamp(max=size - 1)
    frac = source - low
    matrix = torch.zeros(size, size, dtype=torch.float64)
    rows = torch.arange(size)
    matrix.index_put_((rows, low), 1 - frac, accumulate=True)
    matrix.index_put_((rows, high), frac, accumulate=True)
    return matrix


def _resample(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """rows @ x @ cols.T for every image and channel, as two large matrix products (a batched product of
    many tiny matrices costs far more per image on CPU)."""
    x = x @ cols.to(x).T
    return (x.transpose(-1, -2) @ rows.to(x).T).transpose(-1, -2).contiguous()


def _zoom(x: Tensor, factor: float) -> Tensor:
    """Zoom into the centre by `factor` (>= 1), keeping the size (the reference's clipped_zoom).
    Bilinear zoom is separable, so it is two matrix products instead of a grid_sample."""
    return _resample(x, _zoom_matrix(x.shape[-2], factor), _zoom_matrix(x.shape[-1], factor))


def _motion_blur(x: Tensor, radius: float, sigma: float, angles_deg: Tensor) -> Tensor:
    """ImageMagick's MotionBlurImage: 2*ceil(radius)+1 one-sided Gaussian taps along each image's angle,
    offsets rounded to whole pixels, pixels past the border repeat the edge."""
    n, _, h, w = x.shape
    taps = torch.arange(2 * math.ceil(radius) + 1, dtype=torch.float64)
    weights = torch.exp(-(taps**2) / (2 * sigma**2))
    weights = weights / weights.sum()
    theta = torch.deg2rad(angles_deg.to(torch.float64, copy=True).cpu())[:, None]
    dx = torch.ceil(taps * torch.cos(theta) - 0.5).long()  # [n, taps] column offsets
    dy = torch.ceil(taps * torch.sin(theta) - 0.5).long()
    pad = len(taps) - 1
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    out = torch.zeros_like(x)
    # Images sharing a tap's offset are shifted together by slicing: far faster than a per-pixel gather.
    # Taps below 1e-6 are skipped: all of them together move a pixel by far less than one grey level.
    for t in torch.nonzero(weights >= 1e-6).flatten().tolist():
        codes = (dy[:, t] + pad) * (2 * pad + 1) + dx[:, t] + pad
        for code in codes.unique().tolist():
            members = (codes == code).nonzero().flatten().to(x.device)
            top, left = divmod(code, 2 * pad + 1)
            window = padded[members, :, top : top + h, left : left + w]
            out.index_add_(0, members, window, alpha=float(weights[t]))
    return out


def _luma(x: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


# ---------------------------------------------------------------- noise


def gaussian_noise(x: Tensor, severity: int, generator: torch.Generator | None = None) -> Tensor:
    std = _param(GAUSSIAN_NOISE_STD, severity)
    return (x + _normal(x.shape, 0.0, std, generator, x.device)).clamp(0, 1)


def shot_noise(x: Tensor, severity: int, generator: torch.Generator | None = None) -> Tensor:
    photons = _param(SHOT_NOISE_PHOTONS, severity)
    rates = (x.clamp(0, 1) * photons).to(_draw_device(generator), torch.float32)
    return (torch.poisson(rates, generator=generator).to(x) / photons).clamp(0, 1)


def impulse_noise(x: Tensor, severity: int, generator: torch.Generator | None = None) -> Tensor:
    """Salt and pepper: each value (per channel, as skimage's random_noise) flips to 0 or 1 with equal odds."""
    amount = _param(IMPULSE_NOISE_AMOUNT, severity)
    flipped = _uniform(x.shape, 0, 1, generator, x.device) < amount
    salt = (_uniform(x.shape, 0, 1, generator, x.device) < 0.5).to(x.dtype)
    return torch.where(flipped, salt, x).clamp(0, 1)


# ---------------------------------------------------------------- blur


@functools.lru_cache(maxsize=64)
def _defocus_kernel(radius: float, alias_sigma: float, scale: float) -> Tensor:
    """A pixelated disk anti-aliased by a 3x3 Gaussian (the reference's disk() + cv2.GaussianBlur), built at
    32 px and stretched by `scale` (bilinear, odd size, centre kept). Scaling the radius and sigma instead
    would re-pixelate the disk and break the order of the severities on larger images."""
    half = math.ceil(radius) + 1  # room for the anti-alias blur to spread without loss
    t = torch.arange(-half, half + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    disk = (xx**2 + yy**2 <= radius**2).to(torch.float64)
    disk /= disk.sum()
    g = torch.exp(-torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64) / (2 * alias_sigma**2))
    kernel = F.conv2d(disk[None, None], torch.outer(g, g)[None, None] / g.sum() ** 2, padding=1)
    if scale != 1:
        big = round(half * scale)
        kernel = F.interpolate(kernel, size=(2 * big + 1, 2 * big + 1), mode="bilinear", align_corners=True)
    return (kernel / kernel.sum())[0, 0]


def defocus_blur(x: Tensor, severity: int, generator: torch.Generator | None = None) -> Tensor:
    radius, alias_sigma = _param(DEFOCUS_BLUR, severity)
    kernel = _defocus_kernel(radius, alias_sigma, _spatial_scale(x))
    half = kernel.shape[0] // 2
    return _depthwise(x, kernel, (half, half, half, half), "reflect").clamp(0, 1)  # cv2.filter2D's border


def _sweep(h: int, w: int, max_shift: int) -> tuple[Tensor, list[Tensor]]:
    """The positions the reference's glass-blur sweep visits (bottom-right to top-left, row by row), and
    the same positions grouped into wavefronts. A swap at (r, c) touches rows r-d..r+d-1 and columns
    c-d..c+d-1 (d = max_shift), so two swaps conflict only within 2d-1 rows and columns. Step
    2d * (rows up) + (columns left) keeps every conflicting pair in sweep order and puts only disjoint
    swaps in one wavefront, so wavefront by wavefront gives exactly the sequential result."""
    rows = torch.arange(h - max_shift, max_shift, -1)
    cols = torch.arange(w - max_shift, max_shift, -1)
    r, c = torch.meshgrid(rows, cols, indexing="ij")
    positions = (r * w + c).flatten()
    step = (2 * max_shift * (rows[0] - r) + (cols[0] - c)).flatten()
    return positions, [torch.nonzero(step == s).flatten() for s in step.unique().tolist()]


def _sweep_shifts(n: int, count: int, max_shift: int, generator: torch.Generator | None) -> Tensor:
    """[2, count, n] row and column shifts in [-max_shift, max_shift) (numpy's randint range, as the reference)."""
    return torch.randint(-max_shift, max_shift, (2, count, n), generator=generator, device=_draw_device(generator))


def _local_shuffle(x: Tensor, max_shift: int, shifts: Tensor) -> Tensor:
    """Swap each swept pixel with the one `shifts` away, in sweep order: pixels moved early can move again."""
    n, c, h, w = x.shape
    positions, wavefronts = _sweep(h, w, max_shift)
    positions = positions.to(x.device)
    partners = positions[:, None] + shifts[0].to(x.device) * w + shifts[1].to(x.device)  # [count, n]
    pixels = x.permute(0, 2, 3, 1).reshape(n, h * w, c).contiguous()
    batch = torch.arange(n, device=x.device)[:, None]
    for wave in wavefronts:
        wave = wave.to(x.device)
        here, there = positions[wave], partners[wave].T  # [k], [n, k]
        kept = pixels[:, here]
        pixels[:, here] = pixels[batch, there]
        pixels[batch, there] = kept
    return pixels.reshape(n, h, w, c).permute(0, 3, 1, 2)


def glass_blur(x: Tensor, severity: int, generator: torch.Generator | None = None) -> Tensor:
    sigma, max_shift, passes = _param(GLASS_BLUR, severity)
    scale = _spatial_scale(x)
    sigma *= scale
    max_shift = max(1, round(max_shift * scale))
    count = len(_sweep(*x.shape[-2:], max_shift)[0])
    shuffled = _quantise(_gaussian_blur(x, sigma))  # the reference shuffles a uint8 image
    for _ in range(passes):
        shuffled = _local_shuffle(shuffled, max_shift, _sweep_shifts(x.shape[0], count, max_shift, generator))
    return _gaussian_blur(shuffled, sigma).clamp(0, 1)


def motion_blur(x: Tensor, severity: int, generator: torch.Generator | None = None) -> Tensor:
    radius, sigma = _param(MOTION_BLUR, severity)
    scale = _spatial_scale(x)
    angles = _uniform((x.shape[0],), -45, 45, generator, torch.device("cpu"), torch.float64)
    return _motion_blur(x, radius * scale, sigma * scale, angles).clamp(0, 1)


def zoom_blur(x: Tensor, severity: int, generator: torch.Generator | None = None) -> Tensor:
    """Average of the image and its zooms by 1.00, 1.01, ... (7 to 26 of them)."""
    count = _param(ZOOM_BLUR_FACTORS, severity)
    total = 2 * x  # the image itself, and its zoom by 1.00
    for k in range(1, count):
        total += _zoom(x, 1 + 0.01 * k)
    return (total / (count + 1)).clamp(0, 1)


# ---------------------------------------------------------------- weather


def snow(x: Tensor, severity: int, generator: torch.Generator | None = None) -> Tensor:
    """Thresholded, zoomed Gaussian flakes, motion-blurred at a random downward angle, added twice
    (once rotated by 180 degrees) over a whitened image."""
    mean, std, zoom, threshold, radius, sigma, kept = _param(SNOW, severity)
    n, _, h, w = x.shape
    scale = _spatial_scale(x)
    flakes = _normal((n, 1, h, w), mean, std, generator, x.device).to(x.dtype)
    flakes = _zoom(flakes, zoom)
    flakes = _quantise(torch.where(flakes < threshold, 0.0, flakes))  # the reference saves it as PNG
    angles = _uniform((n,), -135, -45, generator, torch.device("cpu"), torch.float64)
    flakes = _quantise(_motion_blur(flakes, radius * scale, sigma * scale, angles))
    whitened = kept * x + (1 - kept) * torch.maximum(x, _luma(x) * 1.5 + 0.5)
    return (whitened + flakes + flakes.flip(-2, -1)).clamp(0, 1)


def _plasma_fractal(n: int, size: int, decay: float, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Diamond-square height maps [n, size, size] in [0, 1] (size a power of two, wrapping at the edges):
    each level sets square centres, then edge midpoints, to the mean of their four neighbours plus
    uniform noise whose amplitude shrinks by `decay` per level."""
    heights = torch.zeros(size, size, n, dtype=torch.float64)  # batch last: strided slices copy whole rows
    step, wibble = size, 100.0

    def noisy_mean(total: Tensor) -> Tensor:
        # the reference's noise is wibble * U(-wibble, wibble)
        return total / 4 + wibble * _uniform(
            total.shape, -wibble, wibble, generator, torch.device("cpu"), torch.float64
        )

    while step >= 2:
        half = step // 2
        corners = heights[::step, ::step]
        around = corners + corners.roll(-1, dims=0)
        heights[half::step, half::step] = noisy_mean(around + around.roll(-1, dims=1))
        centres = heights[half::step, half::step]
        corners = heights[::step, ::step]
        heights[::step, half::step] = noisy_mean(centres + centres.roll(1, dims=0) + corners + corners.roll(-1, dims=1))
        heights[half::step, ::step] = noisy_mean(centres + centres.roll(1, dims=1) + corners + corners.roll(-1, dims=0))
        step, wibble = half, wibble / decay
    low = heights.amin(dim=(0, 1), keepdim=True)
    high = heights.amax(dim=(0, 1), keepdim=True)
    return ((heights - low) / (high - low)).permute(2, 0, 1).to(device)


def fog(x: Tensor, severity: int, generator: torch.Generator | None = None) -> Tensor:
    strength, decay = _param(FOG, severity)
    n, _, h, w = x.shape
    size = 1 << (max(h, w) - 1).bit_length()  # the fractal needs a power-of-two side
    haze = _plasma_fractal(n, size, decay, generator, x.device)[:, None, :h, :w].to(x.dtype)
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    return ((x + strength * haze) * peak / (peak + strength)).clamp(0, 1)


def brightness(x: Tensor, severity: int, generator: torch.Generator | None = None) -> Tensor:
    """Add to the HSV value. With hue and saturation fixed every channel is proportional to the value
    (max channel), so this rescales RGB by new/old value; black pixels (saturation 0) turn grey."""
    shift = _param(BRIGHTNESS, severity)
    value = x.amax(dim=1, keepdim=True)
    new_value = (value + shift).clamp(max=1)
    scaled = x * new_value / value.clamp_min(1e-12)
    return torch.where(value > 0, scaled, new_value.expand_as(x)).clamp(0, 1)


# ---------------------------------------------------------------- digital


def contrast(x: Tensor, severity: int, generator: torch.Generator | None = None) -> Tensor:
    factor = _param(CONTRAST, severity)
    means = x.mean(dim=(2, 3), keepdim=True)
    return ((x - means) * factor + means).clamp(0, 1)


def _elastic_source_coords(
    n: int, h: int, w: int, severity: int, generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """For every output pixel, the (x, y) source position in pixels [n, h, w, 2]: a random affine map
    (three points jittered) composed with a smoothed random displacement field."""
    amplitude, smoothness, jitter = (f * min(h, w) for f in _param(ELASTIC, severity))
    cx, cy, arm = w // 2, h // 2, min(h, w) // 3
    points = torch.tensor([[cx + arm, cy + arm], [cx + arm, cy - arm], [cx - arm, cy - arm]], dtype=torch.float64)
    moved = points + _uniform((n, 3, 2), -jitter, jitter, generator, torch.device("cpu"), torch.float64)
    homogeneous = torch.cat([points, torch.ones(3, 1, dtype=torch.float64)], dim=1)
    forward = torch.zeros(n, 3, 3, dtype=torch.float64)  # row vectors: [x y 1] @ forward = [x' y' 1]
    forward[:, :, :2] = torch.linalg.solve(homogeneous, moved)
    forward[:, 2, 2] = 1
    backward = torch.linalg.inv(forward)[:, :, :2].to(device, torch.float32)  # output -> source, as cv2.warpAffine

    fields = _uniform((n, 2, h, w), -1, 1, generator, device)
    fields = _gaussian_blur(fields, smoothness, truncate=3.0, pad_mode="reflect") * amplitude
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    displaced = torch.stack([xs + fields[:, 0], ys + fields[:, 1], torch.ones_like(fields[:, 0])], dim=-1)
    return torch.einsum("nhwk,nkj->nhwj", displaced, backward)


def elastic_transform(x: Tensor, severity: int, generator: torch.Generator | None = None) -> Tensor:
    n, _, h, w = x.shape
    source = _elastic_source_coords(n, h, w, severity, generator, x.device)
    size = torch.tensor([w - 1, h - 1], dtype=source.dtype, device=x.device).clamp_min(1)
    grid = (2 * source / size - 1).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True).clamp(0, 1)


@functools.lru_cache(maxsize=64)
def _box_resize_matrix(size_in: int, size_out: int) -> Tensor:
    """[size_out, size_in] weights of PIL's BOX resampling along one axis: each output pixel averages the
    input pixels whose centres fall inside its footprint (nearest-like when enlarging)."""
    scale = size_in / size_out
    support = 0.5 * max(scale, 1.0)
    matrix = torch.zeros(size_out, size_in, dtype=torch.float64)
    for i in range(size_out):
        centre = (i + 0.5) * scale
        first = max(int(centre - support + 0.5), 0)
        last = min(int(centre + support + 0.5), size_in)
        for j in range(first, last):
            offset = (j - centre + 0.5) / max(scale, 1.0)
            matrix[i, j] = float(-0.5 < offset <= 0.5)
    return matrix / matrix.sum(dim=1, keepdim=True)


def _box_resize(x: Tensor, h: int, w: int) -> Tensor:
    return _resample(x, _box_resize_matrix(x.shape[-2], h), _box_resize_matrix(x.shape[-1], w))


def pixelate(x: Tensor, severity: int, generator: torch.Generator | None = None) -> Tensor:
    factor = _param(PIXELATE, severity)
    h, w = x.shape[-2:]
    small = _box_resize(x, max(1, int(h * factor)), max(1, int(w * factor)))
    return _box_resize(small, h, w).clamp(0, 1)


def _jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded)


def jpeg_compression(x: Tensor, severity: int, generator: torch.Generator | None = None) -> Tensor:
    """Encode and decode each image with PIL, as the reference does (the one unavoidable per-image loop)."""
    quality = _param(JPEG_QUALITY, severity)
    images = _to_uint8(x).permute(0, 2, 3, 1).cpu().numpy()
    if images.shape[-1] == 1:
        images = images[..., 0]  # PIL writes one-channel images as 2-D grayscale
    decoded = np.stack([_jpeg_round_trip(image, quality) for image in images]).reshape(x.shape[0], *x.shape[2:], -1)
    return (torch.from_numpy(decoded).permute(0, 3, 1, 2).to(x.device, x.dtype) / 255).clamp(0, 1)


# ---------------------------------------------------------------- registry

CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur,
    "glass_blur": glass_blur,
    "motion_blur": motion_blur,
    "zoom_blur": zoom_blur,
    "snow": snow,
    "fog": fog,
    "brightness": brightness,
    "contrast": contrast,
    "elastic_transform": elastic_transform,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
}

FAMILIES: dict[str, list[str]] = {
    "noise": ["gaussian_noise", "shot_noise", "impulse_noise"],
    "blur": ["defocus_blur", "glass_blur", "motion_blur", "zoom_blur"],
    "weather": ["snow", "fog", "brightness"],
    "digital": ["contrast", "elastic_transform", "pixelate", "jpeg_compression"],
}

# The 15 corruptions of the published sets, file/folder names as they ship (frost cannot be generated).
OFFICIAL_CORRUPTIONS = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)

REAL_FOLDERS = {"cifar10": "CIFAR-10-C", "cifar100": "CIFAR-100-C", "tiny-imagenet": "Tiny-ImageNet-C"}


def corrupt(x: Tensor, name: str, severity: int, generator: torch.Generator | None = None) -> Tensor:
    """Corrupt a float batch [N, C, H, W] in [0, 1]; returns the same shape, clamped to [0, 1]."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose from {sorted(CORRUPTIONS)}")
    _param(SEVERITIES, severity)
    if not x.is_floating_point() or x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(
            f"corrupt() needs a float batch [N, C, H, W] with C = 1 or 3 in [0, 1]; got "
            f"{x.dtype} {tuple(x.shape)} (convert uint8 images with x.float() / 255)"
        )
    return CORRUPTIONS[name](x, severity, generator)


# ---------------------------------------------------------------- the OOD set


def source_rows(block: int, n_per_corruption: int | None, n_severities: int, seed: int) -> Tensor | None:
    """Which of `block` source images a subset of at most `n_per_corruption` images per corruption keeps (split
    evenly over the severities, rounded down, at least one per severity), sorted; None: all of them."""
    if n_per_corruption is None:
        return None
    if isinstance(n_per_corruption, bool) or not isinstance(n_per_corruption, int) or n_per_corruption < 1:
        raise ValueError(f"n_per_corruption must be a positive int or None (all); got {n_per_corruption!r}")
    per_severity = max(1, n_per_corruption // n_severities)
    if per_severity >= block:
        return None
    return torch.randperm(block, generator=torch.Generator().manual_seed(seed))[:per_severity].sort().values


@dataclass
class OODSet:
    source: str  # "real" (published -C set read from disk) or "generated"
    sets: dict[str, Split]  # corruption -> every chosen severity stacked, severity blocks in order
    severities: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.source not in ("real", "generated"):
            raise ValueError(f"OODSet.source must be 'real' or 'generated'; got {self.source!r}")

    def subset(self, n_per_corruption: int | None, seed: int) -> OODSet:
        """At most `n_per_corruption` images per corruption, split evenly over the severities (rounded down,
        at least one per severity). The same source images are taken in every severity and corruption,
        so comparisons stay paired. None, or a number >= the set's size, returns self."""
        block = self._block_size()
        chosen = source_rows(block, n_per_corruption, len(self.severities), seed)
        if chosen is None:
            return self
        rows = torch.cat([b * block + chosen for b in range(len(self.severities))])
        sets = {name: Split(split.x[rows], split.y[rows]) for name, split in self.sets.items()}
        return OODSet(self.source, sets, self.severities)

    def _block_size(self) -> int:
        sizes = {len(split.y) for split in self.sets.values()}
        if len(sizes) != 1 or next(iter(sizes)) % len(self.severities):
            raise ValueError(
                f"every corruption must hold {len(self.severities)} equal severity blocks; got sizes {sorted(sizes)}"
            )
        return next(iter(sizes)) // len(self.severities)


def _check_severities(severities: Sequence[int]) -> tuple[int, ...]:
    chosen = tuple(severities)
    if (
        not chosen
        or len(set(chosen)) != len(chosen)
        or any(isinstance(s, bool) or not isinstance(s, int) or s not in SEVERITIES for s in chosen)
    ):
        raise ValueError(f"severities must be distinct ints from {SEVERITIES}; got {severities!r}")
    return chosen


def _check_corruptions(corruptions: Sequence[str] | None, allowed: Sequence[str], what: str) -> tuple[str, ...]:
    if isinstance(corruptions, str):
        raise ValueError(f"corruptions must be a list of names, not the string {corruptions!r}")
    chosen = tuple(allowed) if corruptions is None else tuple(corruptions)
    unknown = [name for name in chosen if name not in allowed]
    if unknown:
        hint = " (frost needs the reference's frost photographs; use a real -C folder)" if "frost" in unknown else ""
        raise ValueError(f"unknown corruption(s) {unknown} for {what}{hint}; choose from {list(allowed)}")
    if not chosen or len(set(chosen)) != len(chosen):
        raise ValueError(f"corruptions must be a non-empty list of distinct names; got {corruptions!r}")
    return chosen


# ---------------------------------------------------------------- readers


def _stacked_from_folder(
    folder: Path, corruptions: Sequence[str], stored: Sequence[int], wanted: Sequence[int]
) -> dict[str, Split]:
    """Read `<corruption>.npy` (uint8 NHWC, severity blocks in `stored` order) and labels.npy."""
    missing = [f"{name}.npy" for name in corruptions if not (folder / f"{name}.npy").is_file()]
    if not (folder / "labels.npy").is_file():
        missing.append("labels.npy")
    if missing:
        present = sorted(p.name for p in folder.glob("*.npy"))
        raise FileNotFoundError(
            f"{folder} lacks {missing} (it holds {present}); download the complete set, "
            f"or pass corruptions= with only the ones present"
        )
    labels = np.load(folder / "labels.npy")
    if labels.ndim != 1 or len(labels) % len(stored):
        raise ValueError(
            f"{folder / 'labels.npy'} must hold {len(stored)} equal severity blocks of labels; got shape {labels.shape}"
        )
    block = len(labels) // len(stored)
    rows = np.concatenate([np.arange(block) + stored.index(s) * block for s in wanted])
    y = torch.from_numpy(labels[rows].astype(np.int64))
    sets = {}
    for name in corruptions:
        images = np.load(folder / f"{name}.npy", mmap_mode="r")
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != len(labels):
            raise ValueError(
                f"{folder / name}.npy must be uint8 [{len(labels)}, H, W, C] like labels.npy; "
                f"got {images.dtype} {images.shape}"
            )
        x = torch.from_numpy(np.ascontiguousarray(images[rows])).permute(0, 3, 1, 2).contiguous()
        sets[name] = Split(x, y.clone())
    return sets


def read_cifar_c(
    folder: str | Path, corruptions: Sequence[str] | None = None, severities: Sequence[int] = SEVERITIES
) -> dict[str, Split]:
    """A CIFAR-10-C / CIFAR-100-C folder: `<corruption>.npy` uint8 [5 * n, 32, 32, 3] (severity 1 first)
    and labels.npy. Returns corruption -> Split with the chosen severities stacked."""
    names = _check_corruptions(corruptions, OFFICIAL_CORRUPTIONS, "a real -C set")
    return _stacked_from_folder(Path(folder), names, SEVERITIES, _check_severities(severities))


def read_tiny_imagenet_c(
    folder: str | Path,
    wnids: Sequence[str],
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES,
) -> dict[str, Split]:
    """A Tiny-ImageNet-C tree `<corruption>/<severity>/<wnid>/*.JPEG`; the label is the wnid's position in
    `wnids` (the order of tiny-imagenet-200/wnids.txt, so labels match the training labels)."""
    folder = Path(folder)
    names = _check_corruptions(corruptions, OFFICIAL_CORRUPTIONS, "a real -C set")
    chosen = _check_severities(severities)
    label_of = {wnid: i for i, wnid in enumerate(wnids)}
    missing = [f"{name}/{s}" for name in names for s in chosen if not (folder / name / str(s)).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{folder} lacks the folders {missing}; download the complete Tiny-ImageNet-C, "
            f"or pass corruptions=/severities= with only the ones present"
        )
    sets = {}
    for name in names:
        paths, labels = [], []
        for s in chosen:
            for class_dir in sorted(p for p in (folder / name / str(s)).iterdir() if p.is_dir()):
                if class_dir.name not in label_of:
                    raise ValueError(
                        f"{class_dir} is not among the {len(wnids)} wnids given; pass the wnids of "
                        f"tiny-imagenet-200/wnids.txt"
                    )
                images = sorted(class_dir.glob("*.JPEG"))
                paths += images
                labels += [label_of[class_dir.name]] * len(images)
        sets[name] = Split(_decode_jpegs(paths), torch.tensor(labels, dtype=torch.int64))
    return sets


def _decode_jpegs(paths: Sequence[Path]) -> Tensor:
    if not paths:
        raise FileNotFoundError("no *.JPEG files found under the Tiny-ImageNet-C severity folders")
    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(np.asarray(image.convert("RGB")))  # some Tiny-ImageNet images are grayscale
    shapes = {image.shape for image in images}
    if len(shapes) != 1:
        raise ValueError(f"Tiny-ImageNet-C images must share one size; found {sorted(shapes)}")
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------- generation and cache

_IMPLEMENTATION_VERSION = 1  # bump when any corruption changes, so old caches are not reused
# Values corrupted at once (64 MB of float32): large batches amortise torch's per-op cost, which dominates
# for the loops over taps and wavefronts. Depends on the image shape only, so results stay reproducible.
_CHUNK_VALUES = 1 << 24


def _cache_key(split: Split, seed: int, corruptions: Sequence[str], severities: Sequence[int]) -> str:
    header = {
        "version": _IMPLEMENTATION_VERSION,
        "shape": list(split.x.shape),
        "seed": seed,
        "corruptions": list(corruptions),
        "severities": list(severities),
    }
    return content_key(header, split.x, split.y)


def _stream_seed(seed: int, name: str, severity: int) -> int:
    """An independent seed per (corruption, severity), so each stream is the same whatever else is generated."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}/{severity}".encode()).digest()[:8], "little") >> 1


def _corrupted_stack(x: Tensor, name: str, severities: Sequence[int], seed: int, bar: tqdm) -> np.ndarray:
    n, c, h, w = x.shape
    chunk = max(1, _CHUNK_VALUES // (c * h * w))
    out = np.empty((len(severities) * n, h, w, c), dtype=np.uint8)
    for b, severity in enumerate(severities):
        generator = torch.Generator().manual_seed(_stream_seed(seed, name, severity))
        for start in range(0, n, chunk):
            batch = x[start : start + chunk].cpu().float() / 255
            corrupted = _to_uint8(corrupt(batch, name, severity, generator))
            out[b * n + start : b * n + start + len(batch)] = corrupted.permute(0, 2, 3, 1).numpy()
        bar.update(1)
    return out


def generate_c(
    split: Split,
    cache_dir: str | Path,
    *,
    dataset: str,
    seed: int = 0,
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES,
    progress: bool = False,
) -> Path:
    """Write a corrupted copy of `split` in the CIFAR-10-C layout (`<corruption>.npy` uint8 NHWC with the
    severity blocks stacked in order, labels.npy, info.json) under `cache_dir`, unless it is there already.
    The folder is named by a hash of the images, labels, seed, corruptions and severities, and appears
    whole or not at all (written to a temporary folder, then renamed)."""
    names = _check_corruptions(corruptions, tuple(CORRUPTIONS), "generated sets")
    chosen = _check_severities(severities)
    _check_split(split)
    cache_dir = Path(cache_dir).expanduser()
    key = _cache_key(split, seed, names, chosen)
    folder = cache_dir / f"{dataset}-c-generated-{key}"
    if (folder / "info.json").is_file():
        return folder
    cache_dir.mkdir(parents=True, exist_ok=True)
    logger.info(
        "generating %d corruptions x %d severities of %d %s images into %s",
        len(names),
        len(chosen),
        len(split.y),
        dataset,
        folder,
    )
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=cache_dir))
    try:
        with tqdm(
            total=len(names) * len(chosen), desc=f"corrupting {dataset}", disable=None if progress else True
        ) as bar:
            for name in names:
                np.save(partial / f"{name}.npy", _corrupted_stack(split.x, name, chosen, seed, bar))
        np.save(partial / "labels.npy", np.tile(split.y.numpy(), len(chosen)))
        info = {
            "source": "generated",
            "dataset": dataset,
            "seed": seed,
            "corruptions": list(names),
            "severities": list(chosen),
            "images_per_severity": len(split.y),
            "image_shape": list(split.x.shape[1:]),
            "implementation_version": _IMPLEMENTATION_VERSION,
            "parameters": "CIFAR-10-C (make_cifar_c.py), spatial lengths x max(1, size/32)",
            "key": key,
        }
        (partial / "info.json").write_text(json.dumps(info, indent=2))
        _publish(partial, folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # gone already when the rename succeeded
    return folder


def _check_split(split: Split) -> None:
    x, y = split.x, split.y
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] not in (1, 3) or y.shape != (x.shape[0],):
        raise ValueError(
            f"the split to corrupt needs x uint8 [N, C, H, W] with C = 1 or 3 and y [N]; got x "
            f"{x.dtype} {tuple(x.shape)}, y {tuple(y.shape)}"
        )


def _publish(partial: Path, folder: Path) -> None:
    try:
        os.rename(partial, folder)
    except OSError:
        if not (folder / "info.json").is_file():  # not a concurrent writer that got there first
            raise


def _real_folder(dataset: str, root: str | Path | None) -> Path | None:
    """The published -C folder for `dataset`: `root` itself or `root/<official name>`, if present."""
    if root is None or dataset not in REAL_FOLDERS:
        return None
    root = Path(root).expanduser()
    for candidate in (root, root / REAL_FOLDERS[dataset]):
        looks_real = (
            (candidate / "labels.npy").is_file()
            if dataset != "tiny-imagenet"
            else any((candidate / name).is_dir() for name in OFFICIAL_CORRUPTIONS)
        )
        if looks_real:
            return candidate
    logger.warning(
        "no %s found at %s or %s; generating corrupted images instead",
        REAL_FOLDERS[dataset],
        root,
        root / REAL_FOLDERS[dataset],
    )
    return None


def load_ood(
    split: Split,
    *,
    dataset: str,
    root: str | Path | None,
    cache_dir: str | Path,
    seed: int = 0,
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES,
    use_real: bool = True,
    wnids: list[str] | None = None,
    progress: bool = False,
    per_corruption: int | None = None,
) -> OODSet:
    """The OOD set for `split`: the published -C set when `use_real` and it exists under `root` (it matches
    the official TEST split only, so pass use_real=False for validation data), else a generated copy of
    `split`, cached under `cache_dir`. `per_corruption`: at most that many images per corruption, as
    `OODSet.subset(per_corruption, seed)` takes them; a generated copy then corrupts only those source images.

    corruptions=None means all available: the 15 published ones for a real set, the 14 we implement
    (no frost) for a generated one. Tiny-ImageNet-C needs `wnids` (tiny-imagenet-200/wnids.txt order).
    """
    chosen = _check_severities(severities)
    real = _real_folder(dataset, root) if use_real else None
    if real is None:
        names = _check_corruptions(corruptions, tuple(CORRUPTIONS), "generated sets")
        rows = source_rows(len(split.y), per_corruption, len(chosen), seed)
        source = split if rows is None else Split(split.x[rows], split.y[rows])
        folder = generate_c(
            source, cache_dir, dataset=dataset, seed=seed, corruptions=names, severities=chosen, progress=progress
        )
        return OODSet("generated", _stacked_from_folder(folder, names, chosen, chosen), chosen)
    names = _check_corruptions(corruptions, OFFICIAL_CORRUPTIONS, "a real -C set")
    if dataset == "tiny-imagenet":
        if wnids is None:
            raise ValueError(
                "reading Tiny-ImageNet-C needs wnids= (the lines of tiny-imagenet-200/wnids.txt) "
                "so its labels match the training labels"
            )
        return OODSet("real", read_tiny_imagenet_c(real, wnids, names, chosen), chosen).subset(per_corruption, seed)
    return OODSet("real", read_cifar_c(real, names, chosen), chosen).subset(per_corruption, seed)
