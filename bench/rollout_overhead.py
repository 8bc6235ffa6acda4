"""Rollout overhead: the `RolloutEngine` Ray actor's generation throughput relative to a bare `vllm.LLM`.

Why: the rollout actor should cost only Ray transport and `Sample` conversion on top of vLLM (target ratio
>= 0.9). Both engines get the same engine args (those of `clinical_rl.actors.rollout`), the same CPU env, the
same prompts (built-in cases, chat template) and the same per-request seed schedule (outputs still differ a
little: bf16 batch numerics), and generated tokens are counted (RolloutEngine has no `ignore_eos`). The machine
is shared and noisy, so both engines stay alive and are timed in alternating rounds (order flipped each round);
we report the median tokens/s of each and their ratio, plus the per-round ratios.
Run: `python bench/rollout_overhead.py [--model DIR] [--dtype bfloat16] [--rounds 3]`.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any
from ratio import report_ratio  # bench/ is sys.path[0] when a script runs


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="HF model dir (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def prompt_ids(model_dir: str, n: int) -> list[list[int]]:
    """`n` built-in cases (cycled) rendered with the chat template, tokenized as the driver does."""
    from transformers import AutoTokenizer

    from clinical_rl.data.generator import generate_cases
    from clinical_rl.data.prompts import render_prompt

    tok = AutoTokenizer.from_pretrained(model_dir)
    cases = generate_cases(n, seed=0, languages=("en",))
    return [tok(render_prompt(tok, c), add_special_tokens=False)["input_ids"] for c in cases]


class BareVLLM:
    """`vllm.LLM` with RolloutEngine's engine args and sampling params, nothing else."""

    def __init__(self, model_dir: str, cfg: Any, dtype: str, seed: int) -> None:
        from vllm import LLM

        from clinical_rl.actors.rollout import _EXTENSION
        from clinical_rl.rl.weight_sync.wire import GLOO_BACKEND

        self.cfg, self.next_seed = cfg, seed << 32  # the same per-request seed schedule as RolloutEngine
        self.llm = LLM(model=model_dir, dtype=dtype, seed=seed, trust_remote_code=False,
                       enforce_eager=cfg.enforce_eager, max_model_len=cfg.max_model_len,
                       logprobs_mode="processed_logprobs", worker_extension_cls=_EXTENSION,
                       weight_transfer_config={"backend": GLOO_BACKEND})

    def generate(self, ids: list[list[int]], max_new_tokens: int) -> int:
        """Generated tokens of one batch (n=1 per prompt)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = []
        for _ in ids:
            params.append(SamplingParams(n=1, temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                                         max_tokens=max_new_tokens, logprobs=0, seed=self.next_seed))
            self.next_seed += 1
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in ids], params, use_tqdm=False)
        return sum(len(c.token_ids) for o in outs for c in o.outputs)


def main() -> None:
    args = parse_args()
    os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray

    from clinical_rl.actors.rollout import RolloutEngine, _configure_cpu_env
    from clinical_rl.config import RolloutConfig, RunConfig
    from clinical_rl.device import Device
    from clinical_rl.models import prepare_embedded_model
    from clinical_rl.launch.actors import actor_options
    from clinical_rl.launch.placement import create_placement_group, plan_placement

    model_dir = args.model or str(prepare_embedded_model())
    cfg = RolloutConfig(kv_cache_gib=1, max_new_tokens=args.max_new_tokens, temperature=1.0)
    # The env RolloutEngine sets in its actor (KV cache 1 GiB, threads bound to all our cores), set here before
    # ray.init so the actor and the bare engine in this process see identical values.
    _configure_cpu_env(cfg.kv_cache_gib)
    ids = prompt_ids(model_dir, args.num_prompts)
    ray.init(num_cpus=4, object_store_memory=1 << 30, include_dashboard=False)
    plan = plan_placement(RunConfig(rollout=cfg))  # the driver's placement group; we use its rollout bundle
    pg, _ = create_placement_group(plan)
    actor = (ray.remote(RolloutEngine).options(**actor_options(plan.of("rollout")[0], pg))
             .remote(model_dir, cfg, Device("cpu"), args.dtype, args.seed))
    ray.get(actor.ready.remote())
    bare = BareVLLM(model_dir, cfg, args.dtype, args.seed)

    def run_actor() -> tuple[int, float]:
        start = time.perf_counter()
        samples = ray.get(actor.generate.remote(ids, list(range(len(ids))), 1, args.max_new_tokens))
        return sum(len(s.response_ids) for s in samples), time.perf_counter() - start

    def run_bare() -> tuple[int, float]:
        start = time.perf_counter()
        tokens = bare.generate(ids, args.max_new_tokens)
        return tokens, time.perf_counter() - start

    run_actor(), run_bare()  # warm-up (also keeps both seed schedules in step)
    rates: dict[str, list[float]] = {"actor": [], "bare": []}
    for r in range(args.rounds):
        order = [("actor", run_actor), ("bare", run_bare)]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            tokens, secs = fn()
            rates[name].append(tokens / secs)
            print(f"round {r} {name:5s} {tokens} tokens in {secs:.2f} s = {tokens / secs:.0f} tok/s", flush=True)
    ray.get(actor.shutdown.remote())
    bare.llm.llm_engine.engine_core.shutdown()
    ray.shutdown()
    report_ratio(rates, "actor", "bare", "rollout_actor/bare_vllm", "tok/s")


if __name__ == "__main__":
    main()
