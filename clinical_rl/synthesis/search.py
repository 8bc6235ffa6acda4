"""Search-based long-CoT synthesis for one case (HuatuoGPT-o1's algorithm, our prompts).

attempt (initial JSON chain) → verify its conclusion → up to `max_depth` strategies (explore / backtrack / verify /
correct), each continuing the chain → on depth exhausted, archive the branch and restart (up to `max_attempts`) →
one last guided attempt shown the reference → reformat the accepted chain into natural thinking and a formal response.
A failed LLM call or an unparseable reply is recorded in the lineage and counts as a failed step, never a crash.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from clinical_rl.data.cases import Case
from clinical_rl.data.prompts import case_text
from clinical_rl.llm_client import ChatBackend
from clinical_rl.rewards.answer_format import extract_final_answer
from clinical_rl.rewards.cascade import CascadeVerifier
from clinical_rl.synthesis.templates import (
    CHAIN_FORMAT, CONTINUATION, FINAL_CONCLUSION, FORMAL_RESPONSE, GUIDED, INITIAL, NATURAL_THINKING, STRATEGIES,
    VERIFICATION,
)

Step = dict[str, str]  # {"action": ..., "title": ..., "content": ...}
Verify = Callable[[str, Case], str]  # (conclusion, case) -> "correct" | "incorrect" | "undecided"

# Models put chatter or ```json fences around the object and raw newlines inside its strings; strict=False takes those.
_DECODER = json.JSONDecoder(strict=False)
_OPEN_BRACE = re.compile(r"\{")


@dataclass
class SearchConfig:
    max_depth: int = 3  # strategies tried per branch after its initial chain
    max_attempts: int = 2  # branches (restarts) before the guided attempt
    max_tokens: int = 2048  # per LLM call
    temperature: float = 0.7
    seed: int = 0  # strategy choice only; sampling randomness is the backend's


@dataclass(frozen=True)
class SynthesisResult:
    status: str  # "done" | "failed"
    thinking: str | None  # the natural long CoT; None unless done
    response: str | None  # the formal answer; None unless done
    guided: bool  # the accepted chain was written with the reference in view
    lineage: dict  # how the search went: strategy_path, attempts, verdicts, archived_branches, calls, errors, ...


def search_case(case: Case, backend: ChatBackend, verify: Verify, cfg: SearchConfig,
                synthesizer: str = "") -> SynthesisResult:
    """Search for a reasoning chain the verifier accepts, then rewrite it as natural thinking and a formal response."""
    started_at = utc_now()
    run = _Run(case, backend, verify, cfg)
    archived: list[list[str]] = []
    path: list[str] = []
    chain: list[Step] | None = None
    last_chain: list[Step] = []  # the guided attempt continues the latest chain there is
    accepted, attempts = False, 0
    while not accepted and attempts < cfg.max_attempts:
        attempts += 1
        path, chain, accepted = _search_branch(run, attempts)
        if not accepted:
            archived.append(path)
            last_chain = chain or last_chain
    guided = not accepted
    if guided:
        path, chain, accepted = _guided_attempt(run, path, last_chain)
        if not accepted:
            archived.append(path)
    thinking, response = _reformat(run, chain) if accepted and chain else (None, None)
    lineage = {
        "strategy_path": path if accepted else [],
        "attempts": attempts,
        "verdicts": run.verdicts,
        "archived_branches": archived,
        "guided": guided,
        "synthesizer": synthesizer,
        "started_at": started_at,
        "finished_at": utc_now(),
        # ChatReply carries no usage counts: characters / 4 is a rough estimate (Chinese runs nearer 1 char a token).
        "approx_tokens_in": run.chars_in // 4,
        "approx_tokens_out": run.chars_out // 4,
        "calls": run.calls,
        "errors": run.errors,
    }
    status = "done" if response is not None else "failed"
    return SynthesisResult(status, thinking, response, guided, lineage)


def _search_branch(run: _Run, attempt: int) -> tuple[list[str], list[Step] | None, bool]:
    """One attempt: an initial chain, then up to `max_depth` strategies, each continuing the chain so far."""
    rng = random.Random(f"{run.cfg.seed}:{run.case.id}:{attempt}")
    path = ["init"]
    chain = run.ask_chain(run.prompt(INITIAL), f"attempt {attempt} init")
    if chain is None:
        return path, None, False
    if run.accepts(chain):
        return path, chain, True
    for depth in range(1, run.cfg.max_depth + 1):
        # Backtracking straight after the initial chain would only redo it, so a branch opens with another strategy.
        strategy = rng.choice([name for name in STRATEGIES if depth > 1 or name != "backtracking"])
        path.append(strategy)
        previous = _without_last_verification(chain)
        prompt = run.prompt(CONTINUATION, previous=_as_json(previous),
                            instruction=STRATEGIES[strategy][run.case.language])
        steps = run.ask_chain(prompt, f"attempt {attempt} {strategy}")
        if steps is None:
            continue
        chain = previous + steps
        if run.accepts(chain):
            return path, chain, True
    return path, chain, False


def _guided_attempt(run: _Run, path: list[str], chain: list[Step]) -> tuple[list[str], list[Step] | None, bool]:
    """The last resort: continue the latest chain with the reference in view, to reach it without saying so."""
    previous = _without_last_verification(chain)
    steps = run.ask_chain(run.prompt(GUIDED, previous=_as_json(previous), reference=_reference(run.case)), "guided")
    path = [*path, "guided"]
    if steps is None:
        return path, None, False
    chain = previous + steps
    return path, chain, run.accepts(chain)


def _reformat(run: _Run, chain: list[Step]) -> tuple[str | None, str | None]:
    """(natural thinking, formal response) from the accepted chain; (None, None) when either call fails."""
    thinking = run.ask(run.prompt(NATURAL_THINKING, chain=_chain_text(chain)), "reformat thinking")
    if thinking is None:
        return None, None
    response = run.ask(run.prompt(FORMAL_RESPONSE, thinking=thinking), "reformat response")
    return (thinking, response) if response is not None else (None, None)


@dataclass
class _Run:
    """One case's search state: sends prompts, counts calls and characters, and keeps verdicts and errors."""

    case: Case
    backend: ChatBackend
    verify: Verify
    cfg: SearchConfig
    verdicts: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    calls: int = 0
    chars_in: int = 0
    chars_out: int = 0

    def prompt(self, templates: dict[str, str], **fields: str) -> str:
        """The template in the case's language, filled with the case text, the chain format and `fields`."""
        language = self.case.language
        return templates[language].format(question=case_text(self.case), chain_format=CHAIN_FORMAT[language],
                                          **fields)

    def ask(self, prompt: str, step: str) -> str | None:
        """The reply's text, or None (with the reason in `errors`) when the call failed or came back empty."""
        self.calls += 1
        self.chars_in += len(prompt)
        reply = self.backend.chat([[{"role": "user", "content": prompt}]], self.cfg.max_tokens,
                                  self.cfg.temperature)[0]
        if isinstance(reply, Exception):
            self.errors.append(f"{step}: {type(reply).__name__}: {reply}")
            return None
        self.chars_out += len(reply.text)
        if not reply.text.strip():
            self.errors.append(f"{step}: empty reply (finish_reason={reply.finish_reason})")
            return None
        return reply.text.strip()

    def ask_chain(self, prompt: str, step: str) -> list[Step] | None:
        """The reasoning steps of the reply, or None (with the reason in `errors`) when there are none to read."""
        text = self.ask(prompt, step)
        if text is None:
            return None
        try:
            return parse_chain(text)
        except ValueError as err:
            self.errors.append(f"{step}: unparseable chain ({err}): {text[:80]!r}")
            return None

    def accepts(self, chain: list[Step]) -> bool:
        """Verifies the chain's last Final Conclusion; only "correct" is acceptance ("undecided" is not)."""
        conclusion = next(s["content"] for s in reversed(chain) if s["action"] == FINAL_CONCLUSION)
        verdict = self.verify(conclusion, self.case)
        self.verdicts.append(verdict)
        return verdict == "correct"


def parse_chain(text: str) -> list[Step]:
    """The steps of the first `{"CoT": [...]}` object in a reply; ValueError if there is none or it concludes nothing."""
    for brace in _OPEN_BRACE.finditer(text):
        try:
            obj, _ = _DECODER.raw_decode(text, brace.start())
        except ValueError:
            continue
        if isinstance(obj, dict) and "CoT" in obj:
            break
    else:
        raise ValueError('no {"CoT": [...]} object')
    steps = obj["CoT"]
    if not isinstance(steps, list) or not all(
            isinstance(s, dict) and isinstance(s.get("action"), str) and isinstance(s.get("content"), str)
            for s in steps):
        raise ValueError("CoT is not a list of {action, content} steps")
    if not any(s["action"] == FINAL_CONCLUSION for s in steps):
        raise ValueError("no Final Conclusion step")
    return steps


def cascade_verify(verifier: CascadeVerifier) -> Verify:
    """`verify` for `search_case` from the verifier cascade: the diagnosis a conclusion states, judged on the case."""

    def verify(conclusion: str, case: Case) -> str:
        # The rule verifier needs the diagnosis itself; the conclusion's "Diagnosis: ..." line gives it.
        answer = extract_final_answer(conclusion) or conclusion
        return verifier.verify([(answer, case)])[0].verdict

    return verify


def _without_last_verification(chain: list[Step]) -> list[Step]:
    """What a continuation builds on: the chain without its closing Verification (which judged a wrong conclusion)."""
    return chain[:-1] if chain and chain[-1]["action"] == VERIFICATION else chain


def _as_json(chain: list[Step]) -> str:
    return json.dumps({"CoT": chain}, ensure_ascii=False, indent=1)


def _chain_text(chain: list[Step]) -> str:
    """The chain as plain text for the reformat prompt, so that no JSON invites JSON leftovers in the thinking."""
    return "\n\n".join(f"[{s['action']}{': ' + s['title'] if s.get('title') else ''}]\n{s['content']}" for s in chain)


def _reference(case: Case) -> str:
    """The answer the guided attempt is shown: the gold option with its letter for MCQ, the diagnosis otherwise."""
    if case.options and case.answer_letter:
        return f"{case.answer_letter}. {case.options[case.answer_letter]}"
    return case.answer


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
