"""The smoke / quick / paper / gpu profiles: loading them, and one dataclass per stage as the
schema of ``rbclib/profiles/<stage>.toml``.

Profiles are data (one table per profile in each stage's TOML file): they fix sizes, never
code paths. Every table of a stage file is checked against its dataclass when the profiles
are loaded (:func:`load_profiles`, so before ``rbc run`` starts a notebook and whenever a
notebook loads its profile): an unknown, missing or mistyped key is a ``ProfileError`` naming the file, the table and the key.
Sub-tables (``[quick.common]`` of ``diffusion.toml``, ``[quick.ssl]`` of ``ssl.toml``)
are checked against the library config they feed (:class:`rbclib.synth.ddgan.DDGANConfig`,
:class:`rbclib.ssl.pretrain.SSLConfig`). See docs/ARCHITECTURE.md, "Profiles".
"""
from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass
from importlib import resources
from typing import Any, Union


class ProfileError(ValueError):
    """A profile table that does not match its stage's schema."""


@dataclass(frozen=True)
class SimulateProfile:
    """01: the simulated dataset. cells_per_field pins a count range per field; without it
    the density range (cells per 1000 um^2) sets the count; flat_discocyte_fraction: share of
    discocytes drawn flat-topped like real fresh cells (simulate_field's default when absent)."""
    n_fields: int
    field_px: int
    mixture: str
    cells_per_field: Union[list[int], None] = None
    density_per_1000um2: Union[list[float], None] = None
    flat_discocyte_fraction: Union[float, None] = None


@dataclass(frozen=True)
class AnnotateProfile:
    """02: automatic proposals and the split."""
    min_separation_um: float
    min_area_um2: float
    edge_fraction: float
    split_draws: int
    figure_images: int


@dataclass(frozen=True)
class DiffusionProfile:
    """03 / 04: sampling and curation sizes; the GANs' settings are the sub-tables
    ``common``, ``phase`` and ``mask`` (keys of :class:`rbclib.synth.ddgan.DDGANConfig`)."""
    n_candidates: int
    n_select: int
    min_consistency: float
    sample_batch: int
    n_eval_patches: int
    common: Union[dict, None] = None
    phase: Union[dict, None] = None
    mask: Union[dict, None] = None


@dataclass(frozen=True)
class SSLProfile:
    """05: corpus, probe and, in sub-table ``ssl``, the keys of :class:`rbclib.ssl.pretrain.SSLConfig`."""
    encoder: str
    image_px: int
    max_images: int
    sim_fields: int
    sim_field_px: int
    probe_fraction: float
    probe_per_class: int
    probe_fields: int
    probe_crop_px: int
    probe_test_fraction: float
    knn_k: int
    ssl: Union[dict, None] = None


@dataclass(frozen=True)
class SegmentProfile:
    """06 / 07: training (keys of :data:`rbclib.seg.train.DEFAULT_CONFIG`) and evaluation sizes."""
    encoder: str
    decoder_channels: list[int]
    baseline_encoder: str
    baselines: list[str]
    patch: int
    patch_mode: str
    autocast_bf16: bool
    phase_gain: list[float]
    overlap: int
    rotations: int
    epochs: int
    max_steps_per_epoch: int
    batch_size: int
    lr: float
    weight_decay: float
    val_fraction: float
    infer_batch_size: int
    n_time_images: int
    phase_range: Union[list[float], None] = None


@dataclass(frozen=True)
class StorageProfile:
    """08: the simulated storage series and the study's targets."""
    days: list[int]
    images_per_day: int
    field_px: int
    cells_per_field: list[int]
    n_boot: int
    min_area_um2: float
    fragment_fraction: float
    target_pp: float
    target_accuracy: float


STAGE_SCHEMAS: dict[str, type] = {"simulate": SimulateProfile, "annotate": AnnotateProfile,
                                  "diffusion": DiffusionProfile, "ssl": SSLProfile,
                                  "segment": SegmentProfile, "storage": StorageProfile}
"""Stage name (the TOML file's stem) -> its schema."""


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether a TOML ``value`` fits the annotation ``hint`` (an int is a valid float)."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is tuple:   # TOML arrays feed the library configs' tuples
        args = typing.get_args(hint)
        items = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        return isinstance(value, list) and len(value) == len(items) and all(map(_type_ok, value, items))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("Union[", "").replace(", NoneType]", " (optional)")


def _library_config(stage: str) -> type | None:
    if stage == "diffusion":
        from rbclib.synth.ddgan import DDGANConfig

        return DDGANConfig
    if stage == "ssl":
        from rbclib.ssl.pretrain import SSLConfig

        return SSLConfig
    return None


def check_table(stage: str, table: dict[str, Any], *, where: str) -> None:
    """Raise :class:`ProfileError` unless ``table`` (one profile's table of stage ``stage``)
    matches :data:`STAGE_SCHEMAS`; ``where`` names it in the message (file and table)."""
    schema = STAGE_SCHEMAS.get(stage)
    if schema is None:
        raise ProfileError(f"{where}: no schema for stage {stage!r}; expected one of {sorted(STAGE_SCHEMAS)}")
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key in table:
        if key not in fields:
            raise ProfileError(f"{where}: unknown key {key!r}; expected one of {sorted(fields)}")
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING
        if name not in table:
            if required:
                raise ProfileError(f"{where}: missing key {name!r} ({_type_name(hints[name])})")
            continue
        if not _type_ok(table[name], hints[name]):
            raise ProfileError(f"{where}: key {name!r} = {table[name]!r} should be {_type_name(hints[name])}")
    library = _library_config(stage)
    for sub in (n for n, h in hints.items() if h == Union[dict, None] and n in table):
        lib_hints = typing.get_type_hints(library)
        allowed = set(lib_hints) - {"kind"}
        for key, value in table[sub].items():
            if key not in allowed:
                raise ProfileError(f"{where}.{sub}: unknown key {key!r}; expected some of {sorted(allowed)}")
            if not _type_ok(value, lib_hints[key]):
                raise ProfileError(f"{where}.{sub}: key {key!r} = {value!r} should be {_type_name(lib_hints[key])}")


PROFILE_NAMES = ("smoke", "quick", "paper", "gpu")


def load_profiles() -> dict[str, dict[str, dict[str, Any]]]:
    """All profiles: {profile: {stage: {key: value}}}, from ``profiles/<stage>.toml``."""
    out: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in PROFILE_NAMES}
    folder = resources.files("rbclib").joinpath("profiles")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".toml"):
            continue
        stage, where = entry.name[: -len(".toml")], f"rbclib/profiles/{entry.name}"
        try:
            tables = tomllib.loads(entry.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ProfileError(f"{where}: not valid TOML: {exc}") from None
        missing = [n for n in PROFILE_NAMES if n not in tables]
        if missing:
            raise ProfileError(f"{where}: no table for profile(s) {missing}")
        extra = sorted(set(tables) - set(PROFILE_NAMES))
        if extra:
            raise ProfileError(f"{where}: unknown table(s) {extra}; expected {list(PROFILE_NAMES)}")
        for name in PROFILE_NAMES:
            check_table(stage, tables[name], where=f"{where} [{name}]")
            out[name][stage] = tables[name]
    return out


def get_profile(name: str) -> dict[str, dict[str, Any]]:
    """Sizes for one profile, by stage: ``get_profile("quick")["simulate"]["n_fields"]``."""
    if name not in PROFILE_NAMES:
        raise ValueError(f"unknown profile {name!r}; choose one of {list(PROFILE_NAMES)}")
    return load_profiles()[name]
