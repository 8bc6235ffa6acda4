"""The diagnostic-chain environment (WiNGPT-3.0's evidence-based diagnostic chain): the policy reads what the patient
presents with, orders examinations, reads their results and only then commits to a diagnosis.

One `Episode` per `ChainCase`, pure Python and picklable, so a rollout engine runs it in its own process:

    episode = Episode(case, config)
    message = episode.first_message()          # the user turn: presentation + how to order and answer
    while (observation := episode.step(reply)) is not None:
        ...                                     # the next user turn is `observation`; generate the next reply
    episode.summary()                           # -> RewardInput.episode; episode.final_reply -> response

Requests: `<request>exam A; exam B</request>` (names separated by ";", "；" or new lines) or the Hermes / Qwen tool
call `<tool_call>{"name": "order_examinations", "arguments": {"examinations": [...]}}</tool_call>` (`TOOL_SCHEMA` is
the function definition for a chat template with tools); both forms may appear in one reply. Only text after the
last `</think>` is read: a request written inside the reasoning is thinking aloud, not an order. A reply without a
request is the final one (its answer is read by `parse_response`, the project's one answer parser, at reward time).
A reply with a request and a diagnosis keeps going: the diagnosis came before the results it asked for.

Each requested name is answered from the record (`<name>: <result>`; a broader exam such as "CT" returns every CT
of the record, a narrower one such as "CT head" the record's generic CT), or `not performed or not available`, or
`unknown examination`; names the vocabulary lacks are also matched against the record's own test names. Asking
for the diagnosis itself is refused. Costs (relative units, per category) are billed for every exam ordered,
performed or not (ordering is what costs), never for an unknown, refused or repeated name.
"""

from __future__ import annotations

import json
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from rapidfuzz import fuzz

from clinical_rl.data.knowledge_base import load_knowledge_base
from clinical_rl.envs.chain_cases import ChainCase, Exam
from clinical_rl.envs.exams import CATEGORIES, FUZZY_THRESHOLD, Category, literal_pattern, load_vocabulary
from clinical_rl.rewards.answer_format import normalize_answer

TOOL_NAME = "order_examinations"
TOOL_SCHEMA = {
    "type": "function",
    "function": {
        "name": TOOL_NAME,
        "description": "Order examinations (physical examination, laboratory tests, imaging, procedures) for the "
                       "patient; their results are returned in the next message.",
        "parameters": {
            "type": "object",
            "properties": {"examinations": {"type": "array", "items": {"type": "string"},
                                            "description": "names of the examinations, e.g. \"chest X-ray\""}},
            "required": ["examinations"],
        },
    },
}
_TEXT = {
    "en": {
        "instructions": (
            "Before giving a diagnosis you may order examinations; their results come back in the next message. "
            "To order, write <request>exam A; exam B</request> (names separated by \";\", at most {k} per request) "
            "or call the {tool} tool. The physical examination is free; laboratory tests, imaging and invasive "
            "procedures cost more, so order what you need. You have {n} replies in all. When you are ready, reason "
            "step by step inside <think> </think>, then give the final diagnosis on one line after the think block "
            "as 'Diagnosis: <name>', with no request."),
        "results": "Examination results:", "sep": ": ", "not_performed": "not performed or not available",
        "unknown": "unknown examination", "repeated": " (already reported)",
        "refused": "refused: only examinations can be ordered; the diagnosis is yours to make",
        "more": "You may order more examinations or give your final diagnosis.",
        "last": "Your next reply is the last one: give your final diagnosis.",
        "unreadable": "Your request could not be read: {why}. Write <request>exam A; exam B</request> or "
                      "<tool_call>{{\"name\": \"order_examinations\", \"arguments\": {{\"examinations\": "
                      "[\"exam A\", \"exam B\"]}}}}</tool_call>.",
        "unclosed_request": "<request> has no closing </request>",
        "unclosed_tool": "<tool_call> has no closing </tool_call>",
        "bad_json": "the tool call is not valid JSON",
        "bad_call": "the tool call must name order_examinations with arguments {{\"examinations\": [names]}}",
        "empty": "it names no examination",
        "too_many": "it names {n} examinations, more than the {k} allowed per request",
    },
    "zh": {
        "instructions": (
            "在给出诊断之前，你可以申请检查，检查结果会在下一条消息中返回。申请方式：<request>检查A; 检查B</request>"
            "（多个检查用“;”分隔，每次最多{k}项），或调用 {tool} 工具。体格检查免费；实验室检查、影像学检查和有创操作"
            "费用更高，请按需申请。你总共有{n}次回复机会。准备好后，请先在 <think> </think> 中逐步推理，然后在思考块之后"
            "用一行给出最终诊断，格式为“诊断：<名称>”，且不再申请检查。"),
        "results": "检查结果：", "sep": "：", "not_performed": "未做该项检查或无结果",
        "unknown": "无法识别的检查项目", "repeated": "（已报告过）",
        "refused": "不予提供：只能申请检查，诊断需由你自己作出",
        "more": "你可以继续申请检查，或给出最终诊断。",
        "last": "下一次回复是最后一次，请给出最终诊断。",
        "unreadable": "无法识别你的检查申请：{why}。请写 <request>检查A; 检查B</request> 或 "
                      "<tool_call>{{\"name\": \"order_examinations\", \"arguments\": {{\"examinations\": "
                      "[\"检查A\", \"检查B\"]}}}}</tool_call>。",
        "unclosed_request": "<request> 缺少结束标签 </request>",
        "unclosed_tool": "<tool_call> 缺少结束标签 </tool_call>",
        "bad_json": "工具调用不是合法的 JSON",
        "bad_call": "工具调用必须为 order_examinations，参数为 {{\"examinations\": [检查名称]}}",
        "empty": "没有写明任何检查",
        "too_many": "申请了{n}项检查，超过每次最多{k}项的限制",
    },
}
_THINK_CLOSE = re.compile(r"</think>", re.IGNORECASE)
_REQUEST = re.compile(r"<request>(.*?)</request>", re.IGNORECASE | re.DOTALL)
_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.IGNORECASE | re.DOTALL)
_SPLIT = re.compile(r"[;；\n]")
# A request for the answer rather than an examination ("diagnosis", "final answer", 诊断 but not 诊断性治疗).
_ASKS_DIAGNOSIS = re.compile(r"\bdiagnos[ie]s\b|\banswer\b|诊断(?!性)|答案|什么病", re.IGNORECASE)


class DiagnosticChainConfig(BaseModel):
    """The environment's rules and prices."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: Literal["diagnostic_chain"] = Field("diagnostic_chain", description="which environment")
    max_turns: int = Field(4, ge=1, description="model replies per episode; the last one is final whatever it is")
    costs: dict[Category, float] = Field(
        default_factory=lambda: {"physical": 0.0, "lab": 1.0, "imaging": 3.0, "procedure": 5.0},
        description="cost of ordering one exam, per category, in relative units (a basic blood test = 1)")
    invasiveness: dict[Category, int] = Field(
        default_factory=lambda: {"physical": 0, "lab": 1, "imaging": 1, "procedure": 3},
        description="0 none, 1 minimal (venepuncture, radiation), 2 moderate, 3 invasive, per category")
    cost_penalty: float = Field(0.01, ge=0, description="reward subtracted per unit of cost ordered")
    no_exam_penalty: float = Field(0.0, ge=0, description="reward subtracted when the episode ordered nothing")
    max_exams_per_turn: int = Field(8, ge=1, description="examinations one request may name")

    @model_validator(mode="after")
    def _every_category(self) -> DiagnosticChainConfig:
        for field in ("costs", "invasiveness"):
            table = getattr(self, field)
            if set(table) != set(CATEGORIES):
                raise ValueError(f"{field} must give every category {list(CATEGORIES)}, got {sorted(table)}")
            if any(value < 0 or (field == "invasiveness" and value > 3) for value in table.values()):
                raise ValueError(f"{field} values must be >= 0 (invasiveness 0-3), got {table}")
        return self


def parse_request(reply: str, max_exams: int) -> tuple[list[str] | None, str | None]:
    """(requested names, None), (None, error key with its format fields as "key|n") or (None, None) when the reply
    holds no request. Only the text after the last `</think>` is read."""
    closes = list(_THINK_CLOSE.finditer(reply))
    text = reply[closes[-1].end():] if closes else reply
    lowered = text.lower()
    if "<request>" not in lowered and "<tool_call>" not in lowered:
        return None, None
    names: list[str] = []
    if "<request>" in lowered:
        if lowered.count("<request>") > len(_REQUEST.findall(text)):
            return None, "unclosed_request"
        names += [n for body in _REQUEST.findall(text) for n in _SPLIT.split(body)]
    if "<tool_call>" in lowered:
        if lowered.count("<tool_call>") > len(_TOOL_CALL.findall(text)):
            return None, "unclosed_tool"
        for body in _TOOL_CALL.findall(text):
            called, error = _tool_call_names(body)
            if error:
                return None, error
            names += called
    names = [n.strip().strip("\"'“”") for n in names if n.strip()]
    if not names:
        return None, "empty"
    if len(names) > max_exams:
        return None, f"too_many|{len(names)}"
    return names, None


def _tool_call_names(body: str) -> tuple[list[str], str | None]:
    """The examination names of one tool call's JSON, or the error key."""
    try:
        call = json.loads(body)
        arguments = call.get("arguments") if isinstance(call, dict) else None
        if isinstance(arguments, str):  # some templates send the arguments as a JSON string
            arguments = json.loads(arguments)
    except json.JSONDecodeError:
        return [], "bad_json"
    exams = arguments.get("examinations") if isinstance(arguments, dict) else None
    if call.get("name") != TOOL_NAME or not isinstance(exams, list) or not all(isinstance(e, str) for e in exams):
        return [], "bad_call"
    return exams, None


def withheld_names(case: ChainCase) -> list[str]:
    """Names an observation must never show: the gold answer and, when it is a knowledge-base disease, every name
    and synonym of it in the case's language; longest first so a longer name is withheld whole."""
    key = normalize_answer(case.answer)
    names = {case.answer}
    for disease in load_knowledge_base():
        forms = disease.names(case.language)
        if key in {normalize_answer(f) for f in forms}:
            names.update(forms)
    return sorted(names, key=len, reverse=True)


class Episode:
    """One case's conversation state: turns, what was ordered and what it cost."""

    def __init__(self, case: ChainCase, config: DiagnosticChainConfig | None = None) -> None:
        self.case = case
        self.config = config or DiagnosticChainConfig()
        self.text = _TEXT[case.language]
        self.turns = 0
        self.counts = dict.fromkeys(
            ("requests", "exams_ordered", "info_requests", "not_performed", "unknown", "repeated", "refused",
             "malformed_turns"), 0)
        self.cost = 0.0
        self.max_invasiveness = 0
        self.served: set[int] = set()  # indices of record entries already reported
        self.ordered: set[str] = set()  # exam ids (or record names) already ordered
        self.ended_by = ""  # "answered" or "max_turns" once over
        self.final_reply: str | None = None
        self.withheld = withheld_names(case)  # once per episode: it scans the knowledge base

    @property
    def done(self) -> bool:
        return self.final_reply is not None

    def first_message(self) -> str:
        """The first user turn: the presentation, then how to order examinations and how to answer."""
        cfg = self.config
        rules = self.text["instructions"].format(k=cfg.max_exams_per_turn, tool=TOOL_NAME, n=cfg.max_turns)
        return f"{self.case.question}\n\n{rules}"

    def step(self, reply: str) -> str | None:
        """Take the model's reply of this turn; the observation (next user turn), or None when the episode is over
        (`final_reply` is then the reply to score).

        Raises:
            RuntimeError: the episode is already over.
        """
        if self.done:
            raise RuntimeError(f"episode of case {self.case.id!r} is over; start a new Episode")
        self.turns += 1
        names, error = parse_request(reply, self.config.max_exams_per_turn)
        if error is not None:
            self.counts["malformed_turns"] += 1
        if self.turns >= self.config.max_turns or (names is None and error is None):
            self.final_reply = reply
            self.ended_by = "answered" if names is None and error is None else "max_turns"
            return None
        if error is not None:
            key, _, n = error.partition("|")
            why = self.text[key].format(n=n, k=self.config.max_exams_per_turn)
            return self._withhold(f"{self.text['unreadable'].format(why=why)}\n{self._footer()}")
        lines = [self._answer(name) for name in names]
        return self._withhold("\n".join([self.text["results"], *lines, self._footer()]))

    def _footer(self) -> str:
        return self.text["last" if self.turns + 1 >= self.config.max_turns else "more"]

    def _answer(self, name: str) -> str:
        """One observation line for one requested name; updates the counts and the cost."""
        text, sep = self.text, self.text["sep"]
        self.counts["requests"] += 1
        if _ASKS_DIAGNOSIS.search(name):
            self.counts["refused"] += 1
            return f"{name}{sep}{text['refused']}"
        vocabulary = load_vocabulary()
        exam_id = vocabulary.match_name(name)
        entries = self._entries_for(exam_id) if exam_id else []
        if not entries:
            entries = self._entries_named(name)
        if not entries and exam_id is None:
            self.counts["unknown"] += 1
            return f"{name}{sep}{text['unknown']}"
        key = exam_id or self.case.exams[entries[0]].exam_id  # one key per exam, however it was named
        if key in self.ordered or (entries and all(i in self.served for i in entries)):
            self.counts["repeated"] += 1
            return "\n".join(f"{self._entry_line(i)}{text['repeated']}" for i in entries) or \
                f"{vocabulary.name(exam_id, self.case.language)}{sep}{text['not_performed']}{text['repeated']}"
        self.ordered.add(key)
        self.counts["exams_ordered"] += 1
        if not entries:
            self.counts["not_performed"] += 1
            self._bill([vocabulary.by_id[exam_id].category])
            return f"{vocabulary.name(exam_id, self.case.language)}{sep}{text['not_performed']}"
        self.counts["info_requests"] += 1
        new = [i for i in entries if i not in self.served]
        self.served.update(new)
        self._bill([self.case.exams[i].category for i in new])
        return "\n".join(self._entry_line(i) for i in entries)

    def _entry_line(self, index: int) -> str:
        exam = self.case.exams[index]
        return f"{exam.name}{self.text['sep']}{exam.result}"

    def _bill(self, categories: list[Category]) -> None:
        for category in categories:
            self.cost += self.config.costs[category]
            self.max_invasiveness = max(self.max_invasiveness, self.config.invasiveness[category])

    def _entries_for(self, exam_id: str) -> list[int]:
        """Record entries that answer `exam_id`: the exam itself, else the narrower exams under it (all CTs for
        "CT"), else the nearest broader exam the record has (the record's "CT" for "CT head")."""
        vocabulary = load_vocabulary()
        exams: tuple[Exam, ...] = self.case.exams
        exact = [i for i, e in enumerate(exams) if e.exam_id == exam_id]
        if exact:
            return exact
        narrower = [i for i, e in enumerate(exams)
                    if e.exam_id in vocabulary.by_id and exam_id in vocabulary.ancestors(e.exam_id)]
        if narrower:
            return narrower
        for broader in vocabulary.ancestors(exam_id):
            found = [i for i, e in enumerate(exams) if e.exam_id == broader]
            if found:
                return found
        return []

    def _entries_named(self, name: str) -> list[int]:
        """Record entries whose own name is the requested one (tests the vocabulary lacks), exactly or fuzzily."""
        key = normalize_answer(name)
        keys = [normalize_answer(e.name) for e in self.case.exams]
        exact = [i for i, k in enumerate(keys) if k == key]
        return exact or [i for i, k in enumerate(keys) if fuzz.token_sort_ratio(k, key) >= FUZZY_THRESHOLD]

    def _withhold(self, text: str) -> str:
        """`text` with the gold diagnosis and its synonyms replaced, should a record ever spell them out."""
        for name in self.withheld:
            text = literal_pattern(name).sub("[withheld]", text)
        return text

    def summary(self) -> dict[str, float | str]:
        """What the episode did, for `RewardInput.episode` (numbers are counts, cost in the config's units)."""
        useless = self.counts["not_performed"] + self.counts["unknown"] + self.counts["repeated"] \
            + self.counts["refused"]
        return {
            "case_id": self.case.id, "turns": float(self.turns),
            **{k: float(v) for k, v in self.counts.items()}, "useless_requests": float(useless),
            "cost": self.cost, "max_invasiveness": float(self.max_invasiveness),
            "cost_penalty": self.config.cost_penalty, "no_exam_penalty": self.config.no_exam_penalty,
            "ended_by": self.ended_by, "final_reply": self.final_reply or "",
        }
