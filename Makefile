# Two entry points, each doing all set-up on a fresh machine:
#   make demo   the main job: the CPU smoke suite
#   make test   the test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU build of torch: pip takes this exact release from local disk here; plain `torch` pulls a multi-GB CUDA build.
TORCH_CPU ?= torch==2.13.0
OUT    ?= outputs/smoke

.PHONY: venv demo test test-gpu bench wheelhouse lab clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_CPU)"
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (perfkit)" >/dev/null
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/perfkit suite --params params/smoke.yaml --out $(OUT)

test: venv
	$(PY) -m pytest -q -m "not gpu" --nbval-lax --nbval-kernel-name python3 tests notebooks

test-gpu:  # on a GPU node, after installing from the wheelhouse
	$(PYTHON) -m pytest -q -m gpu tests

bench: venv
	$(PY) benchmarks/packing.py
	$(PY) benchmarks/overhead.py

wheelhouse: venv  # wheels for an offline GPU node (cp312, manylinux x86_64), torch excluded
	$(VENV)/bin/perfkit wheelhouse --out wheelhouse

lab: venv
	$(VENV)/bin/jupyter lab notebooks

clean:
	rm -rf $(VENV) .pytest_cache
