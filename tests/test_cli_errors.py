"""CLI error hygiene: an expected failure is one line naming the problem and exit 2;
``rbc --debug`` shows the traceback instead."""
from __future__ import annotations

import json

import numpy as np
import pytest

from rbclib.cli import main
from rbclib.core.io import write_camera_image


def _hologram(tmp_path):
    path = tmp_path / "h.png"
    yy, xx = np.mgrid[:64, :64]
    write_camera_image(path, (127 + 100 * np.cos(2 * np.pi * (0.3 * xx + 0.1 * yy))).astype(np.uint8))
    return path


def test_output_path_that_is_a_file_is_one_line(tmp_path, capsys):
    holo = _hologram(tmp_path)
    blocker = tmp_path / "out"
    blocker.write_text("not a folder")
    assert main(["reconstruct", str(holo), "-o", str(blocker)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rbc reconstruct: error:") and "out" in err[0], err
    assert blocker.read_text() == "not a folder"                     # nothing written over


def test_unreadable_checkpoint_is_one_line_and_debug_shows_traceback(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_name": "resunet", "encoder": "resnet18", "in_channels": 3, "classes": 5}')
    (model / "best.pt").write_bytes(b"\x80\x04random bytes, not a checkpoint")
    args = ["assess", str(_hologram(tmp_path)), "-o", str(tmp_path / "study"), "--model", str(model)]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rbc assess: error:"), err
    with pytest.raises(Exception):
        main(["--debug", *args])


def test_assess_refuses_to_write_into_its_input_folder(tmp_path, capsys):
    holo = _hologram(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["assess", str(tmp_path), "-o", str(tmp_path), "--model", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "output folder is the input folder" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before and holo.is_file()
    assert main(["assess", str(tmp_path), "-o", str(tmp_path / "study"), "--model", str(tmp_path / "none")]) == 1
    assert "lies inside the input folder" in capsys.readouterr().err and not (tmp_path / "study").exists()


def test_plain_state_dict_checkpoint_is_named(tmp_path):
    import torch

    from rbclib.seg.infer import load_model

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_name": "resunet", "encoder": "resnet18", "in_channels": 3, "classes": 5}')
    torch.save({"encoder.weight": torch.zeros(2)}, model / "best.pt")
    with pytest.raises(ValueError, match=r"best\.pt: not an rbclib\.seg\.train checkpoint"):
        load_model(model)


def test_reconstruct_batch_goes_past_a_broken_file(tmp_path, capsys):
    folder = tmp_path / "holos"
    folder.mkdir()
    for name in ("a", "c"):
        _hologram(tmp_path).rename(folder / f"{name}.png")
    (folder / "b.png").write_bytes(b"broken")
    assert main(["reconstruct", str(folder), "-o", str(tmp_path / "phase"), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert sorted(p.name for p in (tmp_path / "phase").iterdir()) == ["a.tif", "c.tif", "optics.json"]
    assert "skipped" in captured.err and "b.png" in captured.err and "1 file(s) skipped" in captured.out


def test_nan_weights_and_impossible_pixel_size_are_refused(tmp_path):
    import json

    import torch

    from rbclib.study.segmenter import model_pixel_size
    from rbclib.seg.infer import load_model, model_from_config

    config = {"model_name": "resunet", "encoder": "resnet18", "decoder_channels": [16, 16, 8, 8, 8], "in_channels": 3,
              "classes": 5}
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(config))
    weights = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
               for k, v in model_from_config(config).state_dict().items()}
    torch.save({"model": weights}, model / "best.pt")
    with pytest.raises(ValueError, match="hold NaN or infinity"):
        load_model(model)
    for bad in (-1.441e-7, 0.0, 1e-3, "x"):
        with pytest.raises(ValueError, match="pixel_size_m=.* is not a pixel size"):
            model_pixel_size({"pixel_size_m": bad}, model)
    assert model_pixel_size({"pixel_size_m": 1.441e-7})[0] == pytest.approx(1.441e-7)


@pytest.mark.parametrize("args,message", [
    (["--refocus", "nan"], "--refocus nan: a distance within"),
    (["--refocus", "1e9"], "--refocus 1e9: a distance within"),
    (["--refocus", "1"], "--refocus 1: a distance within"),
    (["--pixel-size", "1e-3"], "--pixel-size 1e-3: expected a number within 1e-08..5e-06"),
    (["--pixel-size", "1e-9"], "--pixel-size 1e-9: expected a number within"),
    (["--wavelength", "0"], "--wavelength 0: expected a number within"),
    (["--medium-index", "3.5"], "--medium-index 3.5: expected a number within 1..2"),
    (["--filter-size", "0"], "--filter-size 0: a fraction of the carrier distance"),
])
def test_impossible_options_are_usage_errors_before_any_work(tmp_path, capsys, args, message):
    """Option ranges are checked while the command line is read: exit 2, the option named, no
    output folder made."""
    with pytest.raises(SystemExit) as exit_info:
        main(["reconstruct", str(_hologram(tmp_path)), "-o", str(tmp_path / "out"), "--quiet", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and not (tmp_path / "out").exists(), err
    assess_args = args if args[0] not in ("--refocus", "--filter-size") else ["--seed", "-1"]
    with pytest.raises(SystemExit) as exit_info:
        main(["assess", str(tmp_path), "-o", str(tmp_path / "out"), *assess_args])
    assert exit_info.value.code == 2 and not (tmp_path / "out").exists()


def test_reconstruct_does_not_overwrite_without_asking(tmp_path, capsys):
    holo = _hologram(tmp_path)
    out = tmp_path / "phase"
    assert main(["reconstruct", str(holo), "-o", str(out), "--quiet"]) == 0
    first = (out / "h.tif").read_bytes()
    assert main(["reconstruct", str(holo), "-o", str(out), "--quiet", "--refocus", "1e-6"]) == 1
    assert "already holds 1 of the phase images" in capsys.readouterr().err and (out / "h.tif").read_bytes() == first
    assert main(["reconstruct", str(holo), "-o", str(out), "--quiet", "--refocus", "1e-6", "--overwrite"]) == 0
    assert (out / "h.tif").read_bytes() != first


def test_reconstruct_never_writes_over_an_input_hologram(tmp_path, capsys):
    import tifffile

    folder = tmp_path / "holos"
    folder.mkdir()
    yy, xx = np.mgrid[:64, :64]
    tifffile.imwrite(folder / "h.tif", (127 + 100 * np.cos(2 * np.pi * (0.3 * xx + 0.1 * yy))).astype(np.uint8))
    before = (folder / "h.tif").read_bytes()
    assert main(["reconstruct", str(folder), "-o", str(folder), "--quiet", "--overwrite"]) == 1
    assert "would replace the input hologram" in capsys.readouterr().err
    assert (folder / "h.tif").read_bytes() == before


def test_reconstruct_takes_the_pixel_size_of_ome_metadata_and_says_so(tmp_path, capsys):
    import tifffile

    from rbclib.core.io import read_image

    holo = read_image(_hologram(tmp_path)).data
    tifffile.imwrite(tmp_path / "h.ome.tif", holo, ome=True,
                     metadata={"axes": "YX", "PhysicalSizeX": 0.3, "PhysicalSizeXUnit": "\u00b5m",
                               "PhysicalSizeY": 0.3, "PhysicalSizeYUnit": "\u00b5m"})
    assert main(["reconstruct", str(tmp_path / "h.ome.tif"), "-o", str(tmp_path / "rec"), "--quiet"]) == 0
    optics = json.loads((tmp_path / "rec" / "optics.json").read_text())
    assert optics["pixel_size_m"] == pytest.approx(0.3e-6)
    assert optics["provenance"]["pixel_size_m"] == "metadata of h.ome.tif"
    assert main(["reconstruct", str(tmp_path / "h.ome.tif"), "-o", str(tmp_path / "rec2"), "--quiet",
                 "--pixel-size", "2e-7"]) == 0
    assert json.loads((tmp_path / "rec2" / "optics.json").read_text())["pixel_size_m"] == pytest.approx(2e-7)


@pytest.mark.parametrize("change,problem", [
    ({"phase_range": [2, 2]}, "phase_range=\\[2, 2\\]: need \\[low, high\\]"),
    ({"classes": 1}, "classes=1, in_channels=1: need >= 2 classes"),
    ({"infer_tile": 4}, "infer_tile=4: tiles of at least 16 px"),
    ({"patch": 0}, "patch=0: tiles of at least 16 px"),
    ({"overlap": 200, "infer_tile": 256}, "overlap=200 must be"),
])
def test_degenerate_model_configs_are_refused_at_load(tmp_path, change, problem):
    from rbclib.seg.infer import check_model_config

    config = {"model_name": "resunet", "encoder": "resnet18", "in_channels": 1, "classes": 5, "patch": 128,
              "phase_range": [-1.0, 10.0]}
    check_model_config(config, "m/config.json")
    check_model_config({**config, "infer_tile": 0}, "m/config.json")      # 0: the training patch
    with pytest.raises(ValueError, match=f"m/config.json: {problem}"):
        check_model_config({**config, **change}, "m/config.json")


def test_a_corrupt_model_config_is_named(tmp_path):
    from rbclib.seg.infer import load_model

    (tmp_path / "config.json").write_text('{"model_name": "resunet"}\n{"x": 1}')
    with pytest.raises(ValueError, match=r"config.json: not a valid model config.json \(Extra data"):
        load_model(tmp_path)
