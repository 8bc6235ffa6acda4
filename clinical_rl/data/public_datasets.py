"""Loaders of the shared datasets (../shared/data): HuatuoGPT-o1 (open-ended and multiple choice), MedQA-USMLE,
MedR-Bench and CMB-Clin, each from its own fixed layout -> `list[Case]`.

CMB-Clin is the only one that skips records, by the documented rule in `load_cmb_clin`; the skips are logged.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections import Counter
from pathlib import Path

from clinical_rl.data.cases import Case
from clinical_rl.data.rows import CaseFormatError, get_field, json_records, jsonl_records, make_case, row_to_case

log = logging.getLogger(__name__)

MEDRBENCH_INSTRUCTION = "Based on the case above, what is the final diagnosis?"


def load_huatuo_o1(file: Path) -> list[Case]:
    """HuatuoGPT-o1 demo data, open-ended (the RL format): `Open-ended Verifiable Question` -> `Ground-True Answer`."""
    columns = {"question": "Open-ended Verifiable Question", "answer": "Ground-True Answer"}
    return [row_to_case(row, where, columns, f"{file.stem}-{i}", "en", "huatuo_o1")
            for i, (where, _, row) in enumerate(json_records(file))]


def load_huatuo_o1_mcq(file: Path) -> list[Case]:
    """HuatuoGPT-o1 demo data as multiple choice: `question`, `options`, `answer_idx`, `answer` (the option text)."""
    columns = {"question": "question", "answer": "answer", "options": "options", "answer_letter": "answer_idx"}
    return [row_to_case(row, where, columns, f"{file.stem}-{i}", "en", "huatuo_o1", mcq=True)
            for i, (where, _, row) in enumerate(json_records(file))]


def load_medqa(file: Path) -> list[Case]:
    """MedQA-USMLE (medagents JSONL): `question`, `options` {A..D}, `answer_idx`, `answer`; id is `realidx`."""
    columns = {"question": "question", "answer": "answer", "options": "options", "answer_letter": "answer_idx",
               "id": "realidx"}
    return [row_to_case(row, where, columns, f"{file.stem}-{i}", "en", "medqa", mcq=True)
            for i, (where, row) in enumerate(jsonl_records(file))]


def load_medrbench(file: Path) -> list[Case]:
    """MedR-Bench diagnosis (a dict keyed by PMC id): `generate_case.case_summary` plus an instruction line ->
    `generate_case.diagnosis_results`; id is the PMC id. `body_category` is not used: the department stays unknown
    (no ICD-10 code), i.e. `other`."""
    columns = {"question": ("generate_case", "case_summary"), "answer": ("generate_case", "diagnosis_results")}
    cases = []
    for where, key, row in json_records(file, top="object"):
        case = row_to_case(row, where, columns, key, "en", "medrbench")
        cases.append(dataclasses.replace(case, question=f"{case.question.rstrip()}\n\n{MEDRBENCH_INSTRUCTION}"))
    return cases


_DIAGNOSIS_LINE = re.compile(r"^(?:[（(]\s*\d+\s*[）)]\s*)?(?:最可能的|初步)?诊断为?\s*(?:[:：]\s*(.*))?$")
_WORKUP = ("明确诊断", "协助诊断", "诊断方法", "如何诊断", "诊断标准", "对诊断")  # questions about work-up, not the disease


def load_cmb_clin(file: Path) -> list[Case]:
    """CMB-Clin (Chinese surgical cases): one case per record that has a diagnosis question.

    The rule, applied to each record:
    1. A QA pair asks for the diagnosis when the first line of its question contains 诊断 outside 鉴别诊断
       (a question only about the differential does not count), contains none of the work-up phrases
       明确诊断 / 协助诊断 / 诊断方法 / 如何诊断 / 诊断标准 / 对诊断 ("which tests confirm the diagnosis"), and does
       not name the title's disease (a general-knowledge question such as 膀胱破裂如何诊断 gives the answer away).
    2. The first such QA pair is the diagnosis question; question = `description` + "\\n\\n" + its question text.
    3. answer: if the first non-empty line of that pair's answer is a diagnosis line -- 诊断：, 诊断为：, 初步诊断：,
       最可能的诊断：, optionally numbered like （1）诊断： or (1) 诊断： -- the text after the colon, with whitespace
       runs collapsed and trailing 。；; stripped; when there is no such line or nothing follows the colon, the
       disease in the title after 案例分析-.
    4. Records without a diagnosis question are skipped, and the counts per reason are logged.
    language zh, id = the record's `id`, source "cmb_clin".
    """
    cases, skipped = [], Counter()
    for where, _, row in json_records(file):
        if not isinstance(row, dict):
            raise CaseFormatError(f"{where}: expected a JSON object, found {type(row).__name__}")
        case_id = get_field(row, "id", where, (str, int))
        title = get_field(row, "title", where, str)
        description = get_field(row, "description", where, str)
        pairs = get_field(row, "QA_pairs", where, list)
        disease = title.rpartition("案例分析-")[2].strip() if "案例分析-" in title else None
        chosen, reason = None, "no QA question mentions 诊断"
        for j, pair in enumerate(pairs):
            if not isinstance(pair, dict):
                raise CaseFormatError(f"{where}: field 'QA_pairs[{j}]' must be an object, found {type(pair).__name__}")
            question = get_field(pair, "question", where, str, name=f"QA_pairs[{j}].question")
            get_field(pair, "answer", where, str, name=f"QA_pairs[{j}].answer")
            first = question.strip().split("\n")[0]
            if "诊断" not in first:
                continue
            if "诊断" not in first.replace("鉴别诊断", ""):
                reason = "only differential-diagnosis (鉴别诊断) questions" if reason.startswith("no") else reason
            elif any(w in first for w in _WORKUP) or (disease and disease in first):
                reason = "only work-up or general-knowledge diagnosis questions"
            else:
                chosen = pair
                break
        if chosen is None:
            skipped[reason] += 1
            continue
        answer = _diagnosis_from_answer(chosen["answer"]) or disease
        if not answer:
            raise CaseFormatError(f"{where}: field 'title' has no disease after 案例分析- and the diagnosis answer "
                                  "has no 诊断： line")
        text = f"{description.strip()}\n\n{chosen['question'].strip()}"
        cases.append(make_case(where, question=text, answer=answer, id=str(case_id), language="zh", source="cmb_clin"))
    if skipped:
        log.warning("%s: skipped %d of %d cases without a diagnosis question: %s", file, sum(skipped.values()),
                    sum(skipped.values()) + len(cases), "; ".join(f"{n} {r}" for r, n in skipped.items()))
    return cases


def _diagnosis_from_answer(answer: str) -> str | None:
    first = next((line.strip() for line in answer.split("\n") if line.strip()), "")
    match = _DIAGNOSIS_LINE.match(first)
    if not match or not match.group(1):
        return None
    text = re.sub(r"\s+", " ", match.group(1)).strip().rstrip("。；;. ")
    return text or None
