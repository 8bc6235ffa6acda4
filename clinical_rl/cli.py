"""`clinical-rl <command> --config FILE [key.path=value ...]`.

The same line runs locally, after `ray job submit --` on a cluster, and as a KubeRay RayJob entrypoint.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable

from clinical_rl.cli_args import build_parser, parse_benchmark_spec, parse_fields_arg, parse_model_spec
from clinical_rl.config import RunConfig
from clinical_rl.config_stages import EvalModelConfig
from clinical_rl.config_files import ConfigError, dump_config, load_config
from clinical_rl.preflight import check, check_reward


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__)
    args, extra = parser.parse_known_args(argv)
    # argparse stops filling the overrides at the first option: `eval --model m eval.limit=5` leaves `eval.limit=5`
    # over; every leftover `key=value` is an override, anything else an error.
    unknown = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
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
        return _plan(cfg, args)
    if args.command in ("serve-reward", "verifier-audit"):
        try:
            check_reward(cfg, endpoints=False)  # the class and its kwargs, keyed, before anything binds or scores
        except ValueError as err:
            print(f"clinical-rl: {err}", file=sys.stderr)
            return 2
        return _serve_reward(cfg, args) if args.command == "serve-reward" else _verifier_audit(cfg, args)
    try:
        if args.command == "eval":
            cfg, flags = _eval_config(cfg, args)
        elif args.command == "select-rl-data":
            cfg, flags = _select_config(cfg, args)
        else:
            flags = ()
        _preflight(cfg, args.command, args.skip_endpoint_check, flags)
    except ValueError as err:  # bad flags, a relative output path under a job, or what the preflight found
        print(f"clinical-rl: {err}", file=sys.stderr)
        return 2
    if args.command == "eval":
        return _eval(cfg)
    if args.command == "synth":
        return _synth(cfg)
    if args.command == "pipeline":
        return _pipeline(cfg)
    if args.command == "select-rl-data":
        return _select(cfg)
    return _ppo(cfg)


def _preflight(cfg: RunConfig, command: str, skip_endpoints: bool, flags: tuple[str, ...]) -> None:
    """Everything a command writes under output_dir, and everything it needs, checked before any actor starts.

    Raises:
        ValueError: a relative output path under `ray job submit`; PreflightError with every problem found.
    """
    from clinical_rl.launch.cluster import check_job_outputs

    check_job_outputs(cfg)
    models = cfg.eval.models if command == "eval" else None
    check(cfg, command, models=models, endpoints=not skip_endpoints, flags=flags)  # type: ignore[arg-type]


def _plan(cfg: RunConfig, args: argparse.Namespace) -> int:
    """Resolved config; for `--for ppo|pipeline` the bundles, per node / GPU the role instances and their memory,
    the checkpoint disk (and the pipeline's stages); then the preflight of `--for`. 1 if the layout does not fit or
    the run is not ready (both are reported)."""
    from clinical_rl.launch.cluster import local_cluster_shape
    from clinical_rl.preflight import find_problems, format_problems

    print(dump_config(cfg))
    fits = True
    if args.target in ("ppo", "pipeline"):
        fits = _print_layout(local_cluster_shape(cfg), args.target)
    problems = find_problems(cfg, args.target, endpoints=not args.skip_endpoint_check)
    if problems:
        print(f"not ready: clinical-rl {args.target} would stop on {format_problems(problems)}", file=sys.stderr)
    elif fits:
        print(f"ready: clinical-rl {args.target} found everything it needs")
    return 0 if fits and not problems else 1


def _print_layout(cfg: RunConfig, target: str) -> bool:
    """The placement plan, its memory and disk (and the pipeline's stages); False when it does not fit."""
    from clinical_rl.launch.disk import checkpoint_disk, format_checkpoint_disk
    from clinical_rl.launch.layout import format_memory_plan, plan_memory
    from clinical_rl.launch.placement import format_plan, plan_placement
    from clinical_rl.launch.stages import format_pipeline_stages, pipeline_stages

    from clinical_rl.rl.step_shape import describe_step

    print("\n".join(describe_step(cfg)))
    try:
        print(format_plan(plan_placement(cfg)))
        memory = plan_memory(cfg)
    except ValueError as err:
        print(f"clinical-rl plan: {err}", file=sys.stderr)
        return False
    print(format_memory_plan(memory, cfg))
    print(format_checkpoint_disk(checkpoint_disk(cfg, memory.roles), cfg))
    if target == "pipeline":
        print(format_pipeline_stages(pipeline_stages(cfg, memory), cfg))
    if memory.problems:
        print("clinical-rl plan: the layout does not fit:\n  " + "\n  ".join(memory.problems), file=sys.stderr)
    return not memory.problems


def _eval_config(cfg: RunConfig, args: argparse.Namespace) -> tuple[RunConfig, tuple[str, ...]]:
    """The config with `--model` / `--benchmark` / `--fields` in eval.models / eval.benchmarks, and which flags
    replaced them (the preflight names a flag's problems by the flag).

    Raises:
        ValueError: `--fields` without `--benchmark`, or a bad `--fields` mapping.
    """
    update, flags = {}, []
    if args.model:
        update["models"] = [parse_model_spec(spec) for spec in args.model]
        flags.append("--model")
    if args.fields is not None and not args.benchmark:
        raise ValueError("--fields applies to the --benchmark files (for eval.benchmarks, set their fields)")
    if args.benchmark:
        fields = parse_fields_arg(args.fields) if args.fields is not None else {}
        update["benchmarks"] = [parse_benchmark_spec(spec, fields) for spec in args.benchmark]
        flags.append("--benchmark")
    return cfg.model_copy(update={"eval": cfg.eval.model_copy(update=update)}), tuple(flags)


def _select_config(cfg: RunConfig, args: argparse.Namespace) -> tuple[RunConfig, tuple[str, ...]]:
    """The config with `--model` / `--n` / `--band` / `--out` in `select`, and which of them replaced a value (the
    preflight names their problems by the flag).

    Raises:
        ValueError: `--n` below 1, or a `--band` outside [0, 1] or with LOW > HIGH; the message names the flag.
    """
    from clinical_rl.config_stages import SelectConfig
    from clinical_rl.selection.pass_rates import check_band

    update, flags = {}, []
    if args.n is not None and args.n < 1:
        raise ValueError(f"--n {args.n}: sample at least one answer per case")
    if args.band is not None:
        check_band(*args.band, what="--band")
        update["min_pass_rate"], update["max_pass_rate"] = args.band
    for flag, field, value in (("--model", "model", args.model), ("--n", "n_samples", args.n),
                               ("--out", "output", args.out)):
        if value is not None:
            update[field] = value
            flags.append(flag)
    select = SelectConfig.model_validate({**cfg.select.model_dump(), **update})
    return cfg.model_copy(update={"select": select}), tuple(flags)


def _select(cfg: RunConfig) -> int:
    """0: cases kept and written; 1: none in the band (the empty file and the summary are still written)."""
    from clinical_rl.selection.pass_rates import format_summary
    from clinical_rl.selection.runner import run_selection

    kept: list[int] = []

    def job() -> None:
        result = run_selection(cfg)
        kept.append(len(result.selection.kept))
        print(format_summary(result.selection))
        print(f"selected cases: {result.output}\nsummary: {result.summary}")
        # The file is in the case schema: a config that maps another format's columns must not map these.
        plain = cfg.data.format in ("auto", "jsonl") and not cfg.data.fields
        schema = "" if plain else " data.format=auto 'data.fields={}'"
        print(f"train on them: clinical-rl ppo --config ... data.path={result.output}{schema}", flush=True)

    code = _run_job(job)
    if code == 0 and not kept[0]:
        print(f"clinical-rl: no case has a pass rate in [{cfg.select.min_pass_rate:g}, {cfg.select.max_pass_rate:g}]",
              file=sys.stderr)
        return 1
    return code


def _eval(cfg: RunConfig) -> int:
    from clinical_rl.eval.runner import run_eval

    try:
        result = run_eval(cfg)
    except (ValueError, FileNotFoundError) as err:
        print(f"clinical-rl: {err}", file=sys.stderr)
        return 2
    print(result.report)
    failed = result.too_many_errors(cfg.eval.max_error_frac)
    for o in failed:
        print(f"clinical-rl: eval {o.model} on {o.benchmark}: {o.errors} of {o.n} answers failed "
              f"({o.error_frac:.0%} > eval.max_error_frac {cfg.eval.max_error_frac:g}); first: {o.first_error}",
              file=sys.stderr)
    return 1 if failed else 0


def _run_job(job: Callable[[], object]) -> int:
    """Run a long job. Bad input (a file, a value, a failing verifier, an unreachable cluster, a placement group
    never placed) is one line on stderr and exit code 2; a run stopped by a lost trainer is one line (how to
    resume) and exit code 3."""
    from clinical_rl.rl.experience import RewardFailureError
    from clinical_rl.rl.faults import RunStopped

    # SIGTERM (job cancel, pod eviction) unwinds like Ctrl-C, so the job kills its actors and Ray on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        job()
    except (FileNotFoundError, ValueError, RewardFailureError, ConnectionError, TimeoutError) as err:
        print(f"clinical-rl: {err}", file=sys.stderr)
        return 2
    except RunStopped as err:  # an actor the run cannot restart was lost: the message says how to resume
        print(f"clinical-rl: {err}", file=sys.stderr)
        return 3
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
    from clinical_rl.rewards.server_limits import ServerLimits

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    suffixes = DEFAULT_STRIP_SUFFIXES if args.strip_suffix is None else tuple(s for s in args.strip_suffix if s)
    try:
        limits = ServerLimits(args.max_body_bytes, args.max_field_chars, args.max_items)
        serve(cfg.reward, host=args.host, port=args.port, failed_reward=args.failed_reward, suffixes=suffixes,
              concurrency=args.concurrency, limits=limits)
    except ValueError as err:  # unusable reward.cls / kwargs, bad --failed-reward or limit: before anything binds
        print(f"clinical-rl: {err}", file=sys.stderr)
        return 2
    return 0


def _verifier_audit(cfg: RunConfig, args: argparse.Namespace) -> int:
    """0: no false positive; 1: at least one (CI gates on it); 2: unreadable pairs file or unusable reward."""
    import json

    from clinical_rl.rewards.audit import audit_locally

    try:
        report = audit_locally(cfg.reward, args.pairs)
    except ValueError as err:
        print(f"clinical-rl: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_json(), ensure_ascii=False, indent=2) if args.json else report.table())
    return 1 if report.false_positives else 0


def _ppo(cfg: RunConfig) -> int:
    from clinical_rl.rl.driver import run

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
