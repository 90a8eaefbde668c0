"""The phantom is deterministic, EM-like and its labels agree with its image."""

from __future__ import annotations

import numpy as np

from vemviz.phantom import CLASSES, MEMBRANE, make_phantom


def test_deterministic_and_seed_dependent():
    a = make_phantom((6, 64, 64), seed=3)
    b = make_phantom((6, 64, 64), seed=3)
    c = make_phantom((6, 64, 64), seed=4)
    np.testing.assert_array_equal(a.raw.numpy(), b.raw.numpy())
    np.testing.assert_array_equal(a.cells.numpy(), b.cells.numpy())
    assert not np.array_equal(a.raw.numpy(), c.raw.numpy())


def test_labels_match_the_image(phantom):
    clean = phantom.clean.numpy().astype(float)
    semantic = phantom.semantic.numpy()
    assert set(np.unique(semantic)) <= set(CLASSES)
    assert phantom.mito.numpy().max() >= 3 and phantom.cells.numpy().max() >= 4
    membrane = clean[semantic == 1].mean()
    cytoplasm = clean[semantic == 0].mean()
    mito = clean[semantic == 2].mean()
    # heavy-metal staining: membranes and mitochondria much darker than cytoplasm (membranes
    # are thin, so section thickness and the PSF lift their mean above the stain level)
    assert membrane < cytoplasm - 40 and mito < cytoplasm - 40
    assert abs(cytoplasm - 172) < 15 and membrane > MEMBRANE
    # cells are 0 exactly on membranes, mitochondria lie inside cells
    assert np.all(phantom.cells.numpy()[semantic == 1] == 0)
    assert np.all(phantom.cells.numpy()[phantom.mito.numpy() > 0] > 0)


def test_damaged_slice_is_blank_and_noise_present(phantom):
    raw = phantom.raw.numpy()
    assert phantom.damaged_slices == (9,)
    assert raw[9].max() == 0
    residual = raw[10].astype(float) - phantom.clean.numpy()[10]
    assert 8 < residual.std() < 25


def test_same_scene_at_finer_z_sampling():
    coarse = make_phantom((5, 48, 48), (40.0, 8.0, 8.0), thickness_samples=1, noise=0)
    fine = make_phantom((21, 48, 48), (8.0, 8.0, 8.0), extent_nm=(200, 384, 384),
                        thickness_samples=1, noise=0)  # fmt: skip
    # slice i at 40 nm spacing sits where slice 5 i sits at 8 nm spacing
    np.testing.assert_array_equal(coarse.cells.numpy(), fine.cells.numpy()[::5])
    np.testing.assert_array_equal(coarse.semantic.numpy(), fine.semantic.numpy()[::5])
