# rbc-holo: `make run` (set-up + the whole pipeline, quick profile) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rbc-installed
PROFILE ?= quick
KERNEL := rbc-holo

.PHONY: api-docs setup run test test-fast test-e2e bench ablation label-efficiency clean-runs default-model test-margins

setup: $(STAMP)

# torch/torchvision first, on their own, so pip resolves them once (see README).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "torch>=2.4" "torchvision>=0.19"
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (rbc-holo)"
	touch $(STAMP)

run: setup
	$(VENV)/bin/rbc run --profile $(PROFILE) --run-dir runs/$(PROFILE)

# The shipped default model (rbclib/models/default) from scratch by its recipe
# (rbclib/models/recipe.toml): twin, training, checks and model card.
default-model: setup
	$(VENV)/bin/rbc default-model --out runs/default-model --ship

# The learning tests over seeds 0-4 x torch threads 1-2 and two mutations (docs/testing.md).
test-margins: setup
	$(PY) tests/learning_sweep.py

test: setup
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -m "not e2e"

# The API reference from the docstrings (pdoc, numpy style) into build/api/ (tests/test_api_docs.py builds it too).
api-docs: setup
	$(PY) -m pdoc rbclib $$($(PY) -c "import pkgutil, rbclib; print(' '.join('rbclib.' + m.name for m in pkgutil.iter_modules(rbclib.__path__)))") --docformat numpy -o build/api

test-fast: setup
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -m "not slow and not e2e"

# Every benchmark but the two long studies: the multi-seed ablation (30-40 min per seed on 2
# cores, `make ablation`) and the label-efficiency study (about 1.5-2 h after `make run`, `make label-efficiency`).
bench: setup
	for b in benchmarks/bench_*.py; do case "$$b" in *bench_ablation.py|*bench_label_efficiency.py) continue;; esac; echo "== $$b"; $(PY) $$b || exit 1; done

ablation: setup
	$(PY) benchmarks/bench_ablation.py --profile $(PROFILE) --seeds 0 1 2

label-efficiency: setup
	$(PY) benchmarks/bench_label_efficiency.py --run-dir runs/$(PROFILE) --profile $(PROFILE)

clean-runs:
	rm -rf runs/

# End-to-end browser tests (tests/e2e): JupyterLab + headless Debian chromium driven by
# Playwright's Python package (never its own browser download). Installs what is missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
test-e2e: setup
	test -x /usr/bin/chromium || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends chromium; }
	$(PY) -c "import playwright" 2>/dev/null || $(PY) -m pip install --quiet "playwright>=1.40"
	$(PY) -m pytest -q -m e2e tests/e2e
