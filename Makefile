# asr-kd: `make demo` runs the main recipe on the offline default, `make test` the test suite.
# Each target creates the virtual environment .venv on first use (and again when pyproject.toml
# changes), and installs the optional system packages (Festival) where it can
# (local/install_system_packages.sh: apt-get as root, else one line saying what is missing).

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python
# Arguments passed on to pytest, e.g. `make test PYTEST_ARGS="-k lang -x"`.
PYTEST_ARGS ?=

.PHONY: venv demo test test-fast test-k2 bench clean-demo help

help:
	@echo "make demo   set up .venv, then run recipes/librispeech/run.sh on the synthetic 'mini' corpus"
	@echo "make test   set up .venv, then run the test suite"
	@echo "make test-fast  every test not marked slow (no recipe runs end to end)"
	@echo "make bench  set up .venv, then run the benchmarks under bench/ (writes bench/RESULTS.md)"
	@echo "make test-k2  optional: build .venv-k2 (Python 3.9, torch 1.13.1, k2), check k2 against our CTC loss and HLG decoding"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "asr-kd needs Python 3.11: run make with PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	./local/install_system_packages.sh
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	./recipes/librispeech/run.sh --preset mini

# pytest exits 5 when it collects no test: that is a broken suite, so it fails loudly here.
test: venv
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; the suite is broken" >&2; exit 1; fi; \
	exit $$rc

# The fast tier: every test not marked slow (recipe stages end to end are marked slow).
test-fast: venv
	@$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: venv
	$(PY) bench/run.py

# Optional, not part of `make test`: the k2 backend (asr_kd/ctc/k2_backend.py) against our own code
# on the same inputs: k2's CTC loss and gradients against torch's, and k2's exact best path through
# our HLG (exported as OpenFst text) against kaldi-decoder's, word ids and scores, over log-prob
# matrices that tests/k2_lane/make_fixtures.py writes with .venv's Python. k2 exists on PyPI only
# for Python 3.9 with torch 1.13.1 (CUDA 11.7 wheels, a large download), so it gets a virtual
# environment of its own, .venv-k2. PYTHON39 names a Python 3.9 interpreter; by default python3.9
# if it runs (a pyenv shim can exist and still fail), else pyenv's newest 3.9.
PYTHON39 ?= $(shell for p in python3.9 "$$(pyenv prefix 3.9 2>/dev/null | tail -n 1)/bin/python3.9"; do \
	"$$p" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 9))' >/dev/null 2>&1 && { command -v "$$p"; break; }; done)
.venv-k2/.installed:
	@p="$(PYTHON39)"; if [ -z "$$p" ]; then echo "make test-k2: no Python 3.9 found (python3.9, pyenv); run make test-k2 PYTHON39=/path/to/python3.9" >&2; exit 1; fi; \
	"$$p" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 9))' || { echo "make test-k2: $$p is not Python 3.9; run make test-k2 PYTHON39=/path/to/python3.9" >&2; exit 1; }; \
	echo "$$p -m venv .venv-k2"; "$$p" -m venv .venv-k2
	.venv-k2/bin/pip install "torch==1.13.1" "k2==1.23.4" "numpy<2" pytest
	touch $@

# --noconftest: tests/conftest.py needs the main environment's packages.
test-k2: venv .venv-k2/.installed
	ASR_KD_PYTHON="$(abspath $(PY))" .venv-k2/bin/python -m pytest -q -rs --noconftest tests/unit/test_ctc_k2.py

clean-demo:
	rm -rf recipes/librispeech/data recipes/librispeech/exp
