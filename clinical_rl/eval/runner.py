"""`clinical-rl eval`: every model answers every benchmark; the verifier cascade judges; a report is written.

    for model in models:                       # a local checkpoint (vLLM engine actors) or an endpoint
        for benchmark in benchmarks:           # case files, optionally an ICD-stratified split
            replies     = model.chat(case conversations)          # same prompt format as training
            predictions += verify(final answer of each reply)     # rule verifier, then the judge
    rows = summarize(predictions)              # accuracy per department / language, bootstrap 95% CIs
    write_report(rows, predictions)            # report.md, charts/*.png, predictions.jsonl, summary.json
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from clinical_rl.config import RunConfig
from clinical_rl.config_stages import EvalBenchmarkConfig, EvalConfig, EvalModelConfig
from clinical_rl.data.cases import Case
from clinical_rl.data.loaders import load_cases
from clinical_rl.data.prompts import case_messages, template_opens_think
from clinical_rl.eval.records import GroupRow, Outcomes, Prediction, count_outcomes
from clinical_rl.llm_client import ChatBackend, ChatReply, Conversation, EngineChat, OpenAIChat
from clinical_rl.rewards.answer_format import parse_response
from clinical_rl.rewards.cascade import CascadeVerifier, Decision
from clinical_rl.rewards.judge import LLMJudge
from clinical_rl.rewards.rule_verifier import RuleVerifier

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
    `training_metrics` (an RL run's `metrics.jsonl`), the report shows that run's training curve too."""
    from clinical_rl.eval.report import write_report
    from clinical_rl.eval.scorers import summarize
    from clinical_rl.tracking import read_metrics

    ev = cfg.eval
    models = list(models if models is not None else ev.models)
    if not models:
        raise ValueError("eval.models is empty: name at least one model (path or endpoint)")
    if cfg.tracking.wandb_mode == "online" and not os.environ.get("WANDB_API_KEY"):
        raise ValueError("tracking.wandb_mode=online needs WANDB_API_KEY in the environment")
    benchmarks = {b.name: load_benchmark(b, cfg.seed) for b in ev.benchmarks}
    verifier = CascadeVerifier(RuleVerifier(), _judge(ev))
    predictions: list[Prediction] = []
    for model in models:
        opened = model_opens_think(model, cfg)
        with open_backend(model, cfg) as backend:
            for name, cases in benchmarks.items():
                replies = chat_in_chunks(backend, [conversation(c, ev) for c in cases], ev, f"{model.label}/{name}")
                judged = judge_replies(name, model.label, cases, replies, verifier, ev, think_opened=opened)
                _say_errors(count_outcomes(judged)[0], f"{model.label}/{name}")
                predictions += judged
    rows = summarize(predictions, n_resamples=ev.bootstrap_resamples, seed=cfg.seed)
    out_dir = Path(ev.out_dir or Path(cfg.output_dir) / "eval").resolve()  # chart links relative to the report
    history = read_metrics(training_metrics) if training_metrics is not None else None
    report = write_report(rows, predictions, out_dir, training_history=history)
    _log_to_wandb(cfg, rows, predictions)
    return EvalResult(report, rows, predictions, count_outcomes(predictions))


def _say_errors(outcomes: Outcomes, label: str) -> None:
    """A model's failed answers on the console as soon as its benchmark is done: never only in a file."""
    if outcomes.errors:
        print(f"eval {label}: {outcomes.errors} of {outcomes.n} answers failed ({outcomes.error_frac:.0%}); first: "
              f"{outcomes.first_error}", file=sys.stderr, flush=True)


def load_benchmark(b: EvalBenchmarkConfig, seed: int) -> list[Case]:
    from clinical_rl.eval.splits import build_split

    seed = seed if b.seed is None else b.seed
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


def chat_in_chunks(backend: ChatBackend, conversations: list[Conversation], ev: EvalConfig,
                   label: str) -> list[ChatReply | Exception]:
    """One reply (or the exception of its request) per conversation, sent in chunks with a progress bar.

    After `ev.max_consecutive_errors` failed requests in a row (a dead endpoint, a missing key) the rest are not
    sent: each gets a RuntimeError saying so, and counts as an error."""
    replies: list[ChatReply | Exception] = []
    failed_in_a_row = 0
    with tqdm(total=len(conversations), desc=f"eval {label}", unit="case") as bar:
        for start in range(0, len(conversations), _CHUNK):
            if failed_in_a_row >= ev.max_consecutive_errors:
                unsent = RuntimeError(f"not sent: the {failed_in_a_row} requests before it failed in a row "
                                      "(eval.max_consecutive_errors)")
                replies += [unsent] * (len(conversations) - start)
                break
            chunk = conversations[start : start + _CHUNK]
            for reply in backend.chat(chunk, ev.max_new_tokens, ev.temperature):
                failed_in_a_row = failed_in_a_row + 1 if isinstance(reply, Exception) else 0
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


def _log_to_wandb(cfg: RunConfig, rows: list[GroupRow], predictions: list[Prediction]) -> None:
    if cfg.tracking.wandb_mode == "disabled":
        return
    import wandb

    from clinical_rl.eval.dashboards import log_to_wandb

    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=cfg.tracking.project, name=f"{cfg.tracking.run_name or 'run'}-eval",
                     mode=cfg.tracking.wandb_mode, dir=cfg.output_dir, job_type="eval", reinit="finish_previous")
    try:
        log_to_wandb(rows, predictions, run)
    finally:
        run.finish()
