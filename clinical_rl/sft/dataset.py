"""SFT rows -> token ids and labels: the policy's own prompt, then `<think>` thinking `</think>` response EOS.

The prompt is `case_messages` rendered with the generation prompt, exactly what the policy sees in RL, and is
tokenised on its own (as vLLM tokenises it before generating) and then joined with the separately tokenised
target. Labels are -100 on the prompt: the loss covers the thinking, the response and the EOS. When the chat
template already opens `<think>` in the generation prompt (R1-distill, Qwen3-thinking), the target starts with
the thinking itself, as the reward and evaluation expect (`think_opened`), instead of opening the block twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clinical_rl.data.cases import Case, Language
from clinical_rl.data.prompts import prompt_opens_think, render_prompt
from clinical_rl.data.rows import CaseFormatError, get_field, jsonl_records

log = logging.getLogger(__name__)

IGNORE = -100  # label of positions outside the loss (torch cross_entropy's default ignore_index)
_TEXT_FIELDS = ("question", "thinking", "response")


@dataclass(frozen=True)
class SFTRow:
    """One synthesised training example."""

    question: str
    thinking: str
    response: str
    language: Language = "en"


@dataclass(frozen=True)
class SFTSample:
    """One tokenised row: `labels[i]` is `input_ids[i]` on target tokens and IGNORE on the prompt."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False  # the end of the target was cut to fit max_len

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class LoadedRows:
    """Rows read from a file and how many synthesis records were skipped for not being `done`."""

    rows: list[SFTRow]
    not_done: int


@dataclass(frozen=True)
class EncodedRows:
    """Tokenised samples; `truncated` lost the end of their target, `dropped` had no room left for any target."""

    samples: list[SFTSample]
    truncated: int
    dropped: int


def target_text(row: SFTRow, think_opened: bool = False) -> str:
    """What the model learns to write after the prompt (the EOS token is appended as an id); with `think_opened`
    the prompt already ends in `<think>`, so the target starts inside the block."""
    opener = "" if think_opened else "<think>\n"
    return f"{opener}{row.thinking}\n</think>\n{row.response}"


def encode_row(tokenizer: Any, row: SFTRow, max_len: int, system_prompt: str | None = None) -> SFTSample:
    """Prompt + target ids, the target cut from its end so the sample has at most `max_len` tokens."""
    prompt = render_prompt(tokenizer, Case(row.question, "", language=row.language), system_prompt)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    # Read off the rendered prompt, as the RL driver does: the same template then means the same reading.
    target = target_text(row, think_opened=prompt_opens_think(prompt))
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    room = max(max_len - len(prompt_ids), 0)
    kept = target_ids[:room]
    return SFTSample(prompt_ids + kept, [IGNORE] * len(prompt_ids) + kept, truncated=len(target_ids) > room)


def encode_rows(tokenizer: Any, rows: list[SFTRow], max_len: int, system_prompt: str | None = None) -> EncodedRows:
    """`encode_row` over `rows`, counting (and logging) truncated rows and dropping rows with no target left."""
    samples, truncated, dropped = [], 0, 0
    for row in rows:
        sample = encode_row(tokenizer, row, max_len, system_prompt)
        if all(label == IGNORE for label in sample.labels):
            dropped += 1  # the prompt alone fills max_len: nothing to learn from
            continue
        truncated += sample.truncated
        samples.append(sample)
    if truncated or dropped:
        log.warning("SFT max_len=%d: %d of %d rows truncated at the end of the target, %d dropped (prompt too long)",
                    max_len, truncated, len(rows), dropped)
    return EncodedRows(samples, truncated, dropped)


def load_rows(path: str | Path) -> LoadedRows:
    """SFT rows from synthesis output (`{"id", "state", "row": {...}}` lines; only `done` kept) or plain JSONL.

    A bad line raises `CaseFormatError` (a ValueError) naming `file:line` and the field.
    """
    rows, not_done = [], 0
    for where, record in jsonl_records(Path(path)):
        if not isinstance(record, dict):
            raise CaseFormatError(f"{where}: expected a JSON object, found {type(record).__name__}")
        if "state" in record:
            if get_field(record, "state", where, str) != "done":
                not_done += 1
                continue
            record = get_field(record, "row", where, dict)
        rows.append(_row(record, where))
    if not_done:
        log.info("%s: skipped %d synthesis records that are not done", path, not_done)
    return LoadedRows(rows, not_done)


def _row(record: dict, where: str) -> SFTRow:
    """Validate the four SFT fields of one record."""
    texts = {name: get_field(record, name, where, str) for name in _TEXT_FIELDS}
    for name, value in texts.items():
        if not value.strip():
            raise CaseFormatError(f"{where}: field {name!r} is empty")
    language = get_field(record, "language", where, str)
    if language not in ("zh", "en"):
        raise CaseFormatError(f"{where}: field 'language' is {language!r}, not 'zh' or 'en'")
    return SFTRow(language=language, **texts)
