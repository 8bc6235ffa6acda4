"""`clinical-rl <command> --config FILE [key.path=value ...]`.

The same line runs locally, after `ray job submit --` on a cluster, and as a KubeRay RayJob entrypoint.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from clinical_rl.config import EvalBenchmarkConfig, EvalModelConfig, RunConfig
from clinical_rl.config_files import ConfigError, dump_config, load_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clinical-rl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in [
        ("ppo", "run the RL loop (PPO with a critic, or GRPO when algo.advantage=grpo)"),
        ("plan", "print the resolved config and the placement plan, start nothing"),
        ("pipeline", "synthesis -> SFT -> PPO -> evaluation (pipeline.stages), each stage resumable"),
    ]:
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--config", help="YAML config file (defaults apply without one)")
        cmd.add_argument("overrides", nargs="*", help="dotted overrides, e.g. algo.kl_coef=0.01")
    ev = sub.add_parser("eval", help="evaluate models on benchmarks: accuracy per department and language, report")
    ev.add_argument("--config", help="YAML config file; its eval section (and ray, tracking) is used")
    ev.add_argument("--model", action="append", default=[], metavar="SPEC",
                    help="PATH, LABEL=PATH, or LABEL=openai:MODEL@BASE_URL (repeatable; replaces eval.models)")
    ev.add_argument("--benchmark", action="append", default=[], metavar="SPEC",
                    help="builtin, PATH or NAME=PATH (repeatable; replaces eval.benchmarks)")
    ev.add_argument("overrides", nargs="*", help="dotted overrides, e.g. eval.max_new_tokens=256")
    synth = sub.add_parser("synth", help="synthesize long chain-of-thought SFT data by verifier-guided search")
    synth.add_argument("--config", help="YAML config file; its synthesis section (and eval, for engines) is used")
    synth.add_argument("overrides", nargs="*", help="dotted overrides, e.g. synthesis.restart=true")
    sub.add_parser("prepare-model", help="convert the embedded SmolLM2 model into the cache (idempotent)")
    serve = sub.add_parser("serve-reward", help="serve reward.cls over HTTP (OpenRLHF remote reward protocol)")
    serve.add_argument("--config", help="YAML config file; only its reward section is used")
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    serve.add_argument("--port", type=int, default=5000, help="TCP port")
    serve.add_argument("--failed-reward", type=float, default=None, metavar="FLOAT",
                       help="reward for samples that fail to score, flagged in extra_logs.reward_failed "
                            "(default: answer the request with 503 listing them)")
    serve.add_argument("--strip-suffix", action="append", default=None, metavar="TEXT",
                       help="EOS text to cut off the end of each response (repeatable; default: common EOS tokens; "
                            "--strip-suffix '' cuts nothing)")
    serve.add_argument("--concurrency", type=int, default=1, help="reward class instances serving requests at once")
    serve.add_argument("overrides", nargs="*", help="dotted overrides, e.g. reward.timeout_s=30")
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
    if args.command == "serve-reward":
        return _serve_reward(cfg, args)
    if args.command == "eval":
        return _eval(cfg, args)
    if args.command == "synth":
        return _synth(cfg)
    if args.command == "pipeline":
        return _pipeline(cfg)
    return _ppo(cfg)


def _plan(cfg: RunConfig) -> int:
    from clinical_rl.placement import format_plan, plan_placement

    print(dump_config(cfg))
    print(format_plan(plan_placement(cfg)))
    return 0


def _eval(cfg: RunConfig, args: argparse.Namespace) -> int:
    from clinical_rl.eval.runner import run_eval

    try:
        update = {}
        if args.model:
            update["models"] = [parse_model_spec(spec) for spec in args.model]
        if args.benchmark:
            update["benchmarks"] = [parse_benchmark_spec(spec) for spec in args.benchmark]
        cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update=update)})
        result = run_eval(cfg)
    except (ValueError, FileNotFoundError) as err:
        print(f"clinical-rl: {err}", file=sys.stderr)
        return 2
    print(result.report)
    return 0


def parse_model_spec(spec: str) -> EvalModelConfig:
    """`PATH`, `LABEL=PATH` or `LABEL=openai:MODEL@BASE_URL` (BASE_URL may be omitted for api.openai.com)."""
    label, sep, target = spec.partition("=")
    if not sep:
        label, target = Path(spec).name or spec, spec
    if target.startswith("openai:"):
        model, _, base_url = target.removeprefix("openai:").partition("@")
        return EvalModelConfig(label=label, model=model, base_url=base_url or None)
    return EvalModelConfig(label=label, path=target)


def parse_benchmark_spec(spec: str) -> EvalBenchmarkConfig:
    """`builtin`, `PATH` (named by its file stem) or `NAME=PATH`."""
    name, sep, path = spec.partition("=")
    if not sep:
        name, path = (spec if spec == "builtin" else Path(spec).stem), spec
    return EvalBenchmarkConfig(name=name, path=path)


def _run_job(job: Callable[[], object]) -> int:
    """Run a long job; bad input (a file, a value, a failing verifier) is one line on stderr and exit code 2."""
    from clinical_rl.experience import RewardFailureError

    # SIGTERM (job cancel, pod eviction) unwinds like Ctrl-C, so the job kills its actors and Ray on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        job()
    except (FileNotFoundError, ValueError, RewardFailureError) as err:
        print(f"clinical-rl: {err}", file=sys.stderr)
        return 2
    return 0


def _pipeline(cfg: RunConfig) -> int:
    from clinical_rl.pipeline import run_pipeline

    def job() -> None:
        for name, path in vars(run_pipeline(cfg)).items():
            if path is not None:
                print(f"{name}: {path}")

    return _run_job(job)


def _synth(cfg: RunConfig) -> int:
    import logging

    from clinical_rl.synthesis.runner import synthesize

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2"):  # one INFO line per request would bury the progress bar
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        summary = synthesize(cfg)  # handles Ctrl-C / SIGTERM itself: in-flight cases finish, the file stays whole
    except (ValueError, FileNotFoundError) as err:  # bad input file, corrupt output, unusable judge
        print(f"clinical-rl: {err}", file=sys.stderr)
        return 2
    print(summary)
    # 130: interrupted (rerun to resume); 1: some searches raised and were not stored (a rerun retries them).
    return 130 if summary.interrupted else 1 if summary.errors else 0


def _serve_reward(cfg: RunConfig, args: argparse.Namespace) -> int:
    import logging

    from clinical_rl.rewards.server import DEFAULT_STRIP_SUFFIXES, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    suffixes = DEFAULT_STRIP_SUFFIXES if args.strip_suffix is None else tuple(s for s in args.strip_suffix if s)
    try:
        serve(cfg.reward, host=args.host, port=args.port, failed_reward=args.failed_reward, suffixes=suffixes,
              concurrency=args.concurrency)
    except ValueError as err:  # unusable reward.cls / kwargs, bad --failed-reward: before anything binds
        print(f"clinical-rl: {err}", file=sys.stderr)
        return 2
    return 0


def _ppo(cfg: RunConfig) -> int:
    from clinical_rl.driver import run

    def job() -> None:
        result = run(cfg)
        print(f"final policy (HF format): {result.policy_dir}")
        print(f"W&B run: {result.tracking}")
        if cfg.eval.after_training:
            from clinical_rl.eval.runner import run_eval

            trained = [EvalModelConfig(label="base", path=cfg.model.path),
                       EvalModelConfig(label="policy", path=str(result.policy_dir))]
            print(f"evaluation report: {run_eval(cfg, [*trained, *cfg.eval.models]).report}", flush=True)

    return _run_job(job)


if __name__ == "__main__":
    sys.exit(main())
