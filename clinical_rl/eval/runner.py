"""`clinical-rl eval`: every model answers every benchmark; the verifier cascade judges; a report is written.

    for model in models:                       # a local checkpoint (vLLM engine actors) or an endpoint
        for benchmark in benchmarks:           # case files, optionally an ICD-stratified split
            if done with the same inputs: reuse   # out_dir/predictions/ (eval/pairs.py), unless eval.restart
            replies     = model.chat(case conversations)          # same prompt format as training
                          # a chain benchmark (env): play each case's episode, turn by turn (eval/chain.py)
            predictions += verify(final answer of each reply)     # rule verifier, then the judge
            keep the pair's predictions                           # a crash later loses none of them
    rows = summarize(predictions)              # accuracy per department / language, bootstrap 95% CIs
    write_report(rows, predictions)            # report.md, charts/*.png, predictions.jsonl, summary.json
    log to W&B when tracking is on             # its local files in out_dir/wandb/
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from clinical_rl.config import RunConfig
from clinical_rl.config_stages import EvalBenchmarkConfig, EvalConfig, EvalModelConfig
from clinical_rl.data.cases import Case
from clinical_rl.data.loaders import load_cases
from clinical_rl.data.prompts import case_messages, template_opens_think
from clinical_rl.eval.pairs import PairFiles, benchmark_source, model_source, pair_inputs
from clinical_rl.eval.records import GroupRow, ModelSource, Outcomes, Prediction, Provenance, count_outcomes
from clinical_rl.llm_client import ChatBackend, ChatReply, Conversation, EngineChat, OpenAIChat
from clinical_rl.rewards.answer_format import parse_response
from clinical_rl.rewards.cascade import CascadeVerifier, Decision
from clinical_rl.rewards.judge import LLMJudge
from clinical_rl.rewards.rule_verifier import RuleVerifier
from clinical_rl.tracking import require_wandb_login

log = logging.getLogger(__name__)

COT_SUFFIX = {
    "en": "\n\nLet's think step by step, then give the final diagnosis on its own line as 'Diagnosis: <name>'.",
    "zh": "\n\n请一步一步思考，最后单独一行给出最终诊断，格式为“诊断：<名称>”。",
}
_CHUNK = 32  # conversations per request batch: progress shows, and one failure costs little


@dataclass(frozen=True)
class EvalResult:
    """The report's path, the accuracy rows, every prediction, and the outcomes per benchmark and model."""

    report: Path
    rows: list[GroupRow]
    predictions: list[Prediction]
    outcomes: list[Outcomes]

    def too_many_errors(self, max_error_frac: float) -> list[Outcomes]:
        """The (benchmark, model) pairs whose error fraction passes `max_error_frac`."""
        return [o for o in self.outcomes if o.error_frac > max_error_frac]


def run_eval(cfg: RunConfig, models: Sequence[EvalModelConfig] | None = None,
             training_metrics: Path | None = None) -> EvalResult:
    """Evaluate `models` (default: `cfg.eval.models`) on `cfg.eval.benchmarks` and write the report; with
    `training_metrics` (an RL run's `metrics.jsonl`), the report shows that run's training curve too.

    Each (model, benchmark) pair's predictions are kept under `<out_dir>/predictions/` as soon as they are judged;
    a rerun into the same out_dir reuses those made from the same inputs (`_evaluate_model`) unless
    `eval.restart`. Raises ValueError for an empty model list or online W&B without a key, FileNotFoundError for a
    missing model directory (when that model's turn comes), and what loading a benchmark raises.
    """
    from clinical_rl.config_files import config_hash
    from clinical_rl.eval.report import write_report
    from clinical_rl.eval.scorers import summarize
    from clinical_rl.tracking import read_metrics

    ev = cfg.eval
    models = list(models if models is not None else ev.models)
    if not models:
        raise ValueError("eval.models is empty: name at least one model (path or endpoint)")
    require_wandb_login(cfg.tracking)
    out_dir = Path(ev.out_dir or Path(cfg.output_dir) / "eval").resolve()  # chart links relative to the report
    benchmarks = [(b, load_benchmark(b, cfg.seed)) for b in ev.benchmarks]
    verifier = CascadeVerifier(RuleVerifier(), _judge(ev))
    predictions: list[Prediction] = []
    sources: list[ModelSource] = []
    for model in models:
        source = model_source(model)
        sources.append(source)
        predictions += _evaluate_model(model, source, benchmarks, verifier, cfg, out_dir)
    rows = summarize(predictions, min_interval_n=ev.min_interval_n, n_resamples=ev.bootstrap_resamples,
                     seed=cfg.seed)
    provenance = Provenance(tuple(sources), tuple(benchmark_source(b, cases) for b, cases in benchmarks),
                            config_hash(cfg), importlib.metadata.version("clinical_rl"), ev.min_interval_n)
    history = read_metrics(training_metrics) if training_metrics is not None else None
    report = write_report(rows, predictions, out_dir, provenance=provenance, training_history=history)
    _log_to_wandb(cfg, rows, predictions, out_dir)
    return EvalResult(report, rows, predictions, count_outcomes(predictions))


@dataclass
class _Pair:
    """One benchmark of the model being evaluated: its cases, files, inputs and the predictions so far (one per
    case, None where it still has to be asked)."""

    benchmark: EvalBenchmarkConfig
    cases: list[Case]
    files: PairFiles
    inputs: dict[str, Any]
    predictions: list[Prediction | None]

    @property
    def todo(self) -> list[int]:
        return [i for i, p in enumerate(self.predictions) if p is None]


def _evaluate_model(model: EvalModelConfig, source: ModelSource,
                    benchmarks: Sequence[tuple[EvalBenchmarkConfig, list[Case]]], verifier: CascadeVerifier,
                    cfg: RunConfig, out_dir: Path) -> list[Prediction]:
    """`model`'s predictions on every benchmark, in benchmark order; each pair's are saved once judged.

    A pair stored with the same inputs (`pair_inputs`) is reused; its failed cases (verdict "error": a dead
    endpoint, a timeout, a failed judge) are asked again, so a rerun after fixing an endpoint completes the pair
    without repeating the cases that succeeded. A pair stored with other inputs, or with `eval.restart`, is
    evaluated anew. Each decision is one line on the console. The model's engines or client are opened only
    when some case is left to ask.
    """
    ev = cfg.eval
    pairs: list[_Pair] = []
    for benchmark, cases in benchmarks:
        files = PairFiles(out_dir, model.label, benchmark.name)
        inputs = pair_inputs(model, source, benchmark, cases, cfg)
        pair = _Pair(benchmark, cases, files, inputs, [None] * len(cases))
        where = f"eval {model.label}/{benchmark.name}"
        if ev.restart:
            if files.exists():
                print(f"{where}: eval.restart, evaluating again", flush=True)
        else:
            stored = files.load(inputs, [c.id for c in cases])
            if stored.predictions is not None:
                pair.predictions = [None if p.verdict == "error" else p for p in stored.predictions]
                failed = len(pair.todo)
                print(f"{where}: done in {files.predictions}, skipped" if not failed else
                      f"{where}: {failed} of {len(cases)} cases failed last time; asking those again", flush=True)
            elif stored.why:
                print(f"{where}: stored predictions not reused, {stored.why}; evaluating again", flush=True)
        pairs.append(pair)
    if any(pair.todo for pair in pairs):
        opened = model_opens_think(model, cfg)
        with open_backend(model, cfg) as backend:
            for pair in pairs:
                if pair.todo:
                    _ask(pair, model.label, backend, verifier, ev, opened)
    return [p for pair in pairs for p in pair.predictions if p is not None]


def _ask(pair: _Pair, label: str, backend: ChatBackend, verifier: CascadeVerifier, ev: EvalConfig,
         think_opened: bool) -> None:
    """Ask and judge the pair's open cases (a chain benchmark: play their episodes, then judge the final
    replies alike), fill them in, save the pair and say its errors."""
    todo, name, env = pair.todo, pair.benchmark.name, pair.benchmark.env
    cases = [pair.cases[i] for i in todo]
    if env is None:
        replies = chat_in_chunks(backend, [conversation(c, ev) for c in cases], ev, f"{label}/{name}")
        judged = judge_replies(name, label, cases, replies, verifier, ev, think_opened=think_opened)
    else:
        from clinical_rl.eval.chain import play_episodes

        played = play_episodes(backend, cases, env, ev, f"{label}/{name}")
        judged = judge_replies(name, label, cases, [p.final for p in played], verifier, ev, think_opened=think_opened)
        judged = [dataclasses.replace(j, episode=p.summary(), conversation=p.messages)
                  for j, p in zip(judged, played, strict=True)]
    for i, prediction in zip(todo, judged, strict=True):
        pair.predictions[i] = prediction
    done = [p for p in pair.predictions if p is not None]
    pair.files.save(done, pair.inputs)
    for outcomes in count_outcomes(done):
        _say_errors(outcomes, f"{label}/{name}")


def _say_errors(outcomes: Outcomes, label: str) -> None:
    """A model's failed answers on the console as soon as its benchmark is done: never only in a file."""
    if outcomes.errors:
        print(f"eval {label}: {outcomes.errors} of {outcomes.n} answers failed ({outcomes.error_frac:.0%}); first: "
              f"{outcomes.first_error}", file=sys.stderr, flush=True)


def load_benchmark(b: EvalBenchmarkConfig, seed: int) -> list[Case]:
    """The benchmark's cases (a chain benchmark's: chain cases, as a chain run loads its data), split
    `per_department` when asked, then cut to `limit`. Raises what the loaders raise."""
    from clinical_rl.data.rl_data import load_rl_cases
    from clinical_rl.eval.splits import build_split

    seed = seed if b.seed is None else b.seed
    if b.env is not None:
        cases = load_rl_cases(b.chain_data(), seed, chain=True)
    else:
        cases = load_cases(b.path, b.format, b.fields or None, b.language, None, seed, departments=b.departments,
                           builtin_per_disease=b.builtin_per_disease)
    if b.per_department:
        cases = build_split(cases, b.per_department, seed=seed)
    return cases[: b.limit] if b.limit else cases


def model_opens_think(model: EvalModelConfig, cfg: RunConfig) -> bool:
    """Whether the model's chat template opens `<think>` in its generation prompt (`template_opens_think`), so
    that replies are read as the reward reads that model's rollouts. A local checkpoint's own tokenizer decides;
    an endpoint applies a template this process cannot see, so its `tokenizer` decides, and without one: False."""
    from clinical_rl.models import check_model_dir

    if model.path is not None:
        source = str(check_model_dir(model.path, f"eval.models[{model.label}].path"))
    elif model.tokenizer is not None:
        source = model.tokenizer
    else:
        return False
    from transformers import AutoTokenizer

    opened = template_opens_think(AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.model.trust_remote_code))
    if opened:
        log.info("eval %s: the chat template opens <think>; replies start inside the reasoning", model.label)
    return opened


def conversation(case: Case, ev: EvalConfig) -> Conversation:
    """The training prompt; with `cot_prompt`, a plain user turn that asks for step-by-step reasoning."""
    if ev.cot_prompt:
        return [{"role": "user", "content": case_messages(case)[1]["content"] + COT_SUFFIX[case.language]}]
    return case_messages(case, ev.system_prompt)


@dataclass
class ErrorStreak:
    """Failed requests in a row, carried from one `chat_in_chunks` call to the next (the turns of a chain)."""

    failed: int = 0


def chat_in_chunks(backend: ChatBackend, conversations: list[Conversation], ev: EvalConfig,
                   label: str, streak: ErrorStreak | None = None) -> list[ChatReply | Exception]:
    """One reply (or the exception of its request) per conversation, sent in chunks with a progress bar.

    After `ev.max_consecutive_errors` failed requests in a row (a dead endpoint, a missing key) the rest are not
    sent: each gets a RuntimeError saying so, and counts as an error. `streak` carries the count in and out, so
    that the turns of a chain benchmark stop as one stream would."""
    replies: list[ChatReply | Exception] = []
    streak = streak if streak is not None else ErrorStreak()
    with tqdm(total=len(conversations), desc=f"eval {label}", unit="case") as bar:
        for start in range(0, len(conversations), _CHUNK):
            if streak.failed >= ev.max_consecutive_errors:
                unsent = RuntimeError(f"not sent: the {streak.failed} requests before it failed in a row "
                                      "(eval.max_consecutive_errors)")
                replies += [unsent] * (len(conversations) - start)
                break
            chunk = conversations[start : start + _CHUNK]
            for reply in backend.chat(chunk, ev.max_new_tokens, ev.temperature):
                streak.failed = streak.failed + 1 if isinstance(reply, Exception) else 0
                replies.append(reply)
            bar.update(len(chunk))
    return replies


def judge_replies(benchmark: str, model: str, cases: Sequence[Case], replies: Sequence[ChatReply | Exception],
                  verifier: CascadeVerifier, ev: EvalConfig, think_opened: bool = False) -> list[Prediction]:
    """Verify the final answer of each reply; a failed request or judge is an `error` prediction, kept.

    `think_opened`: the model's chat template opened `<think>` (`model_opens_think`), so replies start inside it.
    """
    answers = [None if isinstance(r, Exception)
               else parse_response(r.text, ev.answer_format, think_opened=think_opened).answer for r in replies]
    to_verify = [i for i, a in enumerate(answers) if a]
    decided = dict(zip(to_verify, verifier.verify([(answers[i], cases[i]) for i in to_verify])))
    out = []
    for i, (case, reply) in enumerate(zip(cases, replies, strict=True)):
        decision, error = decided.get(i), None
        if isinstance(reply, Exception):
            verdict, path, error = "error", "error", f"{type(reply).__name__}: {reply}"
        elif decision is None:
            verdict, path = "incorrect", "format"  # no final answer to judge
        else:
            verdict, path, error = _verdict(decision), decision.path, decision.error
        out.append(Prediction(
            benchmark=benchmark, model=model, case_id=case.id, department=case.department, language=case.language,
            icd10=case.icd10, reference=case.answer, prompt=case.question,
            output="" if isinstance(reply, Exception) else reply.text, extracted=answers[i], verdict=verdict,
            path=path, error=error,
        ))
    return out


def _verdict(decision: Decision) -> str:
    return "error" if decision.error else decision.verdict


@contextlib.contextmanager
def open_backend(model: EvalModelConfig, cfg: RunConfig) -> Iterator[ChatBackend]:
    """An endpoint client, or `eval.engine.num_engines` vLLM engine actors that live for this model's evaluation."""
    ev = cfg.eval
    if model.path is None:
        yield OpenAIChat(model.model or "", model.base_url, model.api_key_env, ev.timeout_s, 2, ev.max_in_flight)
        return
    from clinical_rl.device import Device
    from clinical_rl.launch.engines import engine_pool
    from clinical_rl.models import check_model_dir

    path = check_model_dir(model.path, f"eval.models[{model.label}].path")
    with engine_pool(ev.engine, path, cfg.ray, device=Device(cfg.device), dtype=cfg.model.dtype, seed=cfg.seed,
                     trust_remote_code=cfg.model.trust_remote_code, what=f"engines of {model.label}") as engines:
        yield EngineChat(engines, timeout_s=ev.timeout_s)


def _judge(ev: EvalConfig) -> LLMJudge | None:
    from clinical_rl.rewards.clinical import JudgeConfig, build_judge

    return build_judge(JudgeConfig.model_validate(ev.judge)) if ev.judge is not None else None


def _log_to_wandb(cfg: RunConfig, rows: list[GroupRow], predictions: list[Prediction], out_dir: Path) -> None:
    """Log the evaluation to a W&B run of its own, whose local files go to `<out_dir>/wandb/`: with the report they
    belong to, not under `output_dir` (the default run's directory when eval.out_dir points elsewhere)."""
    if cfg.tracking.wandb_mode == "disabled":
        return
    import wandb

    from clinical_rl.eval.dashboards import log_to_wandb

    out_dir.mkdir(parents=True, exist_ok=True)  # wandb.init wants `dir` to exist; it adds the `wandb/` below it
    run = wandb.init(project=cfg.tracking.project, name=f"{cfg.tracking.run_name or 'run'}-eval",
                     mode=cfg.tracking.wandb_mode, dir=str(out_dir), job_type="eval", reinit="finish_previous")
    try:
        log_to_wandb(rows, predictions, run)
    finally:
        run.finish()
