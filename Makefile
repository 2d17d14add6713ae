# rlhf-recipes: every command a user needs. Variables override on the command line, e.g.
#   make ppo CONFIG=recipes/gpt2/ppo.yaml ACCELERATE_CONFIG=accelerate_configs/deepspeed_zero2.yaml NUM_PROCESSES=8

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODEL ?= demo
DEMO_DIR ?= runs/demo
ACCELERATE_CONFIG ?= accelerate_configs/single_gpu.yaml
NUM_PROCESSES ?= 1
ARGS ?=
# torch is installed first and kept if present; 2.13.0 is the version this project is tested with (the CPU wheel
# here). On a GPU machine pick the build for your CUDA, e.g. TORCH="torch --index-url .../cu128".
TORCH ?= torch==2.13.0
RUN ?=
STAGE ?=
# The demo runs on a laptop CPU: one thread per process avoids oversubscribing small cores.
DEMO_ENV := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1}
LAUNCH = $(BIN)/accelerate launch --config_file $(ACCELERATE_CONFIG) --num_processes $(NUM_PROCESSES)
ifeq ($(MODEL),demo)
LAUNCH += --mixed_precision no
endif

.PHONY: install demo sft reward ppo pipeline eval plots push test test-all lint bench clean sample label chat push-labels iterate

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/activate
	$(BIN)/pip install --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install "$(TORCH)"
	$(BIN)/pip install -e ".[dev,deepspeed,quantization,feedback]"
	touch $(BIN)/rlhf-installed

$(BIN)/rlhf-installed: pyproject.toml | $(BIN)/activate
	$(MAKE) install

demo: $(BIN)/rlhf-installed
	$(DEMO_ENV) $(BIN)/python -m rlhf_recipes.demo.build --output_dir $(DEMO_DIR)
	$(MAKE) pipeline MODEL=demo
	$(DEMO_ENV) $(BIN)/python recipes/evaluate.py --config recipes/demo/evaluate.yaml
	$(DEMO_ENV) $(BIN)/python -m rlhf_recipes.plots $(DEMO_DIR)/sft
	$(DEMO_ENV) $(BIN)/python -m rlhf_recipes.plots $(DEMO_DIR)/reward
	$(DEMO_ENV) $(BIN)/python -m rlhf_recipes.plots $(DEMO_DIR)/ppo
	$(BIN)/python -m rlhf_recipes.demo.summary $(DEMO_DIR)

sft reward ppo: $(BIN)/rlhf-installed
	$(DEMO_ENV) $(LAUNCH) recipes/$@.py --config $(or $(CONFIG),recipes/$(MODEL)/$@.yaml) $(ARGS)

pipeline: $(BIN)/rlhf-installed
	$(MAKE) sft CONFIG=
	$(MAKE) reward CONFIG=
	$(MAKE) ppo CONFIG=

eval: $(BIN)/rlhf-installed
	$(DEMO_ENV) $(BIN)/python recipes/evaluate.py --config $(or $(CONFIG),recipes/$(MODEL)/evaluate.yaml) $(ARGS)

plots: $(BIN)/rlhf-installed
	$(BIN)/python -m rlhf_recipes.plots $(RUN)

push: $(BIN)/rlhf-installed
	$(BIN)/python -m rlhf_recipes.hub $(STAGE) $(RUN) $(ARGS)

# Publish collected rankings as a Hub dataset: make push-labels ARGS="--hub_dataset_id you/my-rankings"
push-labels: $(BIN)/rlhf-installed
	$(BIN)/python recipes/label.py --comparisons_file $(COMPARISONS) --push_to_hub true $(ARGS)

# The test command CI runs: unit, integration and the 2-process DeepSpeed tests, offline.
test: $(BIN)/rlhf-installed
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -ra --timeout 900 tests

lint: $(BIN)/rlhf-installed
	$(BIN)/ruff check src recipes tests benchmarks

bench: $(BIN)/rlhf-installed
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/run.py $(ARGS)

clean:
	rm -rf runs .pytest_cache .ruff_cache

# The feedback loop (InstructGPT steps 2-3): sample K answers, rank them in the labeling app, chat with a policy.
SAMPLES ?= $(DEMO_DIR)/feedback/samples.jsonl
COMPARISONS ?= $(DEMO_DIR)/feedback/comparisons.jsonl
POLICY ?= $(DEMO_DIR)/ppo

sample: $(BIN)/rlhf-installed
	$(DEMO_ENV) $(LAUNCH) recipes/sample.py --config $(or $(CONFIG),recipes/$(MODEL)/sample.yaml) $(ARGS)

label: $(BIN)/rlhf-installed
	$(DEMO_ENV) $(BIN)/python recipes/label.py --samples_file $(SAMPLES) --comparisons_file $(COMPARISONS) $(ARGS)

chat: $(BIN)/rlhf-installed
	$(DEMO_ENV) $(BIN)/python recipes/chat.py --model_name_or_path $(POLICY) $(ARGS)

# The data loop repeated on the demo (after `make demo`): sample -> simulated labeler via the label store -> RM -> PPO.
ROUNDS ?= 3
iterate: $(BIN)/rlhf-installed
	$(DEMO_ENV) $(BIN)/python recipes/iterate.py --demo_dir $(DEMO_DIR) --output_dir $(DEMO_DIR)/iterate --rounds $(ROUNDS) $(ARGS)
