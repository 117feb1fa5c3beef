"""Tests of rbclib.physics.holography: synthetic holograms of known phase, bad input, real holograms."""
from __future__ import annotations

import io
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from rbclib.cli import main
from rbclib.core.config import Optics
from rbclib.physics.holography import Reconstructor, reconstruct
from rbclib.physics.refocus import angular_spectrum, autofocus
from rbclib.physics.sideband import find_sideband
from rbclib.physics.phase_files import ReconstructorCache, background_file, hologram_background, reconstruct_files
from rbclib.core.io import read_image, read_phase, write_camera_image
from rbclib.core.files import ImageFileError, read_json

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "holograms"
CARRIER = (0.21, 0.26)


def phase_object(n: int = 256, *, seed: int = 0, peak: float = 2.0, n_cells: int = 6) -> np.ndarray:
    """Known phase [rad]: smooth domes of height ``peak`` on a zero medium."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:n, :n].astype(float)
    phase = np.zeros((n, n))
    for _ in range(n_cells):
        cy, cx = rng.uniform(24, n - 24, 2)
        r = rng.uniform(10, 16)
        d2 = ((y - cy) ** 2 + (x - cx) ** 2) / r ** 2
        phase = np.maximum(phase, peak * np.clip(1 - d2, 0, None) ** 1.5)
    return phase.astype(np.float32)


def hologram(phase: np.ndarray, *, carrier=CARRIER, aberration: np.ndarray | float = 0.0, seed: int = 1,
             noise: float = 1.5, conjugate: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """8-bit hologram and background, reference R = exp(-i 2 pi (fy y + fx x)) (rbclib.physics.simulate's
    convention: the +1 order at +carrier holds exp(+i phase)); ``conjugate`` flips the reference."""
    rng = np.random.default_rng(seed)
    n0, n1 = phase.shape
    y, x = np.mgrid[:n0, :n1].astype(float)
    s = 1 if conjugate else -1
    ref = np.exp(s * 2j * np.pi * (carrier[0] * y + carrier[1] * x))

    def camera(obj_phase):
        inten = np.abs(ref + 0.8 * np.exp(1j * obj_phase)) ** 2
        return np.clip(inten / 3.3 * 230 + rng.normal(0, noise, inten.shape), 0, 255).astype(np.uint8)

    return camera(phase + aberration), camera(np.zeros_like(phase) + aberration)


def rmse(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a[mask] - b[mask]) ** 2)))


def curvature(n: int, rad: float, tilt=(3.0, -2.0)) -> np.ndarray:
    y, x = np.mgrid[:n, :n].astype(float)
    yn, xn = (y - n / 2) / (n / 2), (x - n / 2) / (n / 2)
    return tilt[0] * yn + tilt[1] * xn + rad * (xn ** 2 + yn ** 2) + 0.3 * rad * xn * yn


# ----------------------------------------------------------------------------- synthetic
def test_background_division_recovers_known_phase():
    true = phase_object()
    holo, bg = hologram(true, aberration=curvature(256, 6.0))
    rec = reconstruct(holo, background=bg)
    cells = true > 0.05
    assert rec.phase.dtype == np.float32 and rec.phase.shape == true.shape
    assert rec.compensation == "background" and rec.sign == 1
    assert rmse(rec.phase, true, cells) < 0.12
    assert rmse(rec.phase, true, ~cells) < 0.05
    assert rec.background_std < 0.05
    assert np.allclose(rec.sideband, CARRIER, atol=2 / 256)
    assert rec.amplitude.shape == true.shape and rec.field.dtype == np.complex64
    assert np.allclose(np.angle(rec.field[~cells]), rec.phase[~cells], atol=1e-3)


def test_numerical_compensation_removes_tilt_and_spherical_phase():
    true = phase_object(seed=3)
    holo, _ = hologram(true, aberration=curvature(256, 25.0))  # non-telecentric: ~8 fringes of curvature
    rec = reconstruct(holo)
    cells = true > 0.05
    inner = np.zeros_like(cells)
    inner[8:-8, 8:-8] = True  # without a background the non-periodic field rings at the border
    assert rec.compensation == "numerical"
    assert rmse(rec.phase, true, ~cells & inner) < 0.05
    assert rmse(rec.phase, true, cells) < 0.1
    # without the quadratic terms the curvature stays in the image
    assert reconstruct(holo, poly_order=1).background_std > 5 * rec.background_std


@pytest.mark.parametrize("curv", [10.0, 35.0])
@pytest.mark.parametrize("offset", [0.0, np.pi - 0.05, -np.pi + 0.05])
def test_numerical_compensation_with_the_medium_at_the_phase_wrap(curv, offset):
    """The aberration fit unwraps the low-resolution phase against a first fit to block
    averages: a medium at +-pi under up to ~13 fringes of curvature must still come out flat."""
    true = phase_object(seed=5, n_cells=10, peak=2.8)
    holo, _ = hologram(true, aberration=curvature(256, curv) + offset, seed=2)
    rec = reconstruct(holo)
    cells = true > 0.05
    inner = np.zeros_like(cells)
    inner[8:-8, 8:-8] = True
    assert rmse(rec.phase, true, ~cells & inner) < 0.05
    assert rmse(rec.phase, true, cells & inner) < 0.12


def test_sign_is_chosen_so_cells_are_positive_and_can_be_forced():
    true = phase_object(seed=4)
    holo, bg = hologram(true, conjugate=True)  # cells sit in the other sideband
    rec = reconstruct(holo, background=bg)
    assert rec.sign == -1
    assert rmse(rec.phase, true, true > 0.05) < 0.12
    forced = reconstruct(holo, background=bg, sign=1)
    assert forced.sign == 1 and np.percentile(forced.phase, 1) < -1.0


@pytest.mark.parametrize("name", ["disk", "smooth disk", "gauss"])
def test_filters(name):
    true = phase_object(seed=5)
    holo, bg = hologram(true)
    rec = reconstruct(holo, background=bg, filter=name)
    assert rmse(rec.phase, true, true > 0.05) < 0.2
    assert rec.background_std < 0.06


def test_filter_radius_follows_the_numerical_aperture():
    """Default radius = cut-off NA / wavelength (capped at half the carrier distance): it keeps
    the band a 0.7 NA objective passes, so a band-limited object comes back sharper than
    with qpretrieve's fixed 1/3 of the carrier distance (0.111 cycles/px here)."""
    from rbclib.physics.recording import HologramSettings
    from rbclib.physics.simulate import simulate_field

    optics = Optics()
    f = simulate_field(3, field_px=256, n_cells=6, defocus_um=0.0, overlap_fraction=0.0, debris_per_1000um2=0.0,
                       platelets_per_cell=0.0, settings=HologramSettings(carrier=CARRIER, noise_nm=2.0, dust=(0, 0)))
    by_na = reconstruct(f.hologram, background=f.background, optics=optics)
    by_fraction = reconstruct(f.hologram, background=f.background, optics=optics, filter_size=1 / 3)
    assert by_na.filter_radius == pytest.approx(0.7 * optics.pixel_size_m / optics.wavelength_m, rel=1e-6)
    assert by_fraction.filter_radius == pytest.approx(np.hypot(*CARRIER) / 3, rel=0.01)   # of the detected carrier
    cells = f.instances > 0
    assert rmse(by_na.phase, f.phase, cells) < 0.92 * rmse(by_fraction.phase, f.phase, cells)   # 0.053 vs 0.061 rad
    narrow = reconstruct(f.hologram, background=f.background, optics=optics.replace(numerical_aperture=0.4))
    assert narrow.filter_radius == pytest.approx(0.4 / 0.7 * by_na.filter_radius, rel=1e-6)
    close = Reconstructor((256, 256), optics=optics.replace(numerical_aperture=1.2), sideband=(0.1, 0.15))
    holo_close, _ = hologram(phase_object(), carrier=(0.1, 0.15))
    assert close(holo_close).filter_radius == pytest.approx(0.5 * np.hypot(0.1, 0.15), rel=1e-6)   # clear of DC


def test_sideband_detection_ignores_jpeg_grid_and_dc():
    true = phase_object(seed=6)
    holo, _ = hologram(true)
    grid = np.zeros(holo.shape)
    grid[::8, :] += 40.0
    grid[:, ::8] += 40.0  # sharp peaks at multiples of 1/8 cycle/px, stronger than the sideband bins
    spiky = np.clip(holo + grid, 0, 255).astype(np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the grid saturates some pixels
        assert np.allclose(find_sideband(spiky), CARRIER, atol=2 / 256)
    buf = io.BytesIO()
    Image.fromarray(holo).save(buf, format="JPEG", quality=60)
    jpeg = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
    rec = reconstruct(jpeg)
    assert rmse(rec.phase, true, true > 0.05) < 0.25


def test_wrapped_phase_is_unwrapped():
    true = phase_object(seed=7, peak=5.0)
    holo, bg = hologram(true)
    rec = reconstruct(holo, background=bg)
    assert rec.unwrapped
    assert rmse(rec.phase, true, true > 0.05) < 0.25
    assert reconstruct(hologram(phase_object(seed=7))[0]).unwrapped is False


def test_reconstructor_reuses_setup_and_redetects_moved_sideband():
    rc = Reconstructor((256, 256))
    first = phase_object(seed=8)
    a = rc(*hologram(first)[:1])
    carrier = rc.sideband
    b = rc(hologram(phase_object(seed=9))[0])
    assert rc.sideband == carrier and a.sign == b.sign == 1
    single = reconstruct(hologram(first)[0])
    assert np.allclose(a.phase, single.phase, atol=1e-4)
    moved = rc(hologram(first, carrier=(-0.18, 0.3))[0])
    assert np.allclose(rc.sideband, (-0.18, 0.3), atol=2 / 256)
    assert rmse(moved.phase, first, first > 0.05) < 0.15


def test_per_call_background():
    true = phase_object(seed=10)
    rc = Reconstructor(true.shape)
    holo, bg = hologram(true, aberration=curvature(256, 6.0))
    rec = rc(holo, background=bg)
    assert rec.compensation == "background" and rmse(rec.phase, true, true > 0.05) < 0.12


def test_angular_spectrum_autofocus_finds_defocus():
    optics = Optics(wavelength_m=633e-9, pixel_size_m=0.2e-6, n_medium=1.333)
    true = phase_object(seed=11, n_cells=3, peak=1.5)
    focused = np.exp(1j * true)
    defocused = angular_spectrum(focused, 4e-6, optics)
    assert np.std(np.abs(defocused)) > 5 * np.std(np.abs(focused))
    d = autofocus(defocused, optics, interval_m=(-10e-6, 10e-6))
    assert d == pytest.approx(-4e-6, abs=0.4e-6)
    back = angular_spectrum(defocused, -4e-6, optics)
    assert np.allclose(back[16:-16, 16:-16], focused[16:-16, 16:-16], atol=0.1)


def test_refocus_in_reconstruction():
    optics = Optics(wavelength_m=633e-9, pixel_size_m=0.2e-6, n_medium=1.333)
    true = phase_object(seed=12, peak=1.5)
    n = true.shape[0]
    y, x = np.mgrid[:n, :n]
    obj = angular_spectrum(np.exp(1j * true), 3e-6, optics)
    ref = np.exp(-2j * np.pi * (CARRIER[0] * y + CARRIER[1] * x))
    holo = np.clip(np.abs(ref + 0.8 * obj) ** 2 * 70, 0, 255).astype(np.uint8)
    bg = np.clip(np.abs(ref + 0.8) ** 2 * 70, 0, 255).astype(np.uint8)
    plain = reconstruct(holo, background=bg, optics=optics)
    rec = reconstruct(holo, background=bg, optics=optics, refocus="auto")
    assert rec.refocus_m == pytest.approx(-3e-6, abs=0.5e-6)
    cells = true > 0.05
    assert rmse(rec.phase, true, cells) < 0.5 * rmse(plain.phase, true, cells)


# ----------------------------------------------------------------------------- files and CLI
def test_reconstruct_files_and_cli(tmp_path):
    holo_dir, bg_dir = tmp_path / "holograms", tmp_path / "backgrounds"
    truths = {}
    for i in range(2):
        true = phase_object(seed=20 + i)
        holo, bg = hologram(true, seed=i)
        write_camera_image(holo_dir / f"field_{i:04d}.png", holo)
        write_camera_image(bg_dir / f"field_{i:04d}.png", bg)
        truths[f"field_{i:04d}"] = true
    out = reconstruct_files([holo_dir], tmp_path / "phase", background=bg_dir, progress=False,
                            optics_overrides={"wavelength_m": 633e-9})
    assert [p.name for p in out] == ["field_0000.tif", "field_0001.tif"]
    for p in out:
        img = read_phase(p)
        assert img.meta["wavelength_m"] == pytest.approx(633e-9)
        assert rmse(img.data, truths[p.stem], truths[p.stem] > 0.05) < 0.12
    assert read_json(tmp_path / "phase" / "optics.json")["wavelength_m"] == pytest.approx(633e-9)
    rc = main(["reconstruct", str(holo_dir / "field_0000.png"), "-o", str(tmp_path / "cli"), "--quiet",
               "--background", str(bg_dir / "field_0000.png"), "--wavelength", "5.32e-7", "--refocus", "0"])
    assert rc == 0
    assert read_phase(tmp_path / "cli" / "field_0000.tif").meta["wavelength_m"] == pytest.approx(5.32e-7)
    assert main(["reconstruct", str(tmp_path / "missing.png"), "-o", str(tmp_path / "cli2"), "--quiet"]) == 1
    assert not (tmp_path / "cli2").exists()



def test_background_lookup_and_one_reconstructor_per_setup(tmp_path):
    """The one path from a hologram on disk to its background and the Reconstructor of its
    set-up, used by rbc reconstruct, rbc assess and notebook 01."""
    true = phase_object(seed=30)
    holo, bg = hologram(true, aberration=curvature(256, 6.0))
    write_camera_image(tmp_path / "holograms" / "a.png", holo)
    write_camera_image(tmp_path / "backgrounds" / "a.png", bg)
    write_camera_image(tmp_path / "backgrounds" / "b.png", bg)
    assert background_file(None, "a") is None
    assert background_file(tmp_path / "backgrounds", "a").name == "a.png"
    assert background_file(tmp_path / "backgrounds" / "b.png", "a").name == "b.png"   # one file serves all
    with pytest.raises(ImageFileError, match="no background hologram named c"):
        background_file(tmp_path / "backgrounds", "c")
    with pytest.raises(ImageFileError, match="not found"):
        background_file(tmp_path / "nowhere", "a")
    img = read_image(tmp_path / "holograms" / "a.png")
    data, name = hologram_background(img, tmp_path / "backgrounds")
    assert np.array_equal(data, bg) and name.endswith("a.png")
    assert hologram_background(img, None) == (None, "")

    cache = ReconstructorCache()
    with_bg = cache(holo, optics=Optics(), background=bg, source="a")
    cache(holo[:, :200], optics=Optics(), background=bg[:, :200], source="narrow")
    cache(holo, optics=Optics(), background=bg, source="again")
    assert len(cache._cache) == 2                                        # one per (shape, optics, background)
    shared = ReconstructorCache(shared_background=read_image(tmp_path / "backgrounds" / "a.png"))
    assert np.allclose(shared(holo, optics=Optics(), source="a").phase, with_bg.phase, atol=1e-5)
    assert rmse(with_bg.phase, true, true > 0.05) < 0.12
    with pytest.raises(ImageFileError, match="does not match the shape"):
        shared(holo[:, :200], optics=Optics(), source="narrow")

# ----------------------------------------------------------------------------- bad input
def test_plain_image_without_sideband_is_rejected():
    rng = np.random.default_rng(0)
    plain = ndimage.gaussian_filter(rng.normal(size=(200, 200)), 4)
    plain = ((plain - plain.min()) / np.ptp(plain) * 255).astype(np.uint8)
    with pytest.raises(ImageFileError, match=r"cells\.png: no off-axis sideband"):
        reconstruct(plain, source="cells.png")


def test_constant_stack_and_shape_errors():
    with pytest.raises(ImageFileError, match="flat.png: constant image"):
        reconstruct(np.full((64, 64), 7, np.uint8), source="flat.png")
    with pytest.raises(ImageFileError, match="stack"):
        reconstruct(np.zeros((3, 64, 64), np.uint8) + np.arange(64, dtype=np.uint8), source="stack.tif")
    holo, _ = hologram(phase_object())
    with pytest.raises(ImageFileError, match=r"bg\.png: background hologram of shape \(128, 128\)"):
        reconstruct(holo, background=holo[:128, :128], background_source="bg.png")
    with pytest.raises(ValueError, match="filter"):
        reconstruct(holo, filter="square")


def test_saturated_pixels_warn():
    holo, bg = hologram(phase_object())
    holo = holo.copy()
    holo[:20, :] = 255
    with pytest.warns(RuntimeWarning, match=r"sat\.png: .*saturated at 255"):
        reconstruct(holo, background=bg, source="sat.png")


def test_bad_file_in_batch_leaves_no_partial_output(tmp_path):
    holo, _ = hologram(phase_object())
    write_camera_image(tmp_path / "in" / "a.png", holo)
    write_camera_image(tmp_path / "in" / "b.png", np.full((256, 256), 9, np.uint8))
    with pytest.raises(ImageFileError, match=r"b\.png: constant image"):
        reconstruct_files([tmp_path / "in"], tmp_path / "out", progress=False)
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["a.tif"]  # complete file for the good one, no temporary left-overs
    assert read_phase(tmp_path / "out" / "a.tif").data.shape == (256, 256)


# ----------------------------------------------------------------------------- real data
def _real(name: str) -> Path:
    path = DATA / name
    if not path.exists():
        pytest.skip(f"real data not available: {path} (../shared/data is absent in a fresh clone)")
    return path


def _cell_peaks(phase: np.ndarray, *, min_area: int = 50) -> np.ndarray:
    lab, n = ndimage.label(phase > 1.0)
    idx = np.arange(1, n + 1)
    areas = ndimage.sum(np.ones_like(phase), lab, idx)
    return np.asarray(ndimage.maximum(phase, lab, idx))[areas >= min_area]


def _holograms() -> list[str]:
    if not DATA.is_dir():
        return []
    from rbclib.core.io import list_images

    return [p.name for p in list_images(DATA)]


@pytest.mark.realdata
@pytest.mark.parametrize("name", _holograms() or ["<absent>"])
def test_every_real_hologram_reconstructs(name, tmp_path):
    if name == "<absent>":
        pytest.skip(f"real data not available: {DATA}")
    out = reconstruct_files([_real(name)], tmp_path, progress=False)
    img = read_phase(out[0])
    assert np.all(np.isfinite(img.data)) and img.data.dtype == np.float32
    assert (tmp_path / "optics.json").exists()


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("name,max_std,n_min", [("rbc_pydhm.jpg", 0.3, 5),
                                                ("rbc_nontelecentric_50x.tiff", 0.5, 30)])
def test_real_rbc_holograms_give_plausible_cells(name, max_std, n_min):
    from rbclib.core.io import read_image

    img = read_image(_real(name))
    rec = reconstruct(img.data, source=name)
    peaks = _cell_peaks(rec.phase)
    # measured: pyDHM RBCs median peak 4.1 rad, non-telecentric 3.8 rad; background std 0.27 / 0.44 rad
    assert len(peaks) >= n_min
    assert 1.0 < np.median(peaks) < 5.0
    assert rec.background_std < max_std
    assert abs(float(np.median(rec.phase[rec.background_mask]))) < 0.05


@pytest.mark.realdata
def test_real_nontelecentric_needs_curvature_compensation():
    from rbclib.core.io import read_image

    img = read_image(_real("rbc_nontelecentric_50x.tiff"))
    crop = img.data[:512, :512]  # keeps the test fast
    tilt_only = reconstruct(crop, poly_order=1)
    curved = reconstruct(crop, poly_order=2)
    assert tilt_only.background_std > 5 * curved.background_std
    assert curved.background_std < 0.5


@pytest.mark.realdata
def test_real_hl60_uses_its_background_hologram():
    from rbclib.core.io import read_image

    img = read_image(_real("hl60_with_background.npz"))
    assert img.background is not None
    rec = reconstruct(img.data, background=img.background)
    numerical = reconstruct(img.data)
    assert rec.compensation == "background"
    assert rec.background_std < 0.15 < numerical.background_std + 0.05
    assert 2.0 < float(rec.phase.max()) < 7.0  # one HL60 cell, thicker than an RBC


@pytest.mark.realdata
def test_real_hdf5_takes_optics_from_attributes(tmp_path):
    out = reconstruct_files([_real("oah_with_metadata.h5")], tmp_path, progress=False)
    optics = read_json(tmp_path / "optics.json")
    assert optics["wavelength_m"] == pytest.approx(5.32e-7)
    assert optics["pixel_size_m"] == pytest.approx(8.475e-8, rel=1e-3)
    assert optics["n_medium"] == pytest.approx(1.333)
    assert read_phase(out[0]).meta["wavelength_m"] == pytest.approx(5.32e-7)
    from rbclib.core.io import read_image

    img = read_image(_real("oah_with_metadata.h5"))
    rec = reconstruct(img.data, optics=img.optics())
    assert rec.background_std < 0.15
    assert rec.optics.wavelength_m == pytest.approx(5.32e-7)


@pytest.mark.realdata
def test_real_hl60_field_autofocus_agrees_with_nrefocus():
    with zipfile.ZipFile(_real("hl60_complex_field.zip")) as zf:
        field = (np.loadtxt(io.BytesIO(zf.read("HL60_real.txt")))
                 + 1j * np.loadtxt(io.BytesIO(zf.read("HL60_imag.txt"))))
    optics = Optics(wavelength_m=647e-9, pixel_size_m=0.139e-6, n_medium=1.3333)  # nrefocus' test set-up
    d = autofocus(field, optics, interval_m=(-5e-6, 5e-6))
    # nrefocus (average-gradient metric) finds -0.878 um on this field
    assert d == pytest.approx(-0.878e-6, abs=0.3e-6)


def test_reconstruction_errors_against_the_truth(tmp_path):
    from rbclib.physics.phase_files import reconstruction_errors
    from rbclib.core.io import write_labels, write_phase

    truth = np.zeros((20, 30), np.float32)
    labels = np.zeros((20, 30), np.uint8)
    labels[5:10, 5:15] = 1                                    # 50 of 600 pixels are cell
    truth[labels > 0] = 2.0
    write_phase(tmp_path / "sim" / "phase" / "f0.tif", truth)
    write_labels(tmp_path / "sim" / "labels" / "f0.png", labels)
    recon = truth + np.where(labels > 0, 0.1, -0.05).astype(np.float32)
    recon[0, 0] = 1.0                                         # one bad background pixel
    write_phase(tmp_path / "rec" / "f0.tif", recon)
    row = reconstruction_errors([tmp_path / "rec" / "f0.tif"], tmp_path / "sim").iloc[0]
    assert row["image"] == "f0" and row["cell_fraction"] == pytest.approx(50 / 600)
    assert row["rmse_cells_rad"] == pytest.approx(0.1, abs=1e-6) and row["max_abs_error_rad"] == pytest.approx(1.0)
    assert row["rmse_background_rad"] == pytest.approx(np.sqrt((549 * 0.05**2 + 1.0) / 550), rel=1e-3)


def test_a_background_without_fringes_is_refused():
    from rbclib.physics.simulate import simulate_field

    f = simulate_field(5, field_px=128, cells_per_field=(2, 3))
    noise = np.random.default_rng(0).integers(0, 255, f.hologram.shape).astype(np.uint8)
    with pytest.raises(ImageFileError, match="noise.png: no interference fringes at the hologram's carrier"):
        reconstruct(f.hologram, background=noise, optics=f.optics, background_source="noise.png")
    rec = reconstruct(f.hologram, background=f.background, optics=f.optics)      # its own background: fine
    assert rec.compensation == "background"


def test_another_fields_hologram_as_background_is_refused():
    from rbclib.physics.recording import HologramSettings
    from rbclib.physics.simulate import simulate_field

    settings = HologramSettings(carrier=(0.1, 0.3))                      # one set-up, two fields
    a, b = (simulate_field(s, field_px=256, settings=settings) for s in (0, 100))
    with pytest.raises(ImageFileError, match="other.png: holds objects of its own"):
        reconstruct(a.hologram, background=b.hologram, optics=a.optics, background_source="other.png")
    assert reconstruct(a.hologram, background=a.background, optics=a.optics).compensation == "background"


def test_sideband_of_narrow_strips_of_a_twin_hologram():
    """Strips of a 900 px twin hologram down to 1:75 give the whole field's carrier: the
    spectrum is smoothed by the same width in cycles/px along both axes."""
    from rbclib.physics.simulate import simulate_field

    field = simulate_field(np.random.default_rng(2), field_px=900)
    holo = field.hologram
    fy, fx = find_sideband(holo)
    for strip in (holo[:24, :], holo[:, :24], holo[300:312, :], holo[:, 500:512]):
        sy, sx = find_sideband(strip)
        assert abs(sy - fy) < 0.01 and abs(sx - fx) < 0.01, (strip.shape, (sy, sx), (fy, fx))
