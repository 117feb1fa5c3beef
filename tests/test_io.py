"""Readers, writers and their errors."""
from __future__ import annotations

import numpy as np
import pytest

from rbclib.core.config import Optics
from rbclib.core.io import read_image, read_instances, read_labels, read_phase, write_camera_image, write_instances, write_labels, write_phase
from rbclib.core.files import ImageFileError, atomic_path, write_json


def test_phase_tiff_round_trip_with_optics(tmp_path):
    phase = np.random.default_rng(0).normal(size=(20, 30)).astype(np.float32)
    optics = Optics(wavelength_m=633e-9)
    write_phase(tmp_path / "p.tif", phase, optics)
    img = read_phase(tmp_path / "p.tif")
    assert img.data.dtype == np.float32 and np.array_equal(img.data, phase)
    assert img.optics().wavelength_m == 633e-9
    assert img.optics(wavelength_m=532e-9).wavelength_m == 532e-9  # user overrides file metadata


def test_labels_and_instances_round_trip(tmp_path):
    lab = np.array([[0, 1, 2], [3, 4, 0]], dtype=np.uint8)
    write_labels(tmp_path / "l.png", lab)
    assert np.array_equal(read_labels(tmp_path / "l.png"), lab)
    inst = np.array([[0, 1, 300], [70000 - 5000, 2, 0]])
    write_instances(tmp_path / "i.png", inst)
    assert np.array_equal(read_instances(tmp_path / "i.png"), inst)


def test_label_png_outside_range_names_file(tmp_path):
    write_camera_image(tmp_path / "bad.png", np.array([[0, 9], [1, 2]], dtype=np.uint8))
    with pytest.raises(ValueError, match=r"bad.png: labels outside 0..4"):
        read_labels(tmp_path / "bad.png")


@pytest.mark.parametrize("arr,problem", [
    (np.full((8, 8), 3, np.uint8), "constant image"),
    (np.zeros((3, 8, 8), np.float32) + np.arange(8), "shape"),
    (np.array([[0.0, np.nan], [1.0, 2.0]], np.float32), "NaN"),
])
def test_bad_images_named(tmp_path, arr, problem):
    path = tmp_path / "x.npz"
    np.savez(path, data=arr)
    with pytest.raises(ImageFileError, match=problem) as info:
        read_image(path)
    assert "x.npz" in str(info.value)


def test_unreadable_and_unsupported_files(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ImageFileError, match="broken.png: cannot read image"):
        read_image(tmp_path / "broken.png")
    (tmp_path / "a.xyz").write_text("x")
    with pytest.raises(ImageFileError, match="unsupported file type"):
        read_image(tmp_path / "a.xyz")
    with pytest.raises(ImageFileError, match="file not found"):
        read_image(tmp_path / "missing.tif")


def test_hdf5_qpformat_metadata(tmp_path):
    import h5py

    path = tmp_path / "h.h5"
    with h5py.File(path, "w") as h5:
        ds = h5.create_dataset("0", data=np.arange(64, dtype=np.uint8).reshape(8, 8))
        ds.attrs["wavelength"] = 5.32e-7
        ds.attrs["pixel size"] = 8.5e-8
        ds.attrs["medium index"] = 1.333
    img = read_image(path)
    optics = img.optics()
    assert (optics.wavelength_m, optics.pixel_size_m, optics.n_medium) == (5.32e-7, 8.5e-8, 1.333)
    assert "h.h5" in optics.provenance["wavelength_m"]
    with h5py.File(path, "a") as h5:
        h5.create_dataset("1", data=np.eye(8, dtype=np.uint8))
    with pytest.warns(UserWarning, match=r"2 2-D datasets \['0', '1'\]; using the first, '0'"):
        assert read_image(path).data.max() == 63
    assert read_image(path, dataset="1").data.max() == 1


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text().strip() == '{\n  "v": 1\n}'
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_real_holograms_read(shared_data):
    folder = shared_data / "holograms"
    assert read_image(folder / "rbc_pydhm.jpg").data.shape == (1023, 1023)
    assert read_image(folder / "rbc_nontelecentric_50x.tiff").data.shape == (1024, 1224)
    npz = read_image(folder / "hl60_with_background.npz")
    assert npz.data.shape == npz.background.shape == (200, 210)
    h5 = read_image(folder / "oah_with_metadata.h5")
    assert h5.optics().wavelength_m == pytest.approx(5.32e-7)


def test_atomic_writes_get_normal_permissions(tmp_path):
    import os

    write_json(tmp_path / "b.json", {})
    mode = os.stat(tmp_path / "b.json").st_mode & 0o777
    assert mode & 0o044, f"written with mode {oct(mode)}: not readable by group/others"


def test_huge_declared_images_are_refused_before_reading(tmp_path, monkeypatch):
    import h5py
    import tifffile

    from rbclib.core import files, io

    monkeypatch.setattr(io, "MAX_IMAGE_PIXELS", 1000)                 # the rule, at a testable size
    tifffile.imwrite(tmp_path / "big.tif", np.ones((40, 40), np.uint8))
    np.savez(tmp_path / "big.npz", data=np.ones((40, 40), np.uint8))
    with h5py.File(tmp_path / "big.h5", "w") as h5:
        h5.create_dataset("0", data=np.ones((40, 40), np.uint8))
    for name in ("big.tif", "big.npz", "big.h5"):
        with pytest.raises(files.ImageFileError, match=rf"{name}: declares 40x40 values, more than the 1,000 pixels"):
            read_image(tmp_path / name)
    tifffile.imwrite(tmp_path / "ok.tif", np.arange(900, dtype=np.uint16).reshape(30, 30))
    assert read_image(tmp_path / "ok.tif").data.shape == (30, 30)


def test_colour_image_is_converted_with_a_warning(tmp_path):
    from PIL import Image

    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 1] = np.arange(16, dtype=np.uint8)[None, :] * 10
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    with pytest.warns(UserWarning, match=r"colour\.png: colour image \(RGB\) converted to grey"):
        grey = read_image(tmp_path / "colour.png").data
    assert grey.shape == (16, 16) and grey[0, 15] > grey[0, 0]


@pytest.mark.parametrize("compression", ["lzw", "zlib", "zstd"])
def test_compressed_16_bit_tiffs_from_microscope_software_are_read(tmp_path, compression):
    import tifffile

    rng = np.random.default_rng(0)
    camera = rng.integers(0, 4096, (64, 80), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "h.tif", camera, compression=compression)
    img = read_image(tmp_path / "h.tif")
    assert img.data.dtype == np.uint16 and np.array_equal(img.data, camera)


def test_pixel_size_of_ome_and_imagej_metadata_and_the_flag_over_it(tmp_path):
    import tifffile

    camera = np.random.default_rng(1).integers(0, 255, (32, 32), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "h.ome.tif", camera, ome=True,
                     metadata={"axes": "YX", "PhysicalSizeX": 0.3, "PhysicalSizeXUnit": "\u00b5m",
                               "PhysicalSizeY": 0.3, "PhysicalSizeYUnit": "\u00b5m"})
    tifffile.imwrite(tmp_path / "ij.tif", camera, imagej=True, resolution=(1 / 0.25, 1 / 0.25), metadata={"unit": "um"})
    tifffile.imwrite(tmp_path / "nm.ome.tif", camera, ome=True,
                     metadata={"axes": "YX", "PhysicalSizeX": 120.0, "PhysicalSizeXUnit": "nm"})
    tifffile.imwrite(tmp_path / "plain.tif", camera, resolution=(72, 72))      # 72 dpi says nothing of the sample
    assert read_image(tmp_path / "h.ome.tif").meta["pixel_size_m"] == pytest.approx(0.3e-6)
    assert read_image(tmp_path / "ij.tif").meta["pixel_size_m"] == pytest.approx(0.25e-6)
    assert read_image(tmp_path / "nm.ome.tif").meta["pixel_size_m"] == pytest.approx(0.12e-6)
    assert "pixel_size_m" not in read_image(tmp_path / "plain.tif").meta
    opt = read_image(tmp_path / "h.ome.tif").optics()
    assert opt.pixel_size_m == pytest.approx(0.3e-6) and opt.provenance["pixel_size_m"] == "metadata of h.ome.tif"
    given = read_image(tmp_path / "h.ome.tif").optics(pixel_size_m=0.2e-6)
    assert given.pixel_size_m == pytest.approx(0.2e-6) and given.provenance["pixel_size_m"] == "given by the user"


def test_a_complex_field_is_refused_not_read_as_phase(tmp_path):
    import tifffile

    phase = np.linspace(0, 3, 64, dtype=np.float32).reshape(8, 8)
    tifffile.imwrite(tmp_path / "field.tif", np.exp(1j * phase).astype(np.complex64))
    with pytest.raises(ImageFileError, match=r"field.tif: complex-valued image \(complex64\)"):
        read_image(tmp_path / "field.tif")
