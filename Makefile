# Two commands for a fresh machine: `make demo` (the main job) and `make test`.
# The system Python where there is one: the Triton server's Python backend (serve, bench's triton
# backend) links the system libpython and fails from any other interpreter (docs/serving.md).
PYTHON ?= $(shell test -x /usr/bin/python3.11 && echo /usr/bin/python3.11 || echo python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO_OUT ?= runs/demo

.PHONY: setup demo test bench-train bench-prune bench-qat bench-export clean

$(BIN)/vitcompress: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,serve]'
	touch $@

setup: $(BIN)/vitcompress

# Train a small ViT on the generated `shapes` data set (no network), prune half its heads, quantize it to INT8,
# export it as INT8 ONNX that takes raw pixels.
demo: setup
	$(BIN)/vitcompress finetune --model vit_tiny_patch16_224 --data shapes --img-size 32 --patch-size 8 \
		--model-kwargs depth=2,embed_dim=64,num_heads=4 --drop-path 0 --lr 3e-3 --batch-size 64 \
		--epochs 10 --out $(DEMO_OUT)/fp32 --force
	$(BIN)/vitcompress prune $(DEMO_OUT)/fp32 --heads 0.5 --criterion taylor --finetune-epochs 3 --lr 1e-3 \
		--batch-size 64 --out $(DEMO_OUT)/pruned --force
	$(BIN)/vitcompress qat $(DEMO_OUT)/pruned --epochs 1 --batch-size 64 --out $(DEMO_OUT)/pruned-int8 --force
	$(BIN)/vitcompress export $(DEMO_OUT)/pruned-int8 --input uint8 --out $(DEMO_OUT)/onnx-int8 --force
	$(BIN)/vitcompress info $(DEMO_OUT)/pruned-int8
	$(BIN)/vitcompress eval $(DEMO_OUT)/pruned-int8 --data shapes

test: setup
	$(BIN)/ruff check vitcompress compress export benchmarks tests
	$(BIN)/python -m pytest -q

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

clean:
	rm -rf $(VENV) runs .pytest_cache
