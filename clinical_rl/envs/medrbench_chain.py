"""MedR-Bench diagnosis cases as chain cases: the `case_summary` markdown split into the presentation and the record.

The summary is a bullet list of sections (`- **Name:** text`, with or without bold, sometimes without the bullet),
some with indented sub-bullets. Rules:
- Presentation: Patient Information, Chief Complaint, History of Present Illness, Past Medical / Personal / Family
  History, each as "Name: text" (its sub-bullets joined with "; "), plus "Case N:" markers of multi-patient reports.
- Record: the Physical Examination section as one `physical_exam`, and each first-level sub-bullet of Ancillary
  Tests as one exam. A named bullet ("CT Scan: ...") is matched to the vocabulary by its name; an unnamed one
  ("Routine ultrasound revealed ...") by the exam its sentence reports. Named bullets nested under a group
  ("Imaging:" > "ECG: ...") are exams of their own; unnamed nested lines belong to their parent bullet; bullets
  under a "Case N" group keep that label in front of their result. A test the vocabulary lacks keeps its own
  name, id "other:<slug>", category imaging when its name says so (scan, MRI, ...) and lab otherwise.
- Everything else is dropped: a preamble before the first section (it may name the diagnosis), and sections after
  the tests such as Treatment, Follow-up or Outcomes (they give the diagnosis away by what was done).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from clinical_rl.data.public_datasets import MEDRBENCH_INSTRUCTION, load_medrbench
from clinical_rl.envs.chain_cases import ChainCase, Exam
from clinical_rl.envs.exams import Category, Vocabulary, load_vocabulary

PRESENTATION = ("patient information", "chief complaint", "history of present illness", "past medical history",
                "personal history", "family history")
PHYSICAL, ANCILLARY = "physical examination", "ancillary tests"
_LINE = re.compile(r"^(?P<indent>\s*)(?P<marker>[-*•]\s+|\d+[.)]\s+|#+\s*)?(?P<body>.*?)\s*$")
_NAMED = re.compile(r"^\*{0,2}(?P<name>[^:：*]{1,80}?)\*{0,2}\s*[:：]\s*\*{0,2}\s*(?P<text>.*)$")
# Sections after the tests that tell what was done, not what was found: dropped.
_AFTER = re.compile(r"treatment|follow|outcome|prognos|course|management|discharge|therapy", re.IGNORECASE)
_CASE_LABEL = re.compile(r"^case\s+\d+$", re.IGNORECASE)
_IMAGING_WORDS = re.compile(r"scan|\bCT|MRI|MR\b|x-?ray|radiograph|ultraso|sonograph|echo|imaging|angiogra|PET|"
                            r"scintigra|DSA|mammogra|tomograph|fluoroscop", re.IGNORECASE)


@dataclasses.dataclass
class _Node:
    """One bullet line: its indentation, its name before the colon (None when unnamed) and its text."""

    indent: int
    name: str | None
    text: str
    children: list[_Node] = dataclasses.field(default_factory=list)


def _parse_line(line: str) -> _Node | None:
    match = _LINE.match(line)
    body = match.group("body").strip() if match else ""
    if not body or set(body) <= set("-*_#"):
        return None
    named = _NAMED.match(body)
    if named and not re.search(r"\d", named.group("name")[:1]):
        return _Node(len(match.group("indent")), named.group("name").strip(), named.group("text").strip(" *"))
    return _Node(len(match.group("indent")), None, body.strip(" *"))


def split_sections(summary: str) -> list[tuple[str, _Node]]:
    """(lower-cased section name, its node with its sub-bullets as children) for every top-level section."""
    sections: list[tuple[str, _Node]] = []
    stack: list[_Node] = []
    for line in summary.split("\n"):
        node = _parse_line(line)
        if node is None:
            continue
        if node.indent == 0 and node.name is not None and _is_header(node.name, sections):
            sections.append((node.name.lower(), node))
            stack = [node]
            continue
        if node.indent == 0 and stack:  # a test written flush left under an unbulleted "Ancillary Tests:"
            node.indent = 1
        while stack and stack[-1].indent >= node.indent and len(stack) > 1:
            stack.pop()
        if stack:  # indented lines (or unnamed top-level lines of a numbered list) belong to the open section
            stack[-1].children.append(node)
            stack.append(node)
    return sections


def _is_header(name: str, sections: list[tuple[str, _Node]]) -> bool:
    """A flush-left named line opens a section unless it follows Ancillary Tests and is not a known section."""
    known = name.lower() in (*PRESENTATION, PHYSICAL, ANCILLARY) or _CASE_LABEL.match(name) or _AFTER.search(name)
    return bool(known) or not sections or sections[-1][0] != ANCILLARY


def _flat(node: _Node) -> str:
    """A node's text followed by all its descendants', joined with "; "."""
    parts = [node.text] if node.text else []
    for child in node.children:
        child_text = _flat(child)
        parts.append(f"{child.name}: {child_text}" if child.name else child_text)
    return "; ".join(p for p in parts if p)


def _test_items(node: _Node, prefix: str = "") -> list[tuple[str | None, str]]:
    """(name or None, result) of each test under an Ancillary Tests bullet (see the module docstring)."""
    if node.name and _CASE_LABEL.match(node.name):
        items = [(None, f"{node.name}: {node.text}")] if node.text else []
        return items + [it for child in node.children for it in _test_items(child, f"{node.name}: ")]
    named = [c for c in node.children if c.name]
    own = [node.text] + [_flat(c) for c in node.children if not c.name]
    text = "; ".join(t for t in own if t)
    items = [(node.name, prefix + text)] if text else []
    for child in named:
        items += _test_items(child, prefix)
    return items


def _exam(name: str | None, result: str, vocabulary: Vocabulary) -> Exam:
    """A record entry: the vocabulary exam the name (or, unnamed, the sentence) names, else the test's own name."""
    exam_id = vocabulary.match_name(name) if name else vocabulary.recognise(result)
    if exam_id is not None:
        return Exam(exam_id, name or vocabulary.name(exam_id, "en"), vocabulary.by_id[exam_id].category, result)
    label = name or "other findings"
    category: Category = "imaging" if _IMAGING_WORDS.search(label) else "lab"
    slug = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_") or "test"
    return Exam(f"other:{slug}", label, category, result)


def chain_case_from_summary(case_id: str, summary: str, answer: str,
                            vocabulary: Vocabulary | None = None) -> ChainCase:
    """The chain case of one MedR-Bench `case_summary`.

    Raises:
        ValueError: no presentation section or no examination (naming `case_id`).
    """
    vocabulary = vocabulary or load_vocabulary()
    presentation: list[str] = []
    exams: list[Exam] = []
    patient = ""  # "Case 2: " in a report of several patients, so each result says whose it is
    for name, node in split_sections(summary):
        if _CASE_LABEL.match(name):
            presentation.append(f"{node.name}:")
            patient = f"{node.name}: "
        elif name in PRESENTATION:
            presentation.append(f"{node.name}: {_flat(node)}")
        elif name == PHYSICAL and _flat(node):
            exams.append(Exam("physical_exam", node.name or "Physical Examination", "physical",
                              patient + _flat(node)))
        elif name == ANCILLARY:
            items = ([(None, node.text)] if node.text else []) + [
                item for child in node.children for item in _test_items(child, patient)]
            exams += [_exam(test, result, vocabulary) for test, result in items if result]
    if not any(":" in line and not line.endswith(":") for line in presentation) or not exams:
        raise ValueError(f"MedR-Bench case {case_id}: the summary has no presentation or no examination")
    return ChainCase(question="\n".join(presentation), answer=answer, id=case_id, source="medrbench-chain",
                     exams=tuple(exams))


def load_medrbench_chain(file: str | Path) -> list[ChainCase]:
    """Every case of the MedR-Bench diagnosis file (`load_medrbench` reads it and names bad records) as a chain case.

    Raises:
        CaseFormatError: as `load_medrbench`. ValueError: a summary without presentation or examinations.
    """
    return [chain_case_from_summary(case.id, case.question.removesuffix(MEDRBENCH_INSTRUCTION).rstrip(), case.answer)
            for case in load_medrbench(Path(file))]
