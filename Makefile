# asr-kd: `make demo` runs the main recipe on the offline default, `make test` the test suite.
# Each target creates the virtual environment .venv on first use (and again when pyproject.toml
# changes).

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python
# Arguments passed on to pytest, e.g. `make test PYTEST_ARGS="-k lang -x"`.
PYTEST_ARGS ?=

.PHONY: venv demo test test-k2 bench clean-demo help

help:
	@echo "make demo   set up .venv, then run recipes/librispeech/run.sh on the synthetic 'mini' corpus"
	@echo "make test   set up .venv, then run the test suite"
	@echo "make bench  set up .venv, then run the benchmarks under bench/ (writes bench/RESULTS.md)"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "asr-kd needs Python 3.11: run make with PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	./recipes/librispeech/run.sh --preset mini

# pytest exits 5 when it collects no test: that is a broken suite, so it fails loudly here.
test: venv
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; the suite is broken" >&2; exit 1; fi; \
	exit $$rc

bench: venv
	$(PY) bench/run.py

# Optional, not part of `make test`: k2's CTC loss against torch's on the same inputs. k2 exists on
# PyPI only for Python 3.9 with torch 1.13.1 (CUDA 11.7 wheels, a large download), so it gets a
# virtual environment of its own. PYTHON39 must name a Python 3.9 interpreter.
PYTHON39 ?= python3.9
.venv-k2/.installed:
	$(PYTHON39) -m venv .venv-k2
	.venv-k2/bin/pip install "torch==1.13.1" "k2==1.23.4" "numpy<2" pytest
	touch $@

test-k2: .venv-k2/.installed
	.venv-k2/bin/python -m pytest -q --noconftest tests/unit/test_ctc_k2.py

clean-demo:
	rm -rf recipes/librispeech/data recipes/librispeech/exp
