"""The synthesis runner: concurrency, states, filtering, resume, signals, rate limits; then against a real server.

The light tests use a scripted chat backend; the slow ones run `vllm serve` of the embedded model (the 135M model
mostly fails the search, which is fine: they check bookkeeping, not quality).
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from clinical_rl.data.loaders import load_cases
from clinical_rl.llm_client import ChatReply, OpenAIChat
from clinical_rl.rewards.cascade import CascadeVerifier
from clinical_rl.rewards.rule_verifier import RuleVerifier
from clinical_rl.synthesis.filters import FilterConfig
from clinical_rl.synthesis.rate_limit import RateLimitedChat, RateLimiter
from clinical_rl.synthesis.runner import BatchingChat, run_synthesis, searcher
from clinical_rl.synthesis.search import SearchConfig, cascade_verify
from clinical_rl.synthesis.store import STATES, SynthesisStore

ROOT = Path(__file__).resolve().parents[2]
CASES = [c for c in load_cases("builtin") if c.language == "en"][:12]
THINKING = "Hmm, the findings fit together.\nWait, the work-up settles it.\nOkay, so that is the diagnosis."


class ScriptedChat:
    """Answers chain prompts with `Diagnosis: <gold>` for cases in `right` (a wrong one otherwise); counts overlap."""

    def __init__(self, right: set[str], delay_s: float = 0.02, thinking: str = THINKING,
                 fail: set[str] = frozenset()) -> None:
        self.right, self.delay_s, self.thinking, self.fail = right, delay_s, thinking, fail
        self.lock, self.active, self.peak, self.calls = threading.Lock(), 0, 0, 0

    def chat(self, conversations, max_tokens, temperature=0.0, top_logprobs=0):
        with self.lock:
            self.active += 1
            self.peak, self.calls = max(self.peak, self.active), self.calls + 1
        try:
            time.sleep(self.delay_s)
            return [self._reply(c[-1]["content"]) for c in conversations]
        finally:
            with self.lock:
                self.active -= 1

    def _reply(self, prompt: str) -> ChatReply | Exception:
        case = next(c for c in CASES if c.question in prompt)
        if case.id in self.fail:
            return ConnectionError("endpoint down")
        if "<reasoning_record>" in prompt:
            return ChatReply(self.thinking, finish_reason="stop")
        if "<thinking>" in prompt:
            return ChatReply(f"Diagnosis: {case.answer}\nThe key findings point to it.", finish_reason="stop")
        diagnosis = case.answer if case.id in self.right else "Common cold"
        chain = [{"action": "Inner Thinking", "title": "Findings", "content": "Weigh the findings."},
                 {"action": "Final Conclusion", "content": f"It fits.\nDiagnosis: {diagnosis}"},
                 {"action": "Verification", "content": "Checked against the case."}]
        return ChatReply(json.dumps({"CoT": chain}), finish_reason="stop")


def run(backend, path: Path, cases=CASES, max_in_flight: int = 8, synthesizer: str = ""):
    verify = cascade_verify(CascadeVerifier(RuleVerifier()))
    with SynthesisStore(path) as store:
        return run_synthesis(cases, searcher(backend, verify, SearchConfig(1, 1, 64), synthesizer=synthesizer), store,
                             filter_cfg=FilterConfig(), max_in_flight=max_in_flight)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_each_case_stored_once_with_state_lineage_and_row(tmp_path):
    right = {c.id for c in CASES[::2]}
    backend = ScriptedChat(right)
    summary = run(backend, tmp_path / "out.jsonl", max_in_flight=4, synthesizer="scripted")
    rows = records(tmp_path / "out.jsonl")
    assert sorted(r["id"] for r in rows) == sorted(c.id for c in CASES)
    assert {r["id"] for r in rows if r["state"] == "done"} == right
    assert (summary.done, summary.failed, summary.skipped, summary.errors) == (6, 6, 0, 0)
    assert 1 < backend.peak <= 4  # cases overlap, never more than max_in_flight
    done = next(r for r in rows if r["state"] == "done")
    assert done["row"]["thinking"] == THINKING and done["row"]["response"].startswith("Diagnosis:")
    assert done["row"]["reference"] and done["row"]["department"] and done["row"]["source"] == "builtin-kb"
    assert done["lineage"]["synthesizer"] == "scripted" and done["lineage"]["verdicts"] == ["correct"]
    assert done["lineage"]["started_at"] <= done["lineage"]["finished_at"]
    assert summary.items_per_s > 0


def test_rows_failing_the_filters_are_stored_as_filtered(tmp_path):
    summary = run(ScriptedChat({c.id for c in CASES}, thinking="hmm."), tmp_path / "out.jsonl", max_in_flight=3)
    rows = records(tmp_path / "out.jsonl")
    assert {(r["state"], r["filter_reason"]) for r in rows} == {("filtered", "length_thinking")}
    assert summary.filtered == Counter({"length_thinking": 12}) and summary.done == 0


def test_resume_skips_stored_cases_and_retries_unanswered_ones(tmp_path):
    down = {c.id for c in CASES[:5]}
    first = run(ScriptedChat(set(), fail=down), tmp_path / "out.jsonl", max_in_flight=4)
    assert (first.failed, first.errors) == (7, 5)  # no reply at all: an outage, so not stored
    assert {r["id"] for r in records(tmp_path / "out.jsonl")}.isdisjoint(down)
    backend = ScriptedChat(set())
    second = run(backend, tmp_path / "out.jsonl", max_in_flight=4)
    assert (second.skipped, second.failed, second.errors) == (7, 5, 0)
    assert Counter(r["id"] for r in records(tmp_path / "out.jsonl")) == Counter(c.id for c in CASES)


def test_sigterm_finishes_cases_in_flight_and_starts_no_more(tmp_path):
    backend, before = ScriptedChat(set(), delay_s=0.3), signal.getsignal(signal.SIGTERM)
    threading.Timer(0.4, os.kill, (os.getpid(), signal.SIGTERM)).start()
    summary = run(backend, tmp_path / "out.jsonl", max_in_flight=2)
    rows = records(tmp_path / "out.jsonl")
    assert summary.interrupted and 2 <= len(rows) < len(CASES)
    assert len(rows) == summary.failed and summary.errors == 0  # the cases in flight were finished, not dropped
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back


def test_duplicate_case_ids_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="share the id"):
        run(ScriptedChat(set()), tmp_path / "out.jsonl", cases=[CASES[0], CASES[0]])


def test_rate_limiter_blocks_past_the_budget_and_wraps_every_conversation():
    limiter = RateLimiter(tokens_per_min=6000)
    start = time.monotonic()
    limiter.acquire(6000)  # the first minute's whole budget: no wait
    assert time.monotonic() - start < 0.1
    limiter.acquire(100)  # 100 tokens refill in 1 s
    assert 0.8 < time.monotonic() - start < 2.0
    RateLimiter().acquire(10**9)  # no limits: never blocks

    requests = RateLimiter(requests_per_min=60)
    chat = RateLimitedChat(ScriptedChat(set()), requests)
    prompt = [{"role": "user", "content": CASES[0].question}]
    chat.chat([prompt] * 3, max_tokens=8)
    assert requests.levels[0] == pytest.approx(57, abs=0.1)


def test_batching_gathers_concurrent_calls_into_one_backend_call(tmp_path):
    backend = ScriptedChat(set(), delay_s=0.2)
    summary = run(BatchingChat(backend, window_s=0.05), tmp_path / "out.jsonl", max_in_flight=6)
    assert summary.failed == 12
    assert backend.calls <= 12  # 24 conversations (2 per case) in at most 12 calls: several cases to a batch


def test_cli_synth_without_a_model_fails_fast(tmp_path):
    out = subprocess.run([sys.executable, "-m", "clinical_rl.cli", "synth", f"output_dir={tmp_path}"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 2
    assert "synthesis.model: required for an endpoint" in out.stderr


# ------------------------------------------------------------------------------------------------------------------
# Against a real `vllm serve` of the embedded model

SMALL = SearchConfig(max_depth=1, max_attempts=1, max_tokens=96)


@pytest.mark.slow
@pytest.mark.vllm
def test_end_to_end_against_vllm_serve(vllm_server, tmp_path):
    cases = load_cases("builtin")[:10]
    backend = OpenAIChat("smollm2", vllm_server.base_url, timeout_s=120, max_retries=1, max_in_flight=4)
    verify = cascade_verify(CascadeVerifier(RuleVerifier()))
    with SynthesisStore(tmp_path / "out.jsonl") as store:
        summary = run_synthesis(cases, searcher(backend, verify, SMALL, synthesizer="smollm2"), store,
                                filter_cfg=FilterConfig(), max_in_flight=4)
    rows = records(tmp_path / "out.jsonl")
    assert Counter(r["id"] for r in rows) == Counter(c.id for c in cases)
    assert summary.finished == 10 and summary.errors == 0
    for r in rows:
        assert r["state"] in STATES
        lineage = r["lineage"]
        assert lineage["calls"] >= 2 and lineage["synthesizer"] == "smollm2"
        assert isinstance(lineage["verdicts"], list) and lineage["started_at"] <= lineage["finished_at"]
        assert r["row"]["question"] and r["row"]["reference"] and r["row"]["language"] in ("zh", "en")


@pytest.mark.slow
@pytest.mark.vllm
def test_sigkill_mid_run_then_resume_keeps_every_case_exactly_once(vllm_server, tmp_path):
    out = tmp_path / "synth.jsonl"
    config = tmp_path / "synth.yaml"
    config.write_text(json.dumps({"output_dir": str(tmp_path), "synthesis": {
        "model": "smollm2", "base_url": vllm_server.base_url, "limit": 10, "output": str(out), "max_in_flight": 2,
        "max_depth": 1, "max_attempts": 1, "max_tokens": 96, "timeout_s": 120}}))  # JSON is YAML
    cmd = [sys.executable, "-m", "clinical_rl.cli", "synth", "--config", str(config)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 150
    while not (out.exists() and 2 <= len(out.read_bytes().splitlines()) < 10):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended or stalled before the kill"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = len(out.read_bytes().splitlines())
    with out.open("ab") as f:
        f.write(b'{"id": "kb-torn", "state": "do')  # as if the kill had landed mid-write
    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "torn last line" in rerun.stderr
    ids = Counter(r["id"] for r in records(out))
    assert ids == Counter(c.id for c in load_cases("builtin")[:10])  # none lost, none twice, no torn line
    assert f"skipped {kept}" in rerun.stdout
