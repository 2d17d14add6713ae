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
# The extras `make install` (and CI) installs; `make lock` pins the closure of exactly these.
EXTRAS ?= dev,deepspeed,quantization,judges,tracking,feedback
# The tested versions of every other package (`make lock` writes it); `make install-latest` ignores it.
CONSTRAINTS ?= constraints.txt
# `make plots` / `make push` act on this run folder (default: the demo's PPO stage).
RUN ?= $(DEMO_DIR)/ppo
STAGE ?=
# The committed summary of `make demo` that the README shows and `make check-demo` compares with.
DEMO_RESULTS ?= results/demo.md
# The demo runs on a laptop CPU: one thread per process avoids oversubscribing small cores.
DEMO_ENV := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1}
# `accelerate launch` through a thin wrapper (rlhf_recipes/launch.py): a failed run ends with the recipe's own
# message and exit code (2 for a user error), not with accelerate's second copy of it under a traceback.
LAUNCH = $(BIN)/python -m rlhf_recipes.launch --config_file $(ACCELERATE_CONFIG) --num_processes $(NUM_PROCESSES)
# CPU=1 runs the training recipes on the CPU (no GPU needed): accelerate without mixed precision, and the recipe's
# `use_cpu`, so a recipe's `bf16: true` runs as CPU autocast (fast with AMX bf16; elsewhere add
# ARGS="--bf16 false --dtype float32"). e.g. `make pipeline MODEL=gpt2 CPU=1`
CPU ?=
RECIPE_ARGS :=
ifneq ($(CPU),)
LAUNCH += --cpu --mixed_precision no
RECIPE_ARGS += --use_cpu true
endif
ifeq ($(MODEL),demo)
LAUNCH += --mixed_precision no
# The demo's PPO runs in bf16 autocast where the CPU has AMX bf16, fp32 elsewhere (the YAML, which tests run, is fp32)
PPO_ARGS ?= --auto_bf16 true
endif

.PHONY: install install-latest lock demo demo-results demo-avx2-results demo-band check-demo mutation sft reward ppo grpo rloo dpo online_dpo best_of_n frontier pipeline eval plots push test test-all lint docs bench clean sample label chat push-labels iterate iterate-table

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/activate
	$(BIN)/pip install --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install "$(TORCH)"
	$(BIN)/pip install -c $(CONSTRAINTS) -e ".[$(EXTRAS)]"
	touch $(BIN)/rlhf-installed

# The newest releases pyproject.toml allows (to use them, or to see what breaks); torch stays the installed one.
install-latest: $(BIN)/activate
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install "$(TORCH)"
	$(BIN)/python -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/torch-constraint.txt
	$(BIN)/pip install --upgrade --upgrade-strategy eager -c $(VENV)/torch-constraint.txt -e ".[$(EXTRAS)]"
	touch $(BIN)/rlhf-installed

# After an upgrade (or a new dependency) has passed `make test`: record the environment as the tested one.
lock: $(BIN)/rlhf-installed
	$(BIN)/python tools/lock.py $(EXTRAS) > $(CONSTRAINTS).tmp
	mv $(CONSTRAINTS).tmp $(CONSTRAINTS)

$(BIN)/rlhf-installed: pyproject.toml $(CONSTRAINTS) | $(BIN)/activate
	$(MAKE) install

demo: $(BIN)/rlhf-installed
ifneq ($(DEMO_DIR),runs/demo)
	@# recipes/demo/*.yaml read and write runs/demo; DEMO_DIR only points other targets at a demo built elsewhere
	$(error make demo builds runs/demo (recipes/demo/*.yaml name its paths); to build a second demo, run `make demo` in a copy of this repository, as tools/demo_band.py does, and point DEMO_DIR at its runs/demo)
endif
	$(DEMO_ENV) $(BIN)/python -m rlhf_recipes.demo.build --output_dir $(DEMO_DIR)
	$(MAKE) sft MODEL=demo CONFIG= OVERWRITE=1
	@# the reward model also learns the simulated labeler's rankings of the SFT model's own answers
	rm -rf $(DEMO_DIR)/feedback/sft
	$(MAKE) sample MODEL=demo CONFIG=recipes/demo/sample_sft.yaml
	$(DEMO_ENV) $(BIN)/python -m rlhf_recipes.feedback.simulated --samples_file $(DEMO_DIR)/feedback/sft/samples.jsonl \
		--comparisons_file $(DEMO_DIR)/feedback/sft/comparisons.jsonl
	$(DEMO_ENV) $(BIN)/python -m rlhf_recipes.demo.build --output_dir $(DEMO_DIR) \
		--add_rankings $(DEMO_DIR)/feedback/sft/comparisons.jsonl
	$(MAKE) reward MODEL=demo CONFIG= OVERWRITE=1
	$(MAKE) ppo MODEL=demo CONFIG= OVERWRITE=1
	$(DEMO_ENV) $(BIN)/python recipes/evaluate.py --config recipes/demo/evaluate.yaml
	$(DEMO_ENV) $(BIN)/python recipes/evaluate.py --config recipes/demo/evaluate_heldout.yaml
	$(DEMO_ENV) $(BIN)/python -m rlhf_recipes.plots $(DEMO_DIR)/sft
	$(DEMO_ENV) $(BIN)/python -m rlhf_recipes.plots $(DEMO_DIR)/reward
	$(DEMO_ENV) $(BIN)/python -m rlhf_recipes.plots $(DEMO_DIR)/ppo
	$(DEMO_ENV) $(BIN)/python -m rlhf_recipes.demo.summary $(DEMO_DIR) --output $(DEMO_DIR)/summary.md

# Run the demo and make its summary the committed results: results/demo.md and the README's short demo block.
demo-results: demo
	$(DEMO_ENV) $(BIN)/python -m rlhf_recipes.demo.summary $(DEMO_DIR) --output $(DEMO_RESULTS) --readme README.md

# The demo with AVX2 kernels (on an AVX512 CPU); `make demo-band` includes this variant in the measured band.
demo-avx2-results:
	ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 $(MAKE) demo
	cp $(DEMO_DIR)/summary.md results/demo-avx2.md

# The spread of the demo's numbers (results/demo-band.json and .md): the demo with each seed of BAND_SEEDS and seed 42
# on AVX2 kernels, each in runs/demo-band/<variant>/ (reused when done). check-demo uses it in another environment.
BAND_SEEDS ?= 42 43 44
BAND_ARGS ?=
demo-band: $(BIN)/rlhf-installed
	$(BIN)/python tools/demo_band.py --seeds $(BAND_SEEDS) $(BAND_ARGS)

# CI: run the demo and compare its numbers with the committed results: exact in the same environment, within the
# measured band (results/demo-band.json) in another; and the README's demo block with the committed results.
check-demo: demo
	$(DEMO_ENV) $(BIN)/python -m rlhf_recipes.demo.summary $(DEMO_DIR) --check $(DEMO_RESULTS) --readme README.md

# A stage refuses an output_dir that holds a finished model; OVERWRITE=1 moves that folder aside first (`make demo`
# rebuilds its stages this way).
OVERWRITE ?=
sft reward ppo grpo rloo dpo online_dpo: $(BIN)/rlhf-installed
	$(DEMO_ENV) $(LAUNCH) recipes/$@.py --config $(or $(CONFIG),recipes/$(MODEL)/$@.yaml) $(if $(filter ppo,$@),$(PPO_ARGS)) $(RECIPE_ARGS) $(if $(OVERWRITE),--overwrite_output_dir true) $(ARGS)

best_of_n: $(BIN)/rlhf-installed
	$(DEMO_ENV) $(BIN)/python recipes/best_of_n.py --config $(or $(CONFIG),recipes/$(MODEL)/best_of_n.yaml) $(ARGS)

# PPO, best-of-n, GRPO, RLOO, DPO and online DPO on one chart of gold score and diversity against KL
# (runs/demo/frontier/; `ARGS="--methods dpo online_dpo --merge_results docs/frontier/frontier.json"` runs only
# those two and keeps the other points); builds the demo first
# when its SFT and reward stages are missing.
frontier: $(BIN)/rlhf-installed
	@# ARGS are the frontier's, not the demo stages'
	test -f $(DEMO_DIR)/reward/config.json || $(MAKE) demo ARGS=
	$(DEMO_ENV) $(BIN)/python -m rlhf_recipes.frontier --demo_dir $(DEMO_DIR) $(ARGS)

pipeline: $(BIN)/rlhf-installed
	$(MAKE) sft CONFIG=
	$(MAKE) reward CONFIG=
	$(MAKE) ppo CONFIG=

eval: $(BIN)/rlhf-installed
	$(DEMO_ENV) $(BIN)/python recipes/evaluate.py --config $(or $(CONFIG),recipes/$(MODEL)/evaluate.yaml) $(ARGS)

plots: $(BIN)/rlhf-installed
	$(BIN)/python -m rlhf_recipes.plots $(RUN)

# Publish a finished stage: make push STAGE=ppo RUN=runs/gpt2/ppo ARGS="--repo_id you/gpt2-hh-ppo". Private unless
# ARGS has --public; only allow-listed files go up (weights, config, tokenizer, card, metrics); token from HF_TOKEN.
push: $(BIN)/rlhf-installed
	$(BIN)/python -m rlhf_recipes.hub $(STAGE) $(RUN) $(ARGS)

# Publish collected rankings as a Hub dataset: make push-labels ARGS="--hub_dataset_id you/my-rankings". Private
# unless ARGS has --hub_private_repo false; labelers appear as pseudonyms unless ARGS has --keep_labeler_names.
push-labels: $(BIN)/rlhf-installed
	$(BIN)/python recipes/label.py --comparisons_file $(COMPARISONS) --push_to_hub true $(ARGS)

# The test command CI runs: unit, integration and the 2-process DeepSpeed tests, offline.
test: $(BIN)/rlhf-installed
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -ra --timeout 900 tests

# The generated parts of docs/ (the fields reference in docs/stages.md); tests/unit/test_docs.py checks them.
docs: $(BIN)/rlhf-installed
	$(DEMO_ENV) $(BIN)/python tools/docs_fields.py docs/stages.md

# Mutation testing of the core modules against their fast unit tests; score in benchmarks/results/mutation.md.
# One file: make mutation ARGS="--only reward/losses".
mutation: $(BIN)/rlhf-installed
	$(BIN)/python tools/mutation.py $(ARGS)

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

# The data loop repeated on the demo (after `make demo`): sample -> simulated labeler via the label store -> RM -> PPO
# (METHOD=ppo, in $(DEMO_DIR)/iterate) or -> DPO on all rankings so far (METHOD=dpo, in $(DEMO_DIR)/iterate-dpo).
ROUNDS ?= 3
METHOD ?= ppo
ITERATE_DIR ?= $(DEMO_DIR)/iterate$(if $(filter-out ppo,$(METHOD)),-$(METHOD))
iterate: $(BIN)/rlhf-installed
	$(DEMO_ENV) $(BIN)/python recipes/iterate.py --demo_dir $(DEMO_DIR) --output_dir $(ITERATE_DIR) --method $(METHOD) \
		--rounds $(ROUNDS) $(ARGS)

# Every finished loop's rounds in one table and figure with a method column: docs/iterate/rounds.{json,md,png}.
iterate-table: $(BIN)/rlhf-installed
	$(DEMO_ENV) $(BIN)/python -m rlhf_recipes.feedback.rounds --output docs/iterate/rounds.json --rounds_files \
		$(wildcard $(DEMO_DIR)/iterate/rounds.json $(DEMO_DIR)/iterate-dpo/rounds.json)
