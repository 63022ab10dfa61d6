# Two entry points, each doing all set-up on a fresh machine:
#   make demo   the main job: the CPU smoke suite
#   make test   the test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU build of torch: pip takes this exact release from local disk here; plain `torch` pulls a multi-GB CUDA build.
TORCH_CPU ?= torch==2.13.0
OUT    ?= outputs/smoke

.PHONY: venv demo test test-gpu bench wheelhouse wheelhouse-gpu lab clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_CPU)"
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m ipykernel install --sys-prefix --name perfkit --display-name "Python 3 (perfkit)" >/dev/null
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/perfkit suite --params params/smoke.yaml --out $(OUT)

test: venv
	$(VENV)/bin/ruff check perfkit tests
	$(VENV)/bin/ruff format --check perfkit tests
	$(PY) -m pytest -q -m "not gpu" -n 2 --dist loadgroup --nbval-lax --nbval-kernel-name perfkit tests notebooks

test-gpu:  # on a GPU node, after installing from the wheelhouse
	$(PYTHON) -m pytest -q -m gpu tests

bench: venv
	$(PY) -m perfkit.benchmarks.packing
	$(PY) -m perfkit.benchmarks.overhead

wheelhouse: venv  # wheels for an offline GPU node (cp312, manylinux x86_64), torch excluded
	$(VENV)/bin/perfkit wheelhouse --out wheelhouse

# the lent H200 image already has these: carry only what it lacks (fits the 64 MiB transfer)
GPU_NODE_HAS = numpy pandas pyarrow seaborn matplotlib h5py pyyaml tqdm psutil pytest jupyterlab \
  nvidia-ml-py typing-extensions jinja2 markupsafe pygments attrs packaging pillow contourpy cycler \
  fonttools kiwisolver pyparsing python-dateutil six requests urllib3 idna certifi charset-normalizer \
  click
# and what it never runs: the browser test is CPU-only
GPU_NODE_SKIPS = selenium ruff
wheelhouse-gpu: venv
	rm -rf .wheelhouse-gpu
	$(VENV)/bin/perfkit wheelhouse --out .wheelhouse-gpu --skip $(GPU_NODE_HAS) $(GPU_NODE_SKIPS)

lab: venv  # make lab ARGS="--allow-root --no-browser --ip=127.0.0.1"
	$(VENV)/bin/jupyter lab notebooks $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
