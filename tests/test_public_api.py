"""The package-level API (docs/ARCHITECTURE.md): stable names, lazily imported."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import rbclib

STABLE = ["CellAnalysis", "ImageFileError", "Optics", "Reconstructor", "Segmenter", "aji_per_class", "analyse", "assess",
          "build_model",
          "build_resunet", "dice_per_class", "get_profile", "load_model", "measure_cells", "predict_image", "predict_images",
          "read_image", "read_phase", "reconstruct", "reconstruct_files", "simulate_dataset", "simulate_field",
          "simulate_storage_series", "train_segmenter", "write_phase"]


def test_every_public_name_resolves_to_its_module_object():
    assert rbclib.__all__ == STABLE                     # removing or renaming a name is a breaking change
    from rbclib.physics.holography import reconstruct
    from rbclib.seg.metrics import dice_per_class

    from rbclib.study.assess import assess

    assert rbclib.reconstruct is reconstruct and rbclib.dice_per_class is dice_per_class
    assert rbclib.assess is assess                      # the function, not a module
    for name in STABLE:
        assert callable(getattr(rbclib, name)), name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        rbclib.nope  # noqa: B018


def test_import_rbclib_does_not_import_torch():
    code = "import sys, rbclib; rbclib.Optics; rbclib.reconstruct; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert out.stdout.strip() == "False"


def test_building_the_command_line_does_not_import_torch():
    """`rbc --help` and usage errors stay instant: the parser imports no model code."""
    code = "import sys, rbclib.cli; rbclib.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert out.stdout.strip() == "False"
