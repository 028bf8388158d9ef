# The one place that knows how to set things up and run them. Every target creates (once) and reuses .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Machines without an NVIDIA GPU get the CPU build of torch; with a GPU, pip resolves torch from PyPI (CUDA build).
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_CPU := torch==2.13.0
SAMPLE ?= sample
SHARDS ?= shards

.PHONY: venv demo test bench gpu-check lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
ifeq ($(HAS_GPU),)
	$(BIN)/pip install --disable-pip-version-check $(TORCH_CPU)
endif
	$(BIN)/pip install --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/preprocess make-sample --out $(SAMPLE) --overwrite
	$(BIN)/preprocess build-shards --src $(SAMPLE) --out $(SHARDS) --shard-size 128 --overwrite
	$(BIN)/preprocess verify $(SHARDS)
	rm -rf runs/demo
	# Demo-sized settings for 2 CPU cores (see README): alexnet-bn at half width on 128-pixel crops.
	$(BIN)/torchrun --standalone --nproc_per_node=2 trainer/main.py --device cpu --data $(SHARDS) --out runs/demo \
		--arch alexnet-bn --width 0.5 --crop-size 128 --batch-size 32 --epochs 5 --lr 0.02 --schedule cosine \
		--workers 1 --ten-crop

test: $(STAMP)
	$(BIN)/python -m pytest

# Each script prints ours, a named baseline (and a peer or the limit), measured in the same run; see README "Performance".
bench: $(STAMP)
	$(BIN)/python bench/preprocess_bench.py
	$(BIN)/python bench/loader_bench.py
	$(BIN)/python bench/trainer_bench.py
	$(BIN)/python bench/ray_bench.py
	$(BIN)/python bench/plan_memory_bench.py
	$(BIN)/python bench/cache_bench.py
ifneq ($(HAS_GPU),)
	$(BIN)/python bench/gpu_bench.py
endif

# The first run on a GPU machine: GPU tests, host syncs, CPU vs GPU decode, gpu_bench, AMP/compile training, resume.
gpu-check: $(STAMP)
	$(BIN)/python bench/gpu_check.py

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(SAMPLE) runs bench/out .pytest_cache
	find $(SHARDS) -mindepth 1 ! -name README.md -delete
