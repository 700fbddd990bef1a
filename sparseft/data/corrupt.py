"""Image corruptions in the manner of ImageNet-C (Hendrycks & Dietterich 2019), seeded.

``corrupt(images, kind, severity, seed)`` takes images with values in [0, 1], shaped (H, W),
(N, H, W) or (N, H, W, C), and returns float32 images of the same shape, clipped to [0, 1].
Severity 1 (mild) to 5 (strong); the parameters per severity are in :data:`SEVERITIES`. Blur and
pixelation work in pixels, so they are strong on small images (8×8 digits): see ``docs/rws.md``.
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["KINDS", "SEVERITIES", "corrupt"]

SEVERITIES: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),  # noise std
    "shot_noise": (60.0, 25.0, 12.0, 5.0, 3.0),  # photons at full intensity
    "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),  # fraction of salt-and-pepper pixels
    "gaussian_blur": (0.4, 0.6, 0.8, 1.0, 1.5),  # sigma in pixels
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),  # contrast kept around the image mean
    "pixelate": (0.8, 0.65, 0.5, 0.4, 0.3),  # fraction of the side kept before scaling back
}
KINDS = tuple(SEVERITIES)


def _pixelate(x: np.ndarray, frac: float) -> np.ndarray:
    """Box-average down to round(frac·side) pixels per side, then nearest-neighbour back up."""
    H, W = x.shape[1], x.shape[2]
    h, w = max(1, round(H * frac)), max(1, round(W * frac))
    rows = np.minimum((np.arange(H) * h) // H, h - 1)
    cols = np.minimum((np.arange(W) * w) // W, w - 1)
    # rows and cols are nondecreasing: each output pixel sums a contiguous block
    r0 = np.flatnonzero(np.diff(rows, prepend=-1))
    c0 = np.flatnonzero(np.diff(cols, prepend=-1))
    small = np.add.reduceat(np.add.reduceat(x, r0, axis=1), c0, axis=2)
    count = np.diff(np.append(r0, H))[:, None, None] * np.diff(np.append(c0, W))[None, :, None]
    return (small / count)[:, rows[:, None], cols[None, :]]


def corrupt(images: np.ndarray, kind: str, severity: int = 3, seed: int = 0) -> np.ndarray:
    """A corrupted copy of ``images``.

    Parameters
    ----------
    images : numpy.ndarray
        Values in [0, 1], shape (H, W), (N, H, W) or (N, H, W, C); never modified.
    kind : str
        One of :data:`KINDS`: "gaussian_noise", "shot_noise", "impulse_noise", "gaussian_blur",
        "contrast", "pixelate".
    severity : int
        1 to 5.
    seed : int
        Seed of the noise (the same seed gives the same corruption).

    Returns
    -------
    numpy.ndarray
        float32, the shape of ``images``, values in [0, 1].
    """
    if not isinstance(images, np.ndarray) or images.dtype.kind not in "fiu":
        raise TypeError(
            f"images: expected a numeric numpy.ndarray, got {getattr(images, 'dtype', type(images).__name__)}"
        )
    if images.ndim not in (2, 3, 4):
        raise ValueError(f"images: expected shape (H, W), (N, H, W) or (N, H, W, C), got {images.shape}")
    if kind not in SEVERITIES:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    if isinstance(severity, (bool, np.bool_)) or not isinstance(severity, numbers.Integral):
        raise TypeError(f"severity: expected an int in 1..5, got {type(severity).__name__}")
    if not 1 <= severity <= 5:
        raise ValueError(f"severity: expected an int in 1..5, got {severity}")
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
    x = images.astype(np.float64)
    if x.size and (not np.isfinite(x).all() or x.min() < 0.0 or x.max() > 1.0):
        raise ValueError("images: expected finite values in [0, 1] (scale them first, e.g. digits / 16)")
    shape = images.shape
    # as (N, H, W, C)
    x = x.reshape({2: (1, *shape, 1), 3: (*shape, 1), 4: shape}[images.ndim])
    rng = np.random.default_rng(int(seed))
    c = SEVERITIES[kind][severity - 1]
    if kind == "gaussian_noise":
        y = x + rng.normal(0.0, c, x.shape)
    elif kind == "shot_noise":
        y = rng.poisson(x * c) / c
    elif kind == "impulse_noise":
        u = rng.random(x.shape)
        y = np.where(u < c / 2, 0.0, np.where(u < c, 1.0, x))
    elif kind == "gaussian_blur":
        from scipy.ndimage import gaussian_filter

        y = gaussian_filter(x, sigma=(0, c, c, 0), mode="nearest")
    elif kind == "contrast":
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        y = (x - mean) * c + mean
    else:
        y = _pixelate(x, c)
    return np.clip(y, 0.0, 1.0).astype(np.float32).reshape(shape)
