"""`clinical-rl <command> --config FILE [key.path=value ...]`.

The same line runs locally, after `ray job submit --` on a cluster, and as a KubeRay RayJob entrypoint.
"""

from __future__ import annotations

import argparse
import signal
import sys

from clinical_rl.config import ConfigError, RunConfig, dump_config, load_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clinical-rl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in [
        ("ppo", "run the RL loop (PPO with a critic, or GRPO when algo.advantage=grpo)"),
        ("plan", "print the resolved config and the placement plan, start nothing"),
    ]:
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--config", help="YAML config file (defaults apply without one)")
        cmd.add_argument("overrides", nargs="*", help="dotted overrides, e.g. algo.kl_coef=0.01")
    sub.add_parser("prepare-model", help="convert the embedded SmolLM2 model into the cache (idempotent)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "prepare-model":
        from clinical_rl.models import prepare_embedded_model

        print(prepare_embedded_model())
        return 0
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"clinical-rl: {err}", file=sys.stderr)
        return 2
    if args.command == "plan":
        return _plan(cfg)
    return _ppo(cfg)


def _plan(cfg: RunConfig) -> int:
    from clinical_rl.placement import format_plan, plan_placement

    print(dump_config(cfg))
    print(format_plan(plan_placement(cfg)))
    return 0


def _ppo(cfg: RunConfig) -> int:
    from clinical_rl.driver import run
    from clinical_rl.experience import RewardFailureError

    # SIGTERM (job cancel, pod eviction) unwinds like Ctrl-C, so run() kills its actors and Ray on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        result = run(cfg)
    except (FileNotFoundError, ValueError, RewardFailureError) as err:
        print(f"clinical-rl: {err}", file=sys.stderr)
        return 2
    print(f"final policy (HF format): {result.policy_dir}")
    print(f"W&B run: {result.tracking}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
