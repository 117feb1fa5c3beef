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
    """01: the simulated dataset.

    Attributes
    ----------
    n_fields : int
        Simulated fields.
    field_px : int
        Field side [px] (at 0.1441 um/px).
    mixture : str
        Class shares, ``"discocyte=0.758,spherocyte=0.103,..."``.
    cells_per_field : list of int, optional
        [low, high] count range per field; pins the count.
    density_per_1000um2 : list of float, optional
        [low, high] cells per 1000 um^2; sets the count without ``cells_per_field``.
    flat_discocyte_fraction : float, optional
        Share of discocytes drawn flat-topped like real fresh cells (simulate_field's default
        when absent).
    """
    n_fields: int
    field_px: int
    mixture: str
    cells_per_field: Union[list[int], None] = None
    density_per_1000um2: Union[list[float], None] = None
    flat_discocyte_fraction: Union[float, None] = None


@dataclass(frozen=True)
class AnnotateProfile:
    """02: automatic proposals and the split.

    Attributes
    ----------
    min_separation_um : float
        Closest two watershed seeds (cell centres) [um].
    min_area_um2 : float
        Smaller proposals are flagged "tiny" [um^2].
    edge_fraction : float
        Proposals grow down to this fraction of the threshold.
    split_draws : int
        Random draws searched for a stratified split.
    figure_images : int
        Example images in the figures.
    """
    min_separation_um: float
    min_area_um2: float
    edge_fraction: float
    split_draws: int
    figure_images: int


@dataclass(frozen=True)
class DiffusionProfile:
    """03 / 04: sampling and curation sizes.

    Attributes
    ----------
    n_candidates : int
        Generated pairs offered for curation.
    n_select : int
        Pairs accepted (each written with x4 rotations).
    min_consistency : float
        Consistency score below which a pair is rejected outright.
    sample_batch : int
        Pairs per generator call.
    n_eval_patches : int
        Real / generated patches for the distribution distance.
    common, phase, mask : dict, optional
        The GANs' settings, sub-tables of keys of :class:`rbclib.synth.ddgan.DDGANConfig`:
        shared ones, and those of the phase and of the mask GAN.
    """
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
    """05: corpus, probe and, in sub-table ``ssl``, the keys of :class:`rbclib.ssl.pretrain.SSLConfig`.

    Attributes
    ----------
    encoder : str
        ResUnet encoder, used when ``segment.toml`` names none.
    image_px : int
        Corpus image side [px] (smears resized; simulated field side).
    max_images : int
        Pretraining images (0: all).
    sim_fields : int
        Simulated fields when the corpus is "simulated".
    sim_field_px : int
        Their side [px] (0.1441 um/px, not resized).
    probe_fraction : float
        Share of each PBC class held out of pretraining for the probe.
    probe_per_class : int
        Probe images per class (0: all held-out ones).
    probe_fields : int
        Simulated fields cropped into labelled cells for the probe.
    probe_crop_px : int
        Side of those cell crops [px].
    probe_test_fraction : float
        Share of the probe set the probe is scored on.
    knn_k : int
        Neighbours of the k-NN probe.
    ssl : dict, optional
        Keys of :class:`rbclib.ssl.pretrain.SSLConfig`.
    """
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
    """06 / 07: training (keys of :data:`rbclib.seg.config.DEFAULT_CONFIG`) and evaluation sizes.

    Attributes
    ----------
    encoder : str
        ResUnet encoder (the paper: resnet50).
    decoder_channels : list of int
        ResUnet decoder widths.
    baseline_encoder : str
        Encoder of the baselines.
    baselines : list of str
        Baseline models trained beside the ResUnet arms.
    patch : int
        Training patch side [px].
    patch_mode : str
        "paper" (non-overlapping grid), "cover" (overlapping tiles) or "balanced"
        (class-balanced random crops).
    autocast_bf16 : bool
        bfloat16 autocast of the training forward pass.
    phase_gain : list of float
        Balanced crops: phase x a log-uniform gain from this [low, high] range.
    overlap : int
        Pixels shared by tiles ("cover" patches and inference).
    rotations : int
        x4 rotation augmentation (1: off).
    epochs : int
        Training epochs.
    max_steps_per_epoch : int
        Batches per epoch (0: full pass).
    batch_size : int
        Training batch size.
    lr, weight_decay : float
        Learning rate and weight decay of the optimiser.
    val_fraction : float
        Share of the train split held out for validation.
    infer_batch_size : int
        Tiles per forward pass at evaluation.
    n_time_images : int
        Table 3 protocol: time to segment this many test images.
    finetune_epochs, finetune_steps, finetune_twin_fields : int
        06 with ``init_model``: epochs, batches per epoch and rehearsal twin fields
        (:func:`rbclib.study.finetune.twin_rehearsal_fields`) of fine-tuning a trained model
        (:func:`rbclib.study.finetune.finetune_model`).
    finetune_match_twin : bool
        Match those twin fields to the run's training fields
        (:func:`rbclib.study.twin_match.match_twin`).
    phase_range : list of float, optional
        [lo, hi] phase [rad] of the fixed-range normalisation (default
        :data:`rbclib.seg.datasets.PHASE_RANGE_RAD`).
    """
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
    finetune_epochs: int
    finetune_steps: int
    finetune_twin_fields: int
    finetune_match_twin: bool
    phase_range: Union[list[float], None] = None


@dataclass(frozen=True)
class StorageProfile:
    """08: the simulated storage series and the study's targets.

    Attributes
    ----------
    days : list of int
        Storage days simulated (the paper's 11 periods, 8-57 d).
    images_per_day : int
        Fields per day.
    field_px : int
        Simulated field side [px at 0.1441 um/px].
    cells_per_field : list of int
        [low, high] cells per field.
    n_boot : int
        Bootstrap replicates of the 95 % confidence intervals.
    min_area_um2, fragment_fraction : float
        Clean-up of predicted cells (:func:`rbclib.study.segmenter.clean_instances`).
    target_pp : float
        Verification target: class ratio error [percentage points]; reported, never tuned to.
    target_accuracy : float
        Verification target: per-class accuracy; reported, never tuned to.
    """
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
    """Raise :class:`ProfileError` unless ``table`` matches :data:`STAGE_SCHEMAS`.

    Sub-tables are checked against the library config they feed.

    Parameters
    ----------
    stage : str
        The stage (the TOML file's stem).
    table : dict
        One profile's table of stage ``stage``.
    where : str
        Names the table in the message (file and table).

    Raises
    ------
    ProfileError
        An unknown stage, or an unknown, missing or mistyped key.
    """
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
    """All profiles, from ``profiles/<stage>.toml``, each table checked (:func:`check_table`).

    Returns
    -------
    dict
        {profile: {stage: {key: value}}}.

    Raises
    ------
    ProfileError
        A file that is not valid TOML, lacks a profile's table, has unknown tables, or a table
        that does not match its schema.
    """
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
    """Sizes for one profile, by stage: ``get_profile("quick")["simulate"]["n_fields"]``.

    Parameters
    ----------
    name : str
        One of :data:`PROFILE_NAMES`.

    Returns
    -------
    dict
        {stage: {key: value}}.

    Raises
    ------
    ValueError
        An unknown profile name.
    """
    if name not in PROFILE_NAMES:
        raise ValueError(f"unknown profile {name!r}; choose one of {list(PROFILE_NAMES)}")
    return load_profiles()[name]
