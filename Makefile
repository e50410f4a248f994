# The two set-up commands of the README: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= demo-output

.PHONY: install demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/petsynth demo --out $(DEMO_OUT)

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/bench_physics.py
	$(PY) benchmarks/bench_metrics.py
	$(PY) benchmarks/bench_phantom.py --task ct2pet --preset default --studies 2
	$(PY) benchmarks/bench_prepare.py --studies 3
	$(PY) benchmarks/bench_cpdm.py speed
	$(VENV)/bin/petsynth bench

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
