"""rbclib.seg.tiles: the paper's 3 x 3 patches, covering tiles, blending, x4 rotations."""
from __future__ import annotations

import numpy as np
import pytest

from rbclib.seg.tiles import blend_window, extract_patches, pad_to_min, paper_positions, rotations4, tile_positions


def test_paper_grid_of_a_900_px_image_is_3x3_and_covers_768_px():
    pos = paper_positions((900, 900), 256)
    assert len(pos) == 9
    assert sorted({y for y, _ in pos}) == [0, 256, 512]
    patches, _ = extract_patches(np.arange(900 * 900).reshape(900, 900), 256, mode="paper")
    assert patches.shape == (9, 256, 256)
    assert patches[-1][-1, -1] == 767 * 900 + 767


@pytest.mark.parametrize("shape", [(900, 900), (512, 300), (256, 257), (1000, 256)])
def test_cover_tiles_cover_every_pixel_with_the_overlap(shape):
    patch, overlap = 256, 32
    pos = tile_positions(shape, patch, overlap)
    seen = np.zeros(shape, int)
    for y, x in pos:
        seen[y:y + patch, x:x + patch] += 1
    assert seen.min() >= 1
    ys = sorted({y for y, _ in pos})
    assert all(b - a <= patch - overlap for a, b in zip(ys, ys[1:]))
    assert max(y for y, _ in pos) + patch == shape[0]


def test_image_smaller_than_a_tile_is_refused_then_padded():
    with pytest.raises(ValueError, match="smaller than a 256"):
        tile_positions((200, 900), 256, 32)
    with pytest.raises(ValueError, match="smaller than one 256"):
        paper_positions((255, 900), 256)
    padded = pad_to_min(np.ones((200, 300), np.float32), 256)
    assert padded.shape == (256, 300)
    assert padded[200:].sum() == 0 and padded[:200].min() == 1
    with pytest.raises(ValueError, match="patch mode"):
        extract_patches(np.zeros((300, 300)), 256, mode="grid")


def test_blend_window_is_positive_and_flat_in_the_centre():
    w = blend_window(64, 16)
    assert w.shape == (64, 64) and w.min() > 0 and w.max() == 1
    assert np.allclose(w, w.T) and np.allclose(w, w[::-1])
    assert np.all(w[16:48, 16:48] == 1)


def test_rotations_turn_image_and_labels_together():
    img = np.arange(12.0).reshape(3, 4)
    lab = (img > 5).astype(np.uint8)
    rots = rotations4(img, lab)
    assert len(rots) == 4
    assert np.array_equal(rots[0][0], img)
    assert np.array_equal(rots[1][0], np.rot90(img))
    for r_img, r_lab in rots:
        assert np.array_equal(r_lab, (r_img > 5).astype(np.uint8))
