"""clinical_rl's side of `rl_step_vs_trl.py`: the real RL loop (Ray, vLLM engine actor, DeepSpeed trainers,
reference, reward actor), paused between steps so the benchmark can alternate it with TRL.

Protocol: prints `BENCH READY` once the roles are up; then each `step` line on stdin runs one `driver.rl_step` and
prints `BENCH {"seconds", "completions", "reward_mean", "timing": {phase: s}, ...}`; `quit` exits. Other output
(Ray forwards its workers' logs to stdout) is not prefixed and is ignored by the benchmark.

The work matches TRL's side: the first `--prompts` English built-in cases (seed 0), `--group` samples each,
<= `--max-new-tokens` tokens, temperature 1, beta 0.03 (k3 KL in the loss, as TRL), one optimizer step over the
whole batch (so, as TRL with num_iterations=1, no separate old-policy pass).
Run: `python bench/rl_step_side.py [--algo grpo|gae] [--dtype bfloat16] ...` (normally started by the benchmark).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="embedded", help="HF model dir (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--algo", default="grpo", choices=["grpo", "gae"], help="gae: PPO with a critic")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=4, help="samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--beta", type=float, default=0.03)
    p.add_argument("--micro-batch-size", type=int, default=8)
    p.add_argument("overrides", nargs="*", help="extra dotted config overrides (key.path=value)")
    return p.parse_args()


def bench_config(args: argparse.Namespace):
    """The RunConfig of the benchmark's work (every number TRL's side uses too)."""
    from clinical_rl.config_files import load_config

    samples = args.prompts * args.group
    overrides = [
        f"model.path={args.model}", f"model.dtype={args.dtype}", f"algo.advantage={args.algo}",
        f"algo.rollout_batch_size={args.prompts}", f"algo.n_samples_per_prompt={args.group}",
        f"algo.minibatch_size={samples}", "algo.ppo_epochs=1", f"algo.kl_coef={args.beta}", "algo.kl_in=loss",
        "algo.kl_estimator=k3",  # as TRL: k3 KL to the reference in the loss
        f"rollout.max_new_tokens={args.max_new_tokens}", "rollout.max_model_len=1024", "rollout.kv_cache_gib=1",
        f"policy.micro_batch_size={args.micro_batch_size}", f"critic.micro_batch_size={args.micro_batch_size}",
        f"reference.micro_batch_size={args.micro_batch_size}", "policy.lr=1e-6", "critic.lr=1e-6",
        "data.language=en", "reward.kwargs.on_undecided=incorrect", "tracking.wandb_mode=disabled",
        "ray.num_cpus=4", "ray.object_store_gib=1", *args.overrides,
    ]
    return load_config(None, overrides)


def main() -> None:
    args = parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    protocol = sys.stdout
    sys.stdout = sys.stderr  # everything but the protocol lines goes to stderr
    from clinical_rl.data.loaders import load_builtin
    from clinical_rl.data.prompts import render_prompt
    from clinical_rl.rl.driver import rl_step
    from clinical_rl.models import check_model_dir
    from clinical_rl.launch.cluster import connect_ray
    from clinical_rl.launch.placement import create_placement_group, plan_placement
    from clinical_rl.rl.roles import start_roles, stop_roles

    cfg = bench_config(args)
    model = check_model_dir(cfg.model.path, "model.path")
    cases = load_builtin(seed=0, languages=("en",))[: args.prompts]
    connect_ray(cfg.ray)
    plan = plan_placement(cfg)
    pg, nodes = create_placement_group(plan)
    roles = start_roles(cfg, plan, pg, nodes, model, model)
    prompts = [render_prompt(roles.tokenizer, c, cfg.data.system_prompt) for c in cases]
    print("BENCH READY", file=protocol, flush=True)
    step = 0
    with contextlib.suppress(KeyboardInterrupt):
        for line in sys.stdin:
            if line.strip() != "step":
                break
            step += 1
            start = time.perf_counter()
            metrics = rl_step(cfg, roles, cases, prompts, step)
            seconds = time.perf_counter() - start
            timing = {k.removeprefix("timing/"): round(v, 3) for k, v in metrics.items() if k.startswith("timing/")}
            line = {"seconds": seconds, "completions": len(cases) * args.group,
                    "reward_mean": metrics.get("reward/mean"), "timing": timing,
                    "response_length": metrics.get("rollout/response_length_mean"),
                    "logp_mismatch": metrics.get("rollout/logp_mismatch")}
            print("BENCH", json.dumps(line), file=protocol, flush=True)
    stop_roles(roles)


if __name__ == "__main__":
    main()
