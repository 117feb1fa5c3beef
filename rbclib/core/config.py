"""Optical set-up (SI units, with provenance): :class:`Optics` and its ``optics.json``.

The profiles (smoke / quick / paper / gpu sizes) live in :mod:`rbclib.profile`.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rbclib.core.files import write_json

# Literature sources of the defaults, carried into every optics.json.
OPTICS_SOURCES = {
    "wavelength_m": "682.5 nm laser diode of the DHM (Lyncee Tec) used by Moon et al., Opt. Express 21, 30947 (2013), the storage data set the paper analyses",
    "pixel_size_m": "Park et al. 2025: 900 px over 129.68 um, i.e. 0.1441 um/px at the sample",
    "n_medium": "HEPA buffer, 1.3334 (Rappaz et al., Cytometry A 73, 895 (2008))",
    "n_cell": "assumed: n_medium + alpha * MCHC for a normal MCHC of 33 g/dL (reference range 32-36 g/dL), i.e. 1.396; used only for thickness and volume",
    "numerical_aperture": "objective NA assumed 0.7: 40x/0.65-0.75 objectives are usual for RBC DHM (Rappaz et al., Cytometry A 73, 895 (2008)); sets the coherent cut-off NA/wavelength and so the sideband filter radius",
    "alpha_m3_per_kg": "specific refraction increment of haemoglobin 0.19 mL/g (Barer, Nature 169, 366 (1952); Popescu et al., AJP Cell 295, C538 (2008))",
}


PIXEL_SIZE_RANGE_M = (10e-9, 5e-6)
"""Pixel sizes at the sample a red-cell image can have: a 7.5 um cell spans 1.5-750 px."""
OPTICS_RANGES: dict[str, tuple[float, float]] = {
    "wavelength_m": (100e-9, 2e-6), "pixel_size_m": PIXEL_SIZE_RANGE_M, "n_medium": (1.0, 2.0),
    "n_cell": (1.0, 2.5), "alpha_m3_per_kg": (1e-5, 1e-3), "numerical_aperture": (0.01, 1.7)}
"""Physically possible range of each Optics field (SI units); values outside are refused."""


@dataclass(frozen=True)
class Optics:
    """Optical parameters of a DHM set-up, SI units.

    Parameters
    ----------
    wavelength_m : float
        Illumination wavelength [m].
    pixel_size_m : float
        Camera pixel at the sample [m].
    n_medium : float
        Refractive index of the medium.
    n_cell : float
        Assumed mean cell index (thickness and volume only).
    alpha_m3_per_kg : float
        Specific refraction increment [m^3/kg].
    numerical_aperture : float
        Objective NA (coherent cut-off NA / wavelength: the sideband's radius).
    provenance : dict of str to str
        Where each value came from (field name -> text).

    Raises
    ------
    ValueError
        A field outside its physical range in :data:`OPTICS_RANGES`.
    """

    wavelength_m: float = 682.5e-9
    pixel_size_m: float = 0.1441e-6
    n_medium: float = 1.3334
    n_cell: float = 1.396
    alpha_m3_per_kg: float = 1.9e-4
    numerical_aperture: float = 0.7
    provenance: dict[str, str] = field(default_factory=lambda: dict(OPTICS_SOURCES))

    def __post_init__(self) -> None:
        for name, (lo, hi) in OPTICS_RANGES.items():
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                    and lo <= value <= hi):
                raise ValueError(f"Optics.{name}={value!r} is outside the physical range {lo:g}..{hi:g} "
                                 "(SI units)")

    @property
    def cutoff_cycles_per_px(self) -> float:
        """Coherent imaging cut-off NA / wavelength in cycles per pixel."""
        return self.numerical_aperture * self.pixel_size_m / self.wavelength_m

    @property
    def delta_n(self) -> float:
        """Assumed index difference n_cell - n_medium."""
        return self.n_cell - self.n_medium

    def replace(self, **changes: Any) -> "Optics":
        """Copy with some fields changed; changed fields get provenance 'user'.

        Parameters
        ----------
        **changes
            Field name -> new value; a ``provenance`` entry (field name -> text) gives the
            provenance of the changed fields instead of "given by the user".

        Returns
        -------
        Optics
            The changed copy.
        """
        prov = dict(self.provenance)
        for key in changes:
            if key != "provenance":
                prov[key] = changes.get("provenance", {}).get(key, "given by the user")
        changes = {k: v for k, v in changes.items() if k != "provenance"}
        return dataclasses.replace(self, provenance=prov, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict.

        Returns
        -------
        dict
            Field name -> value, provenance included.
        """
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Optics":
        """Optics from a dict of its fields.

        Parameters
        ----------
        data : dict
            Field name -> value; missing fields keep their defaults.

        Returns
        -------
        Optics
            The optics.

        Raises
        ------
        ValueError
            An unknown field, or a value outside its physical range.
        """
        check_known_fields(cls, data, "optics fields")
        return cls(**data)

    def to_json(self, path: str | Path) -> None:
        """Write the fields (provenance included) as ``optics.json``.

        Parameters
        ----------
        path : str or pathlib.Path
            The JSON file to write.
        """
        write_json(path, self.to_dict())

    @classmethod
    def from_json(cls, path: str | Path) -> "Optics":
        """Optics from an ``optics.json``.

        Parameters
        ----------
        path : str or pathlib.Path
            The JSON file to read.

        Returns
        -------
        Optics
            The optics.

        Raises
        ------
        ValueError
            The file cannot be read or parsed, or holds unknown fields or out-of-range values
            (the message names the file).
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read optics JSON ({exc})") from exc
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from exc


def check_known_fields(cls: type, data: dict[str, Any], what: str) -> None:
    """Raise ValueError naming ``data`` keys that are not fields of the dataclass ``cls``.

    Parameters
    ----------
    cls : type
        A dataclass.
    data : dict
        The keys to check.
    what : str
        What the keys are, for the message (e.g. "optics fields").

    Raises
    ------
    ValueError
        Some keys of ``data`` are not fields of ``cls``.
    """
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown {what} {sorted(unknown)}; expected some of {sorted(known)}")
