"""Run the learning tests (``-m learning``) over seeds x torch threads, and under the two
mutations of ``learning_mutations``; write every bound's worst-case margin.

    python tests/learning_sweep.py                      # seeds 0-4 x threads 1-2 + mutations
    python tests/learning_sweep.py --seeds 0 --threads 1 --mutations

Writes ``docs/results/learning_margins.csv`` (one row per test, check, seed and threads) and
rewrites the generated block of ``docs/testing.md``. Exits 1 when a test fails in a clean
combination or passes under a mutation.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
BLOCK = ("<!-- learning-margins:start -->", "<!-- learning-margins:end -->")


def run_pytest(env_extra: dict[str, str], work: Path, tag: str, tests: list[str]) -> tuple[dict[str, str], Path, float]:
    """One pytest run of the learning tests; returns {test id: outcome}, the margin log and seconds."""
    junit, log = work / f"{tag}.xml", work / f"{tag}.jsonl"
    env = {**os.environ, **env_extra, "RBC_MARGIN_LOG": str(log),
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "learning", "-p", "learning_mutations", "-p", "no:cacheprovider",
           f"--junitxml={junit}", *tests]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    outcomes = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kind = [c.tag for c in case if c.tag in ("failure", "error", "skipped")]
        outcomes[name] = kind[0] if kind else "passed"
    return outcomes, log, seconds


def read_margins(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def short(test: str) -> str:
    return test.replace("tests.", "").replace("tests/", "")


def write_block(doc: Path, text: str) -> None:
    body = doc.read_text()
    start, end = body.index(BLOCK[0]) + len(BLOCK[0]), body.index(BLOCK[1])
    doc.write_text(body[:start] + "\n" + text + "\n" + body[end:])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--mutations", nargs="*", default=["no_step", "detached_loss"],
                    help="mutations to run once each (seed 0, one thread); none: skip them")
    ap.add_argument("--tests", nargs="*", default=["tests"], help="test files or ids (default: all)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/ as it is")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="learning_sweep_"))
    rows, failures, clean = [], [], {}
    for seed in args.seeds:
        for threads in args.threads:
            tag = f"seed{seed}_threads{threads}"
            outcomes, log, seconds = run_pytest({"RBC_TEST_SEED": str(seed), "RBC_TEST_THREADS": str(threads)}, work, tag,
                                                args.tests)
            clean[tag] = outcomes
            bad = sorted(t for t, o in outcomes.items() if o != "passed")
            failures += [f"{tag}: {t} {outcomes[t]}" for t in bad]
            rows += read_margins(log)
            print(f"{tag}: {sum(o == 'passed' for o in outcomes.values())}/{len(outcomes)} passed in {seconds:.0f} s"
                  + (f"; failed: {', '.join(map(short, bad))}" if bad else ""), flush=True)
    mutated = {}
    for mutation in args.mutations:
        outcomes, _, seconds = run_pytest({"RBC_TEST_SEED": "0", "RBC_TEST_THREADS": "1", "RBC_TEST_MUTATION": mutation},
                                          work, mutation, args.tests)
        mutated[mutation] = outcomes
        survivors = sorted(t for t, o in outcomes.items() if o == "passed")
        failures += [f"{mutation}: {t} still passes" for t in survivors]
        print(f"{mutation}: {sum(o != 'passed' for o in outcomes.values())}/{len(outcomes)} failed in {seconds:.0f} s"
              + (f"; still passing: {', '.join(map(short, survivors))}" if survivors else ""), flush=True)
    table = pd.DataFrame(rows)
    if table.empty:
        print("no margins recorded")
        return 1
    table["test"] = table["test"].map(lambda t: t.split("::", 1)[0].removeprefix("tests/") + "::" + t.split("::", 1)[1])
    worst = (table.loc[table.groupby(["test", "check"])["margin"].idxmin()]
             .sort_values(["test", "check"])[["test", "check", "bound", "value", "margin", "seed", "threads"]])
    lines = [f"Seeds {', '.join(map(str, args.seeds))} x torch threads {', '.join(map(str, args.threads))}: "
             f"{len(table)} checks in {len(clean)} runs. Worst case of each check (margin: how far the value "
             "stays from the bound, as a share of the bound):", "",
             "| test | check | bound | worst value | margin | at seed, threads |", "|---|---|---:|---:|---:|---|"]
    for r in worst.itertuples():
        lines.append(f"| `{r.test.split('::')[1]}` | {r.check} | {r.bound:.4g} | {r.value:.4g} | {r.margin:+.0%} | "
                     f"{r.seed}, {r.threads} |")
    if mutated:
        names = sorted({t for o in mutated.values() for t in o})
        lines += ["", "Under the mutations (seed 0, one thread):", "",
                  "| test | " + " | ".join(mutated) + " |", "|---|" + "---|" * len(mutated)]
        for t in names:
            lines.append(f"| `{t.split('::')[-1]}` | " + " | ".join(mutated[m].get(t, "-") for m in mutated) + " |")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        table.to_csv(REPO / "docs" / "results" / "learning_margins.csv", index=False, float_format="%.6g")
        write_block(REPO / "docs" / "testing.md", text)
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
