"""sft.data.corrupt: shapes, ranges, seeding, severity ordering, and each corruption's defining property."""

from __future__ import annotations

import numpy as np
import pytest

import sparseft as sft


@pytest.fixture
def images(rng: np.random.Generator) -> np.ndarray:
    return rng.random((20, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("kind", sft.data.KINDS)
def test_shapes_range_seed_and_severity(images: np.ndarray, kind: str) -> None:
    before = images.copy()
    outs = [sft.data.corrupt(images, kind, s, seed=1) for s in range(1, 6)]
    np.testing.assert_array_equal(images, before)  # input untouched
    for o in outs:
        assert o.shape == images.shape and o.dtype == np.float32
        assert o.min() >= 0.0 and o.max() <= 1.0
    np.testing.assert_array_equal(outs[2], sft.data.corrupt(images, kind, 3, seed=1))
    dist = [float(np.abs(o - images).mean()) for o in outs]
    assert dist[0] > 0 and dist[-1] > dist[0]  # stronger severity, further from the image
    assert sft.data.corrupt(images[0], kind, 2).shape == (8, 8)
    assert sft.data.corrupt(images[..., None].repeat(3, -1), kind, 2).shape == (20, 8, 8, 3)


def test_kinds_do_what_they_say(images: np.ndarray) -> None:
    noisy = [sft.data.corrupt(images, "gaussian_noise", 3, seed=s) for s in (0, 1)]
    assert not np.array_equal(*noisy)  # the seed matters for noise
    imp = sft.data.corrupt(images, "impulse_noise", 5)
    changed = imp != images
    assert set(np.unique(imp[changed])) <= {0.0, 1.0} and 0.15 < changed.mean() < 0.4
    con = sft.data.corrupt(images, "contrast", 5)
    centred = images - images.mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(con - con.mean(axis=(1, 2), keepdims=True), 0.05 * centred, atol=1e-6)
    np.testing.assert_allclose(con.mean(axis=(1, 2)), images.mean(axis=(1, 2)), atol=1e-6)
    blur = sft.data.corrupt(images, "gaussian_blur", 5)
    assert np.abs(np.diff(blur, axis=2)).mean() < 0.5 * np.abs(np.diff(images, axis=2)).mean()
    np.testing.assert_allclose(blur.mean(), images.mean(), atol=0.02)
    pix = sft.data.corrupt(images, "pixelate", 3)  # 8 -> 4 pixels per side: 2x2 blocks of their mean
    np.testing.assert_allclose(pix[:, ::2, ::2], images.reshape(20, 4, 2, 4, 2).mean(axis=(2, 4)), rtol=1e-6)
    np.testing.assert_array_equal(pix[:, 1::2, 1::2], pix[:, ::2, ::2])
    shot = sft.data.corrupt(np.zeros((2, 8, 8)), "shot_noise", 5)
    assert np.all(shot == 0)  # no light, no photons


def test_bad_inputs_are_named(images: np.ndarray) -> None:
    with pytest.raises(ValueError, match="kind: expected one of"):
        sft.data.corrupt(images, "fog")
    with pytest.raises(ValueError, match=r"severity: expected an int in 1..5, got 6"):
        sft.data.corrupt(images, "contrast", 6)
    with pytest.raises(TypeError, match="severity: expected an int"):
        sft.data.corrupt(images, "contrast", 2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"images: expected finite values in \[0, 1\]"):
        sft.data.corrupt(images * 16, "contrast")
    with pytest.raises(ValueError, match=r"images: expected shape \(H, W\)"):
        sft.data.corrupt(images.ravel(), "contrast")
    with pytest.raises(TypeError, match=r"images: expected a numeric numpy\.ndarray"):
        sft.data.corrupt([[0.5]], "contrast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed: expected an int >= 0"):
        sft.data.corrupt(images, "contrast", seed=-1)
