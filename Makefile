# Two commands for a fresh machine: `make demo` (the main job) and `make test`.
# The system Python where there is one: the Triton server's Python backend (serve, bench's triton
# backend) links the system libpython and fails from any other interpreter (docs/bench.md).
PYTHON ?= $(shell test -x /usr/bin/python3.11 && echo /usr/bin/python3.11 || echo python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO_OUT ?= runs/demo

.PHONY: setup demo test bench-train bench-prune bench-qat bench-export device-wheels clean

$(BIN)/vitcompress: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,serve]'
	touch $@

setup: $(BIN)/vitcompress

# The built-in pipeline (recipes/default.yaml): a small ViT on the generated `shapes` data (no network),
# half its heads pruned, its tokens merged, INT8 of all three, ONNX and OpenVINO exports, one bench report of all.
demo: setup
	$(BIN)/vitcompress pipeline --out $(DEMO_OUT)

# Two test processes of one thread each: most tests wait on a subprocess or a server, and one thread each keeps two
# processes from oversubscribing two cores (13 min against 16 in one process on the 2-core CI machine).
test: setup
	$(BIN)/ruff check vitcompress compress export benchmarks tests
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile

# Training-speed benchmark (images/s of finetune, vit_small at 32px on the CIFAR-10 archive in ../shared).
bench-train: setup
	$(BIN)/python benchmarks/train_speed.py

# Pruning and INT8 benchmarks on the CIFAR-10 archive (CPU: about 1.5 hours together); results in docs/results.md.
bench-prune: setup
	$(BIN)/python benchmarks/prune_cifar.py --recovery-epochs 1

bench-qat: setup
	$(BIN)/python benchmarks/qat_cifar.py --qat-epochs 1

# INT8 ONNX on ONNX Runtime (CPU): vit_small at 224 px against the best FP32 export; accuracy of bench-qat's models.
bench-export: setup
	$(BIN)/python benchmarks/export_ort.py

# What a lent GPU machine (no network; torch, timm, onnx, onnxruntime already there) lacks for
# benchmarks/gpu_session.py: this tree as a wheel, torch-pruning, and for `qat` nvidia-modelopt with the
# dependencies its import needs that the machine's image (Python 3.12) does not hold; in .whl/ (ignored, carried).
venv_version = $$($(BIN)/pip show $(1) | sed -n 's/^Version: //p')
DEVICE_PY := --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 \
	--platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64
device-wheels: setup
	rm -rf .whl && mkdir -p .whl
	$(BIN)/pip wheel --quiet --no-deps --wheel-dir .whl .
	$(BIN)/pip download --quiet --no-deps $(DEVICE_PY) --dest .whl torch-pruning==1.6.1 \
		$(foreach p,nvidia-modelopt omegaconf pulp,$(p)==$(call venv_version,$(p)))
	$(BIN)/pip download --quiet $(DEVICE_PY) --dest .whl pydantic==$(call venv_version,pydantic)

clean:
	rm -rf $(VENV) runs .pytest_cache
