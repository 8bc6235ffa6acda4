"""Think-before-answer formats: split a response into its reasoning and its final answer, and say what is missing.

The one parser of final answers: the reward, evaluation and synthesis all read answers through it, so a policy is
paid for exactly what evaluation measures. Two formats are understood: `<think>...</think>` followed by the answer
(ClinicalGPT-R1, DeepSeek-R1 style) and HuatuoGPT-o1's `## Thinking` / `## Final Response` headers; `auto` tries
both. Rules, each closing a way to read the wrong text as the answer:

- The answer is read only after the LAST closed reasoning block: a conclusion inside the reasoning is never read,
  however many blocks there are. A `<think>` reopened after the last `</think>` means the answer was cut off.
- `think_opened=True` says the chat template already wrote the opening `<think>` (R1-distill, Qwen3-thinking
  templates end their generation prompt with it), so the response starts inside the reasoning block. Detect it
  with `clinical_rl.data.prompts.template_opens_think` (tokenizer) or `prompt_opens_think` (rendered prompt).
- Explicit final labels ("Final diagnosis", "final answer", "the answer is", 最终诊断, 最终答案, `\\boxed{}`) win over
  generic ones ("Diagnosis:", 诊断：), a label heading its line over the same words in prose; among equals the
  LAST one wins (the final answer is the last conclusion). Differential-diagnosis lines (鉴别诊断) are never read.
- A label alone on its line takes the next line; LaTeX / markdown wrappers and trailing punctuation are removed.
- When no answer is found, `ParsedResponse.reason` says why, for logs and reward details.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

AnswerFormat = Literal["think", "huatuo", "auto"]
Missing = Literal["", "thinking", "answer", "both"]

# Why a part is missing: stable strings, shown in reward details (`missing_reason`) and tested.
EMPTY_RESPONSE = "empty response"
NO_REASONING = "no reasoning block before the answer"
REASONING_NOT_FIRST = "text before <think>: the reasoning must come first"
STRAY_CLOSE = "</think> without an opening <think> (if the chat template opens it, pass think_opened)"
EMPTY_REASONING = "empty reasoning block"
NOT_CLOSED = "no closing </think>"
REOPENED = "<think> reopened after the last </think> and never closed"
NOTHING_AFTER = "nothing after </think>"
NO_THINKING_HEADER = "no ## Thinking header before the answer"
EMPTY_THINKING_SECTION = "empty Thinking section"
NO_FINAL_HEADER = "no Final Response header"
NOTHING_AFTER_HEADER = "nothing after the Final Response header"
LABEL_ONLY = "only a label with no answer"
ONLY_DIFFERENTIAL = "only a differential diagnosis, no final answer"

_OPEN = re.compile(r"<think>", re.IGNORECASE)
_CLOSE = re.compile(r"</think>", re.IGNORECASE)
_TAGS = re.compile(r"</?think>", re.IGNORECASE)
_OPEN_AT_START = re.compile(r"\s*<think>", re.IGNORECASE)
_OPENS_AT_END = re.compile(r"<think>\s*$", re.IGNORECASE)


def _header(names: str) -> re.Pattern[str]:
    """A HuatuoGPT-o1 section header at a line start: `## Name`, `**Name**`, with trailing `:` / `.` inside or
    outside the bold, or the bare name alone on its line. What follows it on the same line belongs to the section."""
    bold = r"(?:\*\*|__)"
    marked = rf"(?:#{{1,6}}[ \t]*{bold}?|{bold})[ \t]*(?:{names})[ \t]*{bold}?[ \t]*[:：.。]?[ \t]*{bold}?"
    bare = rf"(?:{names})[ \t]*[:：]?[ \t]*(?=\n|$)"
    return re.compile(rf"^[ \t]*(?:{marked}|{bare})", re.IGNORECASE | re.MULTILINE)


_THINKING_HEADER = _header(r"thinking|思考过程|思考")
_FINAL_HEADER = _header(r"final[ \t]+response|最终回复|最终回答")

# Answer labels. `skip`: differential-diagnosis labels, never an answer. `final`: explicit final answers. `generic`:
# ordinary leads. English labels need a separator (":", "is", a spaced dash); Chinese ones "：", 是 or 为.
_EN_SEP = r"[ \t]*(?:[:：]|(?:is|was|would[ \t]+be)\b[ \t]*[:：]?|[-–—]+(?=[ \t]))"
_ZH_SEP = r"[ \t]*(?:[是为][ \t]*[:：]?|[:：])"
_SKIP_EN = r"differential(?:\s+diagnos[ie]s)?|differentials|ddx"
_SKIP_ZH = r"鉴别诊断"
_FINAL_EN = r"final\s+(?:diagnos[ie]s|answer|response|conclusion)|(?:the\s+)?(?:correct\s+|best\s+)?answer(?=\s+is\b)"
_FINAL_ZH = r"最终诊断|最后诊断|最终答案|最终回复|最终回答|正确答案|答案(?=[ \t]*[是为])"
_GENERIC_EN = r"(?:(?:most\s+)?(?:likely|probable)\s+|working\s+|primary\s+|principal\s+)?diagnosis|answer|conclusion"
_GENERIC_ZH = r"最可能的?诊断|初步诊断|临床诊断|诊断|答案|结论"
_LABEL = re.compile(
    rf"(?P<skip>\b(?:{_SKIP_EN})\b|{_SKIP_ZH})"
    rf"|(?P<final>\b(?:{_FINAL_EN})\b(?P<fsep>{_EN_SEP})|(?:{_FINAL_ZH})(?P<fzsep>{_ZH_SEP}))"
    rf"|(?P<generic>\b(?:{_GENERIC_EN})\b(?P<gsep>{_EN_SEP})|(?:{_GENERIC_ZH})(?P<gzsep>{_ZH_SEP}))",
    re.IGNORECASE,
)
# A label alone on its line ("**Final diagnosis:**", "## Diagnosis", "最终诊断"): the answer is on the next line.
_LABEL_LINE = re.compile(
    rf"(?:(?P<skip>{_SKIP_EN}|{_SKIP_ZH})|(?P<final>{_FINAL_EN}|{_FINAL_ZH})|(?P<generic>{_GENERIC_EN}|{_GENERIC_ZH}))"
    r"(?:\s+is|[ \t]*[是为])?[ \t]*[:：]?",
    re.IGNORECASE,
)
_BOXED = re.compile(r"\\(?:boxed|fbox|text|textbf|textit|mathrm|mathbf)\s*\{")
_DOLLARS = re.compile(r"\${1,2}([^$]*?)\${1,2}")
_BULLET = re.compile(r"^(?:[-•·+]|\d{1,2}[.)、])[ \t]+")
_QUOTES = {'"': '"', "“": "”", "'": "'", "‘": "’", "「": "」", "『": "』", "_": "_"}
# Ranks: explicit final label heading its line > final label in prose (or \boxed) > generic label heading its line >
# generic label in prose. "Diagnosis: X" then "The diagnosis is supported by ..." reads X, not the explanation.
_FINAL_HEAD, _FINAL_PROSE, _GENERIC_HEAD, _GENERIC_PROSE = 4, 3, 2, 1


@dataclass(frozen=True)
class ParsedResponse:
    thinking: str | None  # None when the reasoning block is missing, unclosed-and-empty or empty
    answer: str | None  # the final answer; None when none was found after the reasoning
    missing: Missing  # which part is missing ("" when both are there)
    fmt: str  # the format that matched: "think", "huatuo" or "none"
    reason: str = ""  # why a part is missing ("" when nothing is), e.g. "no closing </think>"
    response: str | None = None  # the final response as written (all text after the reasoning); None if cut off


def prompt_opens_think(prompt: str) -> bool:
    """Whether a rendered prompt ends inside an opened reasoning block (ends with `<think>`, maybe a newline).

    For callers that hold the prompt text but not the tokenizer (the HTTP reward server: OpenRLHF sends the
    decoded, templated prompt). A closed `<think></think>` (Qwen3 with thinking disabled) does not count.
    """
    return bool(_OPENS_AT_END.search(prompt))


def think_tag_counts(text: str) -> tuple[int, int]:
    """(number of `<think>`, number of `</think>`) in `text`, matched as the parser matches them (any case)."""
    return len(_OPEN.findall(text)), len(_CLOSE.findall(text))


def strip_think_tags(text: str) -> str:
    """`text` with its `<think>` / `</think>` tags removed (markup, not words: for text statistics)."""
    return _TAGS.sub(" ", text)


def parse_response(text: str, fmt: AnswerFormat = "think", *, think_opened: bool = False) -> ParsedResponse:
    """Reasoning and final answer of a response; an answer without reasoning first counts as missing thinking.

    `think_opened`: the chat template already opened `<think>`, so `text` starts inside the reasoning block
    (applies to the think format; `auto` then reads the think format).
    """
    if not text.strip():
        return ParsedResponse(None, None, "both", "none", EMPTY_RESPONSE)
    if fmt != "huatuo":
        opener = _OPEN_AT_START.match(text)  # with think_opened, a repeated opener is tolerated
        if opener or think_opened:
            return _parse_think(text[opener.end() :] if opener else text)
    if fmt != "think":
        body = text.lstrip()
        header = _THINKING_HEADER.match(body)
        if header:
            return _parse_huatuo(body, header.end())
    return _parse_unformatted(text, fmt)


def _parse_think(body: str) -> ParsedResponse:
    """`body` starts inside the reasoning block; the answer is what follows the last `</think>`."""
    closes = list(_CLOSE.finditer(body))
    if not closes:  # cut off while reasoning: nothing in the reasoning is an answer
        thinking = _thinking(body)
        return ParsedResponse(thinking, None, "answer" if thinking else "both", "think", NOT_CLOSED)
    last = closes[-1]
    thinking, tail = _thinking(body[: last.start()]), body[last.end() :]
    if _OPEN.search(tail):  # a new block began after the last close and never ended
        answer, why, response = None, REOPENED, None
    else:
        answer, why = _extract(tail)
        why, response = (NOTHING_AFTER if why == EMPTY_RESPONSE else why), tail.strip() or None
    return _result(thinking, answer, "think", EMPTY_REASONING, why, response)


def _parse_huatuo(body: str, start: int) -> ParsedResponse:
    """`body[start:]` follows the `## Thinking` header; the answer is what follows the last Final Response header."""
    finals = list(_FINAL_HEADER.finditer(body, start))
    if not finals:
        thinking = body[start:].strip() or None
        return ParsedResponse(thinking, None, "answer" if thinking else "both", "huatuo", NO_FINAL_HEADER)
    last = finals[-1]
    tail = body[last.end() :]
    answer, why = _extract(tail)
    why = NOTHING_AFTER_HEADER if why == EMPTY_RESPONSE else why
    return _result(body[start : last.start()].strip() or None, answer, "huatuo", EMPTY_THINKING_SECTION, why,
                   tail.strip() or None)


def _parse_unformatted(text: str, fmt: AnswerFormat) -> ParsedResponse:
    """No reasoning first: the thinking is missing whatever follows. An answer is still read for reports, and
    when a `</think>` occurs only from after it, so that nothing inside reasoning is ever read."""
    closes = list(_CLOSE.finditer(text)) if fmt != "huatuo" else []
    tail = text[closes[-1].end() :] if closes else text
    answer, _why = _extract(tail)
    if fmt == "huatuo":
        reason = NO_THINKING_HEADER
    else:
        reason = REASONING_NOT_FIRST if _OPEN.search(text) else STRAY_CLOSE if closes else NO_REASONING
    return ParsedResponse(None, answer, "thinking" if answer else "both", "none", reason, tail.strip() or None)


def _result(thinking: str | None, answer: str | None, fmt: str, no_thinking: str, no_answer: str,
            response: str | None) -> ParsedResponse:
    """A parse of a recognised format: what is missing, and each missing part's reason, joined by "; "."""
    missing: Missing = "both" if not thinking and not answer else "thinking" if not thinking else (
        "answer" if not answer else "")
    reasons = [no_thinking] if not thinking else []
    reasons += [no_answer] if not answer and no_answer else []
    return ParsedResponse(thinking, answer, missing, fmt, "; ".join(reasons), response)


def _thinking(text: str) -> str | None:
    """The reasoning text, None when it is empty once stray tags (`</think><think>`) are ignored."""
    return text.strip() if _TAGS.sub("", text).strip() else None


def extract_final_answer(text: str) -> str | None:
    """The final answer a response states (see the module docstring for the rules); None when there is none.

    Use on text that contains no reasoning (the part after `</think>`, a synthesis conclusion); for whole
    responses use `parse_response`, which cuts the reasoning off first.
    """
    return _extract(text)[0]


def _extract(text: str) -> tuple[str | None, str]:
    """(answer, why there is none). Every line is searched for labels; the best-ranked, last such answer wins;
    without any label the first line that is not part of a differential diagnosis is the answer."""
    lines = [_unmark(line) for line in unicodedata.normalize("NFKC", text).splitlines()]
    if not any(lines):
        return None, EMPTY_RESPONSE
    best: tuple[int, str] | None = None
    labelled = False
    for i, line in enumerate(lines):
        hit = _label_of(line) if line else None
        if hit is None:
            continue
        rank, rest = hit
        if rank == 0:  # a differential line
            continue
        labelled = True
        value = _clean(rest) if rest.strip() else _next_value(lines, i)
        if value and (best is None or rank >= best[0]):  # >=: the last of equals wins
            best = (rank, value)
    if best is not None:
        return best[1], ""
    if labelled:
        return None, LABEL_ONLY
    return _first_plain_line(lines)


def _label_of(line: str) -> tuple[int, str] | None:
    """(rank, text after the label) of the best label in `line`; rank 0 marks a differential line; None: no label.

    Within a line the first of the best-ranked labels counts; after a differential label only final labels do
    ("Differential diagnosis: A. Final diagnosis: B" reads B, "Differential: A; diagnosis: B" reads nothing).
    """
    alone = _LABEL_LINE.fullmatch(line)
    if alone:
        rank = 0 if alone["skip"] else _FINAL_HEAD if alone["final"] else _GENERIC_HEAD
        return rank, ""
    best: tuple[int, str] | None = None
    differential, differential_end = False, 0
    for m in _LABEL.finditer(line):
        if m["skip"]:
            differential, differential_end = True, m.end()
            continue
        sep = m["fsep"] or m["fzsep"] or m["gsep"] or m["gzsep"] or ""
        heading = m.start() == 0 and any(ch in sep for ch in ":-–—")
        if m["final"]:
            rank = _FINAL_HEAD if heading else _FINAL_PROSE
        elif differential:
            continue
        else:
            rank = _GENERIC_HEAD if heading else _GENERIC_PROSE
        if best is None or rank > best[0]:
            best = (rank, line[m.end() :])
    boxed = _boxed(line)
    if boxed is not None and (best is None or best[0] < _FINAL_PROSE):
        best = (_FINAL_PROSE, boxed)  # \boxed{} is the math convention for the final answer
    if best is None and differential:
        return 0, line[differential_end:]
    return best


def _next_value(lines: list[str], i: int) -> str | None:
    """The answer under a label that stands alone on line i: the next non-empty line, unless it is a label."""
    for j in range(i + 1, len(lines)):  # indices, not a slice: a slice per label line would cost n² on label floods
        if lines[j]:
            return None if _label_of(lines[j]) is not None else _clean(lines[j])
    return None


def _first_plain_line(lines: list[str]) -> tuple[str | None, str]:
    """Without labels, the first line, skipping differential lines and the lines under a differential header
    (up to the next blank line): "Differential diagnosis:" over a list of two names gives no answer."""
    under_differential = False
    for raw in lines:
        if not raw:
            under_differential = False  # a blank line ends the differential's list
            continue
        hit = _label_of(raw)  # only differential lines (rank 0) reach here with a label
        if hit is not None:
            under_differential = not _clean(hit[1])
            continue
        if under_differential:
            continue
        answer = _clean(raw)
        if answer:
            return answer, ""
    return None, ONLY_DIFFERENTIAL


def _unmark(line: str) -> str:
    """A line without markdown emphasis, code ticks, heading / quote markers and list bullets."""
    line = re.sub(r"\*+|`+|_{2,}", "", line).strip()
    line = re.sub(r"^(?:#{1,6}|>+)[ \t]*", "", line)
    return _BULLET.sub("", line).strip()


def _clean(value: str) -> str | None:
    """The answer without LaTeX (`$B$`, `\\boxed{B}`, `\\text{...}`) or quote wrappers and trailing punctuation.

    The value is kept whole otherwise: cutting it at a sentence end would let "A. Or possibly B." read as A.
    """
    previous = None
    for _ in range(4):  # wrappers nest a few deep at most; a bound keeps a flood of quotes from costing n²
        if value == previous:
            break
        previous = value
        value = _unbox(_DOLLARS.sub(r"\1", value)).strip()
        value = re.sub(r"^\\[(\[]\s*(.*?)\s*\\[)\]]$", r"\1", value)
        if len(value) >= 2 and _QUOTES.get(value[0]) == value[-1]:
            value = value[1:-1]
        value = value.strip().rstrip("。.;；,，!！:：").strip()
    return value.strip() or None


def _unbox(text: str) -> str:
    """`\\boxed{x}` / `\\text{x}` / ... replaced by x, braces balanced (`\\boxed{\\text{B}}` gives B). Each
    content is spaced off, so that `\\boxed{A}\\boxed{B}` reads "A B" (two candidates), never "AB"."""
    closing = _closing_braces(text)
    spaced = {}  # index -> (end of the span it replaces, by a space): command prefixes and their closing braces
    for m in _BOXED.finditer(text):
        spaced[m.start()] = m.end()
        if m.end() - 1 in closing:
            spaced[closing[m.end() - 1]] = closing[m.end() - 1] + 1
    out, i = [], 0
    for start in sorted(spaced):
        out += [text[i:start], " "]
        i = spaced[start]
    return " ".join("".join([*out, text[i:]]).split())


def _boxed(line: str) -> str | None:
    """The content of the one `\\boxed{...}` of a line; None when there is none, or several that differ: a
    policy that boxes every option must not have its last box read as the answer."""
    if "\\" not in line:
        return None
    closing, contents, outer_end = _closing_braces(line), set(), -1
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", line):
        if m.start() < outer_end:  # nested in the previous box: its content is already taken (and not copied twice)
            continue
        end = closing.get(m.end() - 1)
        if end is None:
            return None
        contents.add(line[m.end() : end].strip())
        outer_end = end
    return contents.pop() if len(contents) == 1 else None


def _closing_braces(text: str) -> dict[int, int]:
    """Index of each `{` -> index of the `}` that closes it (unclosed ones are left out), in one pass."""
    stack: list[int] = []
    pairs: dict[int, int] = {}
    for i, ch in enumerate(text):
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            pairs[stack.pop()] = i
    return pairs


def normalize_answer(text: str) -> str:
    """Case, width (NFKC), punctuation and whitespace folded, for comparing answers.

    Only punctuation goes; symbols stay, because they carry meaning in options such as '↑ ↓ normal'.
    """
    folded = unicodedata.normalize("NFKC", text).casefold()
    kept = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in folded)
    return " ".join(kept.split())
