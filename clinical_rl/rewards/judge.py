"""LLM-judge verifier: asks a judge model whether a final answer names the reference diagnosis.

The prompt asks for one word, True or False (HuatuoGPT-o1's check; WiNGPT's verifier in spirit). When the backend
returns logprobs, the verdict is P(True) = p(True) / (p(True) + p(False)) over the first token's top candidates,
compared with a threshold; otherwise the reply text is parsed. A reply that is neither is a parse failure, which
the reward turns into status `error`, never into a guess.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from clinical_rl.llm_client import ChatBackend, ChatReply

JUDGE_PROMPTS: dict[str, str] = {
    "en": (
        "You are an experienced physician checking a student's diagnosis against the reference.\n"
        "Reference diagnosis: {reference}\n"
        "Student's final answer: {answer}\n"
        "Does the student's answer name the same diagnosis as the reference? Synonyms, abbreviations and more "
        "specific forms of the same disease count as the same; a different disease, a broader category, only a "
        "symptom, or several candidate diagnoses (a list, or 'X or Y') do not.\n"
        "Reply with exactly one word: True or False."
    ),
    "zh": (
        "你是一名资深医生，请将学生的诊断与参考诊断进行核对。\n"
        "参考诊断：{reference}\n"
        "学生的最终答案：{answer}\n"
        "学生的答案与参考诊断是否为同一诊断？同义词、缩写以及同一疾病的更具体表述视为相同；不同的疾病、更宽泛的类别、仅为症状，"
        "或列出多个候选诊断（列表或“X或Y”）均视为不同。\n"
        "只回答一个词：True 或 False。"
    ),
}
_TRUE_WORDS = ("true", "yes", "正确", "是")
_FALSE_WORDS = ("false", "no", "错误", "否", "不")


@dataclass(frozen=True)
class JudgeVerdict:
    correct: bool | None  # None: the reply could not be read (a parse failure)
    p_true: float | None  # from logprobs, when the backend gave them
    reply: str


class LLMJudge:
    """Renders the judge prompt, asks the chat backend for a few greedy tokens, and reads the verdict."""

    def __init__(self, backend: ChatBackend, threshold: float = 0.5, use_logprobs: bool = True) -> None:
        self.backend, self.threshold, self.use_logprobs = backend, threshold, use_logprobs

    def judge(self, items: Sequence[tuple[str, str, str]]) -> list[JudgeVerdict | Exception]:
        """(answer, reference, language) triples -> verdicts, in order; a failed request is its exception."""
        conversations = [[{"role": "user", "content": render_judge_prompt(a, ref, lang)}] for a, ref, lang in items]
        replies = self.backend.chat(conversations, max_tokens=4, temperature=0.0,
                                    top_logprobs=5 if self.use_logprobs else 0)
        return [r if isinstance(r, Exception) else self.read_verdict(r) for r in replies]

    def read_verdict(self, reply: ChatReply) -> JudgeVerdict:
        p_true = p_true_from_logprobs(reply.top_logprobs) if reply.top_logprobs else None
        if p_true is not None:
            return JudgeVerdict(p_true >= self.threshold, p_true, reply.text)
        return JudgeVerdict(parse_verdict(reply.text), None, reply.text)


def render_judge_prompt(answer: str, reference: str, language: str) -> str:
    return JUDGE_PROMPTS.get(language, JUDGE_PROMPTS["en"]).format(answer=answer, reference=reference)


def parse_verdict(text: str) -> bool | None:
    """True / False from the reply's first word (English or Chinese); None when it is neither."""
    head = text.strip().strip("*\"'`.:：。 ").casefold()
    if head.startswith(_TRUE_WORDS):
        return True
    if head.startswith(_FALSE_WORDS):
        return False
    return None


def p_true_from_logprobs(top_logprobs: dict[str, float]) -> float | None:
    """p(True) / (p(True) + p(False)) over first-token candidates; None when neither word is among them."""
    p_true = p_false = 0.0
    for token, logprob in top_logprobs.items():
        word = token.strip().casefold()
        if word and "true".startswith(word) and len(word) >= 2:
            p_true += math.exp(logprob)
        elif word and "false".startswith(word) and len(word) >= 2:
            p_false += math.exp(logprob)
    if p_true + p_false == 0.0:
        return None
    return p_true / (p_true + p_false)
