"""Class ids, one-hot, colours and instances."""
from __future__ import annotations

import numpy as np
import pytest

from rbclib.core.labels import (CLASS_COLOURS, CLASS_NAMES, IGNORE, border_cut_cells, check_labels, colourize,
                                instance_classes, instances_from_labels, to_onehot)


def test_paper_names_and_colours():
    assert [CLASS_NAMES[i] for i in range(5)] == ["background", "discocyte", "spherocyte", "echinocyte", "stomatocyte"]
    assert CLASS_COLOURS[1] == (1.0, 0.0, 0.0) and CLASS_COLOURS[2] == (0.0, 0.0, 1.0)


def test_onehot_and_colourize():
    lab = np.array([[0, 1], [2, 4]], dtype=np.uint8)
    oh = to_onehot(lab)
    assert oh.shape == (5, 2, 2) and np.array_equal(oh.argmax(0), lab) and np.all(oh.sum(0) == 1)
    rgb = colourize(lab)
    assert rgb.shape == (2, 2, 3) and tuple(rgb[1, 1]) == (1.0, 1.0, 0.0)


def test_check_labels_rejects_out_of_range_and_shape():
    with pytest.raises(ValueError, match=r"mask.png: labels outside 0..4: \[7\]"):
        check_labels(np.array([[0, 7]]), source="mask.png")
    with pytest.raises(ValueError, match="2-D"):
        check_labels(np.zeros((2, 2, 2)))
    assert check_labels(np.array([[0.0, 3.0]])).dtype == np.uint8
    with pytest.raises(ValueError, match=r"outside 0..4: \[255\]"):
        check_labels(np.array([[0, IGNORE]]), source="mask.png")           # only training pairs may hold it
    assert check_labels(np.array([[0, IGNORE]]), allow_ignore=True)[0, 1] == IGNORE
    with pytest.raises(ValueError, match=r"or 255 \(ignored in training\): \[9\]"):
        check_labels(np.array([[9, IGNORE]]), allow_ignore=True)


def test_border_cut_cells_are_the_components_that_reach_the_edge():
    lab = np.zeros((12, 12), dtype=np.uint8)
    lab[4:8, 4:8] = 2                       # whole
    lab[0:3, 5:8] = 1                       # cut by the top edge
    lab[9:12, 10:12] = 3                    # cut by the bottom-right corner
    lab[8, 9] = 1                           # diagonal neighbour of that fragment: same component
    cut = border_cut_cells(lab)
    assert cut[0:3, 5:8].all() and cut[9:12, 10:12].all() and cut[8, 9]
    assert not cut[4:8, 4:8].any() and cut.sum() == 9 + 6 + 1
    assert not border_cut_cells(np.zeros((4, 4), np.uint8)).any()


def test_instances_split_touching_cells_of_different_classes():
    lab = np.zeros((6, 10), dtype=np.uint8)
    lab[1:4, 1:4] = 1
    lab[1:4, 4:7] = 3  # touches the discocyte
    lab[4:6, 8:10] = 1
    inst = instances_from_labels(lab)
    assert inst.max() == 3
    assert len(np.unique(inst[1:4, 1:4])) == 1 and inst[1, 1] != inst[1, 5]
    assert instance_classes(lab, inst) == {int(inst[1, 1]): 1, int(inst[1, 5]): 3, int(inst[5, 9]): 1}
