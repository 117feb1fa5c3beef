"""The shipped default model: trained once by a fixed recipe, checked on the twin, another
microscope and the real holograms, and shipped inside the package with its model card.

``rbc default-model`` (``make default-model``) runs :func:`build_default_model`: it simulates
the recipe's twin (:data:`RECIPE`), trains the segmenter, writes ``card.json`` and
``MODEL_CARD.md`` (:func:`write_card`) and, with ``ship``, copies the model into
:data:`SHIPPED_MODEL_DIR` with compressed weights (:func:`ship_model`).
"""
from __future__ import annotations

import json
import platform
import time
import tomllib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from rbclib.core.config import Optics
from rbclib.core.files import file_sha256

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
SHIPPED_MODEL_DIR = MODELS_DIR / "default"
"""The default model of ``rbc assess`` and :func:`rbclib.analyse`: ``config.json``,
``best.pt`` (int8 / float16 weights), ``card.json`` and ``MODEL_CARD.md``."""
RECIPE = MODELS_DIR / "recipe.toml"
"""The recipe of the shipped model: twin, training config, checks."""
CARD_FILES = ("config.json", "best.pt")
"""The files whose SHA-256 the model card records."""


def read_recipe(path: str | Path = RECIPE) -> dict[str, Any]:
    """The recipe TOML as a dict.

    Parameters
    ----------
    path : str or pathlib.Path, optional
        The recipe file (default :data:`RECIPE`).

    Returns
    -------
    dict
        The recipe (``seed``, ``twin``, ``train``, ``check``).

    Raises
    ------
    ValueError
        One of those four tables or keys is missing.
    """
    recipe = tomllib.loads(Path(path).read_text())
    missing = {"seed", "twin", "train", "check"} - set(recipe)
    if missing:
        raise ValueError(f"{path}: missing {sorted(missing)}")
    return recipe


def twin_pairs(recipe: dict[str, Any]) -> dict[str, list]:
    """The recipe's twin, split into training, validation and test fields.

    Parameters
    ----------
    recipe : dict
        The recipe (:func:`read_recipe`): its ``seed`` and ``twin`` table (``noise_nm``, when
        given, replaces the twin's coherent-noise range).

    Returns
    -------
    dict of str to list
        {"train", "val", "test"} -> lists of (:class:`rbclib.seg.datasets.Pair`, instances)
        at the twin's pixel size (0.1441 um/px).
    """
    twin = recipe["twin"]
    seeds = np.random.SeedSequence([int(recipe["seed"]), 32]).spawn(int(twin["n_fields"]))
    fields = recipe_fields(recipe, seeds, name="default-model twin")
    n_test, n_val = int(twin["test_fields"]), int(twin["val_fields"])
    return {"test": fields[:n_test], "val": fields[n_test:n_test + n_val], "train": fields[n_test + n_val:]}


def recipe_fields(recipe: dict[str, Any], seeds: Sequence[np.random.SeedSequence], *, optics: Optics | None = None,
                  name: str = "twin") -> list[tuple]:
    """Fields drawn as the recipe's twin draws them, recorded by the twin's or another microscope's optics.

    With another microscope's ``optics`` a field keeps the recipe's area (its side in pixels
    scales with the pixel size), its cells, noise and defocus ranges: the shipped model's
    training data as that microscope would record it.

    Parameters
    ----------
    recipe : dict
        The recipe (:func:`read_recipe`); its ``twin`` table sets the fields (``noise_nm`` and
        ``defocus_um``, when given, replace the twin's ranges).
    seeds : sequence of numpy.random.SeedSequence
        One seed per field.
    optics : rbclib.core.config.Optics, optional
        The recording optics (default: the twin's).
    name : str
        Names the fields (``<name> <i>``) in warnings; the pairs are named ``twin_<i>``.

    Returns
    -------
    list of tuple
        (:class:`rbclib.seg.datasets.Pair`, instances) per seed, at the optics' pixel size.
    """
    from rbclib.physics.recording import HologramSettings
    from rbclib.physics.simulate import simulate_field

    twin = recipe["twin"]
    kw = {k: twin[k] for k in ("density_per_1000um2", "mixture", "flat_discocyte_fraction")}
    if "defocus_um" in twin:
        kw["defocus_um"] = tuple(twin["defocus_um"])
    if "noise_nm" in twin:
        kw["settings"] = HologramSettings(noise_nm=tuple(twin["noise_nm"]))
    field_px = int(twin["field_px"])
    if optics is not None:
        field_px = int(round(field_px * Optics().pixel_size_m / optics.pixel_size_m))
    fields = []
    for i, ss in enumerate(seeds):
        f = simulate_field(np.random.default_rng(ss), field_px=field_px, optics=optics, **kw)
        fields.append(reconstructed_pair(f, f"twin_{i:03d}", source=f"{name} {i}"))
    return fields


def reconstructed_pair(field: Any, pair_name: str, *, source: str) -> tuple:
    """A simulated field's hologram reconstructed as 01 does, with its truth.

    The background hologram is used, or numerical compensation where the reconstruction
    refuses it as too noisy.

    Parameters
    ----------
    field : rbclib.physics.simulate.SimulatedField
        The simulated field (hologram, background, optics, truth).
    pair_name : str
        The pair's name.
    source : str
        Names the field in warnings.

    Returns
    -------
    tuple
        (:class:`rbclib.seg.datasets.Pair` of phase [rad] and class map, instance map).
    """
    from rbclib.physics.holography import reconstruct
    from rbclib.seg.datasets import Pair

    try:
        rec = reconstruct(field.hologram, background=field.background, optics=field.optics, source=source)
    except ValueError:  # a background too noisy for the reconstruction's check
        rec = reconstruct(field.hologram, optics=field.optics, source=source)
    return Pair(rec.phase.astype(np.float32), field.labels, pair_name), field.instances


def train_default_model(recipe: dict[str, Any], out_dir: str | Path, *, pairs: dict[str, list] | None = None,
                        progress: bool = True) -> Path:
    """Train the recipe's segmenter into ``out_dir`` (a model folder).

    Parameters
    ----------
    recipe : dict
        The recipe (:func:`read_recipe`); its ``train`` table is the training config.
    out_dir : str or pathlib.Path
        The model folder to write.
    pairs : dict of str to list, optional
        :func:`twin_pairs` of the recipe, if already made.
    progress : bool, optional
        Show progress bars.

    Returns
    -------
    pathlib.Path
        The model folder.
    """
    from rbclib.seg.config import make_config
    from rbclib.seg.train import train_segmenter
    from rbclib.study.finetune import at_model_pixel_size

    pairs = pairs or twin_pairs(recipe)
    config = make_config(recipe["train"])
    twin_px = Optics().pixel_size_m
    return train_segmenter(at_model_pixel_size([p for p, _ in pairs["train"]], twin_px, config["pixel_size_m"]),
                           at_model_pixel_size([p for p, _ in pairs["val"]], twin_px, config["pixel_size_m"]),
                           model_name=config["model_name"], out_dir=out_dir, config=config,
                           seed=int(recipe["seed"]), progress=progress)


def twin_scores(model_dir: str | Path, pairs: list) -> dict[str, float]:
    """Dice and AJI per class and overall of the model, segmenting as ``rbc assess`` does.

    Parameters
    ----------
    model_dir : str or pathlib.Path
        The model folder.
    pairs : list
        (:class:`rbclib.seg.datasets.Pair`, instances) test fields, scored on their own grid.

    Returns
    -------
    dict of str to float
        ``dice_<class>``, ``dice_overall``, ``aji_<class>``, ``aji_overall``.
    """
    from rbclib.seg.metrics import aji_per_class, dice_per_class, mean_scores
    from rbclib.study.segmenter import Segmenter

    segmenter = Segmenter(model_dir)
    dice, aji = [], []
    for pair, instances in pairs:
        labels, pred_instances, *_ = segmenter(pair.phase, Optics().pixel_size_m)
        dice.append(dice_per_class(labels, pair.labels))
        aji.append(aji_per_class(labels, pair.labels, pred_instances=pred_instances, true_instances=instances))
    return {**{f"dice_{k}": v for k, v in mean_scores(dice).items()}, **{f"aji_{k}": v for k, v in mean_scores(aji).items()}}


def check_model(model_dir: str | Path, recipe: dict[str, Any], *, pairs: dict[str, list] | None = None,
                real_data: str | Path | None = None) -> dict[str, Any]:
    """The model card's numbers.

    Parameters
    ----------
    model_dir : str or pathlib.Path
        The model folder.
    recipe : dict
        The recipe (:func:`read_recipe`); its ``check`` table sizes the checks.
    pairs : dict of str to list, optional
        :func:`twin_pairs` of the recipe, if already made (its ``test`` fields are scored).
    real_data : str or pathlib.Path, optional
        Folder of the real holograms (default: :func:`rbclib.physics.realism.shared_data_dir`).

    Returns
    -------
    dict
        ``parameters``, ``own_twin_test`` (:func:`twin_scores`), ``quick_twin`` (the quick twin
        and another microscope, :func:`rbclib.study.transfer.transfer_table`),
        ``real_holograms`` (:func:`rbclib.study.transfer.real_hologram_check`, one dict per
        hologram) and ``speed`` (holograms/s of ``rbc assess``, :func:`assess_speed`).
    """
    import tempfile

    from rbclib.physics import realism
    from rbclib.profile import get_profile
    from rbclib.seg.compute import count_parameters
    from rbclib.seg.infer import load_model
    from rbclib.study.transfer import model_segmenter, real_hologram_check, transfer_table

    check = recipe["check"]
    pairs = pairs or twin_pairs(recipe)
    out: dict[str, Any] = {"parameters": count_parameters(load_model(model_dir, device="cpu")[0])}
    out["own_twin_test"] = twin_scores(model_dir, pairs["test"])
    quick = get_profile("quick")["simulate"]
    table = transfer_table(model_segmenter(model_dir), n_fields=int(check["transfer_fields"]),
                           seed=int(check["transfer_seed"]), mixture=quick["mixture"])
    out["quick_twin"] = {row: {k: float(v) for k, v in table.loc[row].items()} for row in table.index}
    data = Path(real_data) if real_data else realism.shared_data_dir()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in realism.real_hologram_paths(data):
            row = real_hologram_check(path, model_dir, Path(tmp) / path.stem)
            row.pop("overlay")
            rows.append(row)
        out["speed"] = assess_speed(model_dir, int(check["speed_holograms"]), Path(tmp) / "speed")
    out["real_holograms"] = rows
    return out


def assess_speed(model_dir: str | Path, n: int, work: Path) -> dict[str, float]:
    """Holograms/s of :func:`rbclib.study.assess.assess` on twin holograms of 900 x 900 px.

    Warm: a first pass compiles and loads, the second is timed.

    Parameters
    ----------
    model_dir : str or pathlib.Path
        The model folder.
    n : int
        Holograms to simulate and assess.
    work : pathlib.Path
        Folder for the holograms and both passes' outputs.

    Returns
    -------
    dict of str to float
        ``holograms``, ``seconds`` and ``holograms_per_s`` of the timed pass.
    """
    from rbclib.core.io import write_camera_image
    from rbclib.physics.simulate import simulate_field
    from rbclib.study.assess import assess
    from rbclib.study.segmenter import Segmenter

    for i in range(n):
        f = simulate_field(np.random.default_rng([7, i]), field_px=900)
        write_camera_image(work / "holograms" / f"h{i:02d}.png", f.hologram)
    assess(work / "holograms", work / "warm", segmenter=Segmenter(model_dir), progress=False, n_boot=10, overlays=False)
    t0 = time.perf_counter()
    assess(work / "holograms", work / "timed", segmenter=Segmenter(model_dir), progress=False, n_boot=10, overlays=False)
    seconds = time.perf_counter() - t0
    return {"holograms": n, "seconds": seconds, "holograms_per_s": n / seconds}


def write_card(model_dir: str | Path, recipe: dict[str, Any], checks: dict[str, Any], *, command: str,
               minutes: float) -> None:
    """Write ``card.json`` (recipe, checks, file hashes) and ``MODEL_CARD.md`` into ``model_dir``.

    Parameters
    ----------
    model_dir : str or pathlib.Path
        The model folder; the SHA-256 of its :data:`CARD_FILES` are recorded.
    recipe : dict
        The recipe the model was made by.
    checks : dict
        :func:`check_model`'s numbers.
    command : str
        The command that made it, for the card.
    minutes : float
        How long the build took [min].
    """
    from rbclib.core.files import write_json, write_text

    model_dir = Path(model_dir)
    card = {"name": "rbc-holo default model", "command": command, "build_minutes": round(minutes, 1),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "recipe": recipe,
            "checks": checks, "sha256": {name: file_sha256(model_dir / name) for name in CARD_FILES}}
    write_json(model_dir / "card.json", card)
    write_text(model_dir / "MODEL_CARD.md", render_card(card))


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def render_card(card: dict[str, Any]) -> str:
    """The Markdown model card of ``card.json``'s content.

    Parameters
    ----------
    card : dict
        What :func:`write_card` writes to ``card.json``.

    Returns
    -------
    str
        ``MODEL_CARD.md``'s text.
    """
    recipe, checks, train = card["recipe"], card["checks"], card["recipe"]["train"]
    twin = recipe["twin"]
    own, quick = checks["own_twin_test"], checks["quick_twin"]
    classes = ("discocyte", "spherocyte", "echinocyte", "stomatocyte")
    lines = [f"# {card['name']}", "",
             f"A {train['model_name']} ({train['encoder']} encoder, decoder {train['decoder_channels']}), "
             f"{checks['parameters']:,} parameters, working at {train['pixel_size_m'] * 1e6:.4f} um/px "
             f"(inputs are resampled to it), tiles of {train.get('infer_tile') or train['patch']} px, "
             f"halo trimming {'on' if train.get('trim_halo') else 'off'}.", "",
             "## Training data and recipe", "",
             f"- Digital twin (`rbclib.physics.simulate`, off-axis holograms reconstructed with their backgrounds, or "
             f"numerically where a background is too noisy for the check): "
             f"{twin['n_fields']} fields of {twin['field_px']} px at 0.1441 um/px, density "
             f"{twin['density_per_1000um2']} cells per 1000 um^2, mixture `{twin['mixture']}`, "
             f"{_pct(twin['flat_discocyte_fraction'])} of discocytes flat-topped, coherent noise "
             f"{twin.get('noise_nm', 'of the default range 3-25')} nm; {twin['test_fields']} fields held out for test, "
             f"{twin['val_fields']} for validation.",
             f"- Training: {train['epochs']} x {train['max_steps_per_epoch']} steps of {train['batch_size']} x "
             f"{train['patch']} px class-balanced crops, lr {train['lr']}, phase gain {train['phase_gain']}, "
             f"seed {recipe['seed']}. The whole recipe: `rbclib/models/recipe.toml`.",
             f"- Made by `{card['command']}` in {card['build_minutes']} min on {card['machine']}.", "",
             "## Twin", "",
             "| test set | " + " | ".join(classes) + " | overall |", "|---|" + "---:|" * 5,
             "| own twin, Dice | " + " | ".join(f"{own[f'dice_{c}']:.3f}" for c in classes)
             + f" | {own['dice_overall']:.3f} |",
             "| own twin, AJI | " + " | ".join(f"{own[f'aji_{c}']:.3f}" for c in classes)
             + f" | {own['aji_overall']:.3f} |"]
    for row in ("in-domain", "other optics", "drop"):
        lines.append(f"| quick twin, {row}, Dice | " + " | ".join(f"{quick[row][c]:.3f}" for c in classes)
                     + f" | {quick[row]['overall']:.3f} |")
    lines += ["", "Other optics: `bench_transfer`'s microscope (633 nm, 0.094 um/px, noisier, another carrier).",
              "", "## Real holograms (`../shared/data`)", "",
              "| hologram | cells | independent count | ratio | " + " | ".join(classes) + " |",
              "|---|---:|---:|---:|" + "---:|" * 4]
    for r in checks["real_holograms"]:
        lines.append(f"| `{r['hologram']}` | {r['cells']} | {r['independent']} | {r['count_ratio']:.2f} | "
                     + " | ".join(_pct(r[f"share_{c}"]) for c in classes) + " |")
    speed = checks["speed"]
    lines += ["", "Targets: count within 15 % of the independent count, at least 80 % discocytes (fresh cells).",
              "", "## Speed", "",
              f"`rbc assess` on {speed['holograms']} twin holograms of 900 x 900 px: "
              f"{speed['holograms_per_s']:.2f} holograms/s on the build machine (warm, both cores).", "",
              "## Files", "", *[f"- `{k}`: SHA-256 `{v}`" for k, v in card["sha256"].items()], ""]
    return "\n".join(lines)


def ship_model(model_dir: str | Path, dest: str | Path = SHIPPED_MODEL_DIR) -> Path:
    """Copy a trained model folder's ``config.json`` and ``best.pt`` into ``dest``, the weights compressed.

    The card is written after, on ``dest``.

    Parameters
    ----------
    model_dir : str or pathlib.Path
        The trained model folder.
    dest : str or pathlib.Path, optional
        Where to copy it (default :data:`SHIPPED_MODEL_DIR`).

    Returns
    -------
    pathlib.Path
        ``dest``, holding ``config.json`` and ``best.pt`` with compressed weights
        (:func:`rbclib.core.training.compress_weights`: int8 convolutions, float16 rest; no
        optimiser state).
    """
    from rbclib.core.files import write_json
    from rbclib.core.training import compress_weights, load_checkpoint, save_checkpoint

    model_dir, dest = Path(model_dir), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    ckpt = load_checkpoint(model_dir / "best.pt")
    save_checkpoint(dest / "best.pt", {"compressed_model": compress_weights(ckpt["model"]), "epoch": ckpt.get("epoch"),
                                       "score": ckpt.get("score")})
    write_json(dest / "config.json", json.loads((model_dir / "config.json").read_text()))
    return dest


def build_default_model(out_dir: str | Path, *, recipe_path: str | Path = RECIPE, ship: str | Path | None = None,
                        command: str = "make default-model", progress: bool = True) -> Path:
    """Train, check and card the default model in ``out_dir``; with ``ship``, copy it there
    (compressed weights) and card that copy.

    Parameters
    ----------
    out_dir : str or pathlib.Path
        Work folder: the model goes to ``out_dir/model``, the real-hologram checks to
        ``out_dir/real_holograms.csv``.
    recipe_path : str or pathlib.Path, optional
        The recipe (default :data:`RECIPE`).
    ship : str or pathlib.Path, optional
        Folder to ship the model to (e.g. :data:`SHIPPED_MODEL_DIR`); None: no copy.
    command : str, optional
        The command recorded on the card.
    progress : bool, optional
        Show progress bars.

    Returns
    -------
    pathlib.Path
        The carded folder (``ship`` when given, else the trained model folder).
    """
    t0 = time.perf_counter()
    recipe = read_recipe(recipe_path)
    pairs = twin_pairs(recipe)
    trained = train_default_model(recipe, Path(out_dir) / "model", pairs=pairs, progress=progress)
    final = ship_model(trained, ship) if ship else trained
    checks = check_model(final, recipe, pairs=pairs)
    write_card(final, recipe, checks, command=command, minutes=(time.perf_counter() - t0) / 60)
    pd.DataFrame(checks["real_holograms"]).to_csv(Path(out_dir) / "real_holograms.csv", index=False)
    return final
