"""`clinical-rl synth`: run the verifier-guided search over many cases at once, writing each finished case to the store.

Up to `max_in_flight` cases are searched at once, each in its own thread (backend calls block); every backend call
first takes its share of the rate limiter. Finished items are filtered (`check_row`) and appended at once, so a kill
loses only the cases in flight, and a rerun resumes where the file ends. Ctrl-C or SIGTERM stops new cases from
starting and waits for the ones in flight; a second one abandons them (nothing half-written reaches the file).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from clinical_rl.config import RunConfig
from clinical_rl.data.cases import Case
from clinical_rl.llm_client import ChatBackend, ChatReply, Conversation, EngineChat, OpenAIChat
from clinical_rl.synthesis.filters import FilterConfig, check_row
from clinical_rl.synthesis.rate_limit import RateLimitedChat, RateLimiter
from clinical_rl.synthesis.search import SearchConfig, SynthesisResult, cascade_verify, search_case
from clinical_rl.synthesis.store import SynthesisStore

log = logging.getLogger(__name__)

Verify = Callable[[str, Case], str]
Solve = Callable[[Case], SynthesisResult]  # one case -> its row and lineage (the search, or the knowledge-base teacher)


@dataclass
class SynthesisSummary:
    """What one run did; items already in the store are `skipped`, cases whose search raised are `errors`."""

    done: int = 0
    failed: int = 0
    filtered: Counter[str] = field(default_factory=Counter)  # reason -> items
    skipped: int = 0
    errors: int = 0  # not stored: a rerun tries these cases again
    seconds: float = 0.0
    interrupted: bool = False
    output: str = ""

    @property
    def finished(self) -> int:
        return self.done + self.failed + sum(self.filtered.values())

    @property
    def items_per_s(self) -> float:
        return self.finished / self.seconds if self.seconds else 0.0

    def __str__(self) -> str:
        filtered = ", ".join(f"{k} {v}" for k, v in sorted(self.filtered.items())) or "none"
        return (f"synthesis: done {self.done}, failed {self.failed}, filtered {sum(self.filtered.values())} "
                f"({filtered}), skipped {self.skipped} (already in the output), errors {self.errors}; "
                f"{self.items_per_s:.3f} items/s over {self.seconds:.0f} s"
                f"{' (interrupted: rerun to resume)' if self.interrupted else ''}\noutput: {self.output}")


def run_synthesis(cases: Sequence[Case], solve: Solve, store: SynthesisStore, *, filter_cfg: FilterConfig,
                  max_in_flight: int = 8) -> SynthesisSummary:
    """`solve` every case not yet in `store`, `max_in_flight` at a time; append each as it finishes."""
    _check_ids(cases)
    summary = SynthesisSummary(output=str(store.path))
    written = store.done_ids()
    todo = [c for c in cases if c.id not in written]
    summary.skipped = len(cases) - len(todo)
    results: queue.Queue[tuple[Case, SynthesisResult | BaseException]] = queue.Queue()

    def work(case: Case) -> None:
        try:
            results.put((case, solve(case)))
        except BaseException as err:  # reported, not stored: the case stays to do for the next run
            results.put((case, err))

    start, started, in_flight, pending = time.perf_counter(), 0, 0, iter(todo)
    with _stop_on_signals() as stop, tqdm(total=len(cases), initial=summary.skipped, unit="case",
                                          desc="synthesis") as bar:
        while True:
            while not stop.is_set() and in_flight < max_in_flight and (case := next(pending, None)) is not None:
                # Daemon threads: an abandoned call (second Ctrl-C) must not keep the process alive.
                threading.Thread(target=work, args=(case,), name=f"synth-{case.id}", daemon=True).start()
                started, in_flight = started + 1, in_flight + 1
            if in_flight == 0 or stop.abandon:
                break
            try:
                case, outcome = results.get(timeout=0.5)  # wake up now and then to notice a signal
            except queue.Empty:
                continue
            in_flight -= 1
            _record(case, outcome, store, filter_cfg, summary)
            bar.update()
            bar.set_postfix(done=summary.done, failed=summary.failed, filtered=sum(summary.filtered.values()),
                            errors=summary.errors)
        summary.interrupted = stop.is_set()
    summary.seconds = time.perf_counter() - start
    if summary.interrupted:
        log.warning("synthesis interrupted: %d cases abandoned in flight, %d not started; rerun to resume",
                    in_flight, len(todo) - started)
    return summary


def searcher(backend: ChatBackend, verify: Verify, search_cfg: SearchConfig, limiter: RateLimiter | None = None,
             synthesizer: str = "") -> Solve:
    """`solve` by the verifier-guided search over `backend`, every call first taking its share of `limiter`."""
    if limiter is not None:
        backend = RateLimitedChat(backend, limiter)
    return lambda case: search_case(case, backend, verify, search_cfg, synthesizer)


def _record(case: Case, outcome: SynthesisResult | BaseException, store: SynthesisStore, filter_cfg: FilterConfig,
            summary: SynthesisSummary) -> None:
    """Append a finished case (filtered if its row fails `check_row`) and count it; an error is logged, not stored."""
    if isinstance(outcome, BaseException) or _unanswered(outcome):
        summary.errors += 1
        why = (f"search raised {type(outcome).__name__}: {outcome}" if isinstance(outcome, BaseException)
               else f"no call got a reply ({'; '.join(outcome.lineage['errors'][:2])})")
        log.error("case %s: %s; not stored, a rerun retries it", case.id, why)
        return
    reason = check_row(outcome.thinking, outcome.response, filter_cfg) if outcome.status == "done" else None
    state = "filtered" if reason else outcome.status
    store.append(make_record(case, outcome, state, reason))
    if reason:
        summary.filtered[reason] += 1
    elif state == "done":
        summary.done += 1
    else:
        summary.failed += 1


def make_record(case: Case, result: SynthesisResult, state: str, filter_reason: str | None) -> dict[str, Any]:
    """One store line: the SFT row (question, thinking, response and the case's metadata) and its lineage."""
    row = {"question": case.question, "thinking": result.thinking, "response": result.response,
           "reference": case.answer, "language": case.language, "department": case.department,
           "icd10": case.icd10, "source": case.source}
    return {"id": case.id, "state": state, "row": row, "lineage": result.lineage, "filter_reason": filter_reason}


def _unanswered(result: SynthesisResult) -> bool:
    """Failed without a single reply (endpoint down, every request timed out): an outage, not a search failure.
    The knowledge-base teacher calls nothing: its failure (a case it has no entry for) is stored as failed, with
    the reason, since a rerun cannot do better."""
    if result.lineage.get("synthesizer") == "knowledge-base":
        return False
    return result.status == "failed" and not result.lineage.get("verdicts") and not result.lineage.get(
        "approx_tokens_out")


def _check_ids(cases: Sequence[Case]) -> None:
    """Resuming matches cases by id, so every case needs one, and no two the same."""
    seen: dict[str, int] = {}
    for i, case in enumerate(cases):
        if not case.id:
            raise ValueError(f"case {i} has no id; synthesis resumes by id")
        if case.id in seen:
            raise ValueError(f"cases {seen[case.id]} and {i} share the id {case.id!r}; synthesis resumes by id")
        seen[case.id] = i


class _Stop(threading.Event):
    """Set by the first Ctrl-C / SIGTERM (start no more cases); `abandon` by the second (stop waiting)."""

    abandon = False


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[_Stop]:
    stop = _Stop()
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread only
        yield stop
        return

    def handler(signum: int, _frame: object) -> None:
        if stop.is_set():
            stop.abandon = True
        log.warning("%s: %s", signal.Signals(signum).name, "abandoning the cases in flight" if stop.abandon else
                    "starting no new cases, finishing those in flight (again to abandon them)")
        stop.set()

    # Our handler, not KeyboardInterrupt: an exception raised mid-append could cut a line short.
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def synthesis_cases(cfg: RunConfig) -> list[Case]:
    """The input cases of `clinical-rl synth`: `synthesis.path` read with its format and field mapping.

    Raises:
        FileNotFoundError, ValueError, CaseFormatError: as `data.loaders.load_cases`.
    """
    from clinical_rl.data.loaders import load_cases

    s = cfg.synthesis
    return load_cases(s.path, s.format, s.fields, s.language, s.limit, cfg.seed, departments=s.departments,
                      builtin_per_disease=s.builtin_per_disease)


def synthesize(cfg: RunConfig) -> SynthesisSummary:
    """`clinical-rl synth`: load `synthesis.path`, open the backend and the store, run, return the summary."""
    from clinical_rl.rewards.cascade import CascadeVerifier
    from clinical_rl.rewards.clinical import JudgeConfig, build_judge
    from clinical_rl.rewards.rule_verifier import RuleVerifier
    from clinical_rl.synthesis.kb_teacher import teach_case

    s = cfg.synthesis
    if s.teacher == "search" and s.engine_model is None and not s.model:  # not a config check: most runs never synthesize
        raise ValueError("synthesis.model is required for an endpoint (or set synthesis.engine_model to a local model)")
    cases = synthesis_cases(cfg)
    filter_cfg = s.filters.to_filter_config()
    with SynthesisStore(synthesis_output(cfg), restart=s.restart) as store:
        if s.teacher == "knowledge_base":
            return run_synthesis(cases, teach_case, store, filter_cfg=filter_cfg, max_in_flight=s.max_in_flight)
        judge = build_judge(JudgeConfig.model_validate(s.judge)) if s.judge is not None else None
        verify = cascade_verify(CascadeVerifier(RuleVerifier(), judge))
        search_cfg = SearchConfig(max_depth=s.max_depth, max_attempts=s.max_attempts, max_tokens=s.max_tokens,
                                  temperature=s.temperature, seed=cfg.seed)
        limiter = RateLimiter(s.requests_per_min, s.tokens_per_min) if s.requests_per_min or s.tokens_per_min else None
        with open_synthesizer(cfg) as (backend, name):
            return run_synthesis(cases, searcher(backend, verify, search_cfg, limiter, name), store,
                                 filter_cfg=filter_cfg, max_in_flight=s.max_in_flight)


def synthesis_output(cfg: RunConfig) -> Path:
    """Where synthesis writes (and the SFT stage reads) the rows: `synthesis.output` or `<output_dir>/synthesis.jsonl`."""
    return Path(cfg.synthesis.output or Path(cfg.output_dir) / "synthesis.jsonl")


@contextlib.contextmanager
def open_synthesizer(cfg: RunConfig) -> Iterator[tuple[ChatBackend, str]]:
    """The synthesizer's backend and the name lineage records: an endpoint, or engine actors of a local model."""
    s = cfg.synthesis
    if s.engine_model is None:
        yield OpenAIChat(s.model, s.base_url, s.api_key_env, s.timeout_s, s.max_retries, s.max_in_flight), s.model
        return
    from clinical_rl.device import Device
    from clinical_rl.launch.engines import engine_pool
    from clinical_rl.models import check_model_dir

    path = check_model_dir(s.engine_model, "synthesis.engine_model")
    with engine_pool(s.engine, path, cfg.ray, device=Device(cfg.device), dtype=cfg.model.dtype, seed=cfg.seed,
                     trust_remote_code=cfg.model.trust_remote_code, what="synthesis engines") as engines:
        # An engine actor serves one call at a time: only gathered into one batch do the cases decode together.
        yield BatchingChat(EngineChat(engines, timeout_s=s.timeout_s)), s.engine_model


class BatchingChat:
    """Gathers the conversations that concurrent threads send within `window_s` into one call of `backend`."""

    def __init__(self, backend: ChatBackend, window_s: float = 0.05) -> None:
        self.backend, self.window_s = backend, window_s
        self._lock = threading.Lock()
        self._pending: dict[tuple[int, float, int], list[tuple[Conversation, Future]]] = {}

    def chat(self, conversations: Sequence[Conversation], max_tokens: int, temperature: float = 0.0,
             top_logprobs: int = 0) -> list[ChatReply | Exception]:
        key = (max_tokens, temperature, top_logprobs)
        futures: list[Future] = [Future() for _ in conversations]
        with self._lock:
            batch = self._pending.setdefault(key, [])
            leads = not batch  # the first caller of a batch waits for company, then sends it for everyone
            batch.extend(zip(conversations, futures))
        if leads:
            time.sleep(self.window_s)
            with self._lock:
                batch = self._pending.pop(key)
            try:
                replies = self.backend.chat([c for c, _ in batch], max_tokens, temperature, top_logprobs)
            except Exception as err:  # every waiter must hear back, or its thread hangs
                replies = [err] * len(batch)
            for (_, future), reply in zip(batch, replies):
                future.set_result(reply)
        return [f.result() for f in futures]

