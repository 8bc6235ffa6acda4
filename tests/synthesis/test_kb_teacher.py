"""The knowledge-base teacher: grounded rows for every built-in case, scored correct by the reward it trains for."""

import json
import re

import pytest

from clinical_rl.config_files import load_config
from clinical_rl.data.cases import Case
from clinical_rl.data.knowledge_base import disease_by_id
from clinical_rl.data.loaders import load_cases
from clinical_rl.rewards.base import RewardInput
from clinical_rl.rewards.clinical import ClinicalReward
from clinical_rl.sft.dataset import SFTRow, target_text
from clinical_rl.synthesis.filters import FilterConfig, check_row
from clinical_rl.synthesis.kb_teacher import SYNTHESIZER, differential, kb_coverage, stated_findings, teach_case
from clinical_rl.synthesis.runner import synthesize

BUILTIN = load_cases("builtin")


def test_every_builtin_case_gets_a_row_the_reward_scores_correct_and_the_filters_keep():
    rows = [(case, teach_case(case)) for case in BUILTIN]
    assert {result.status for _, result in rows} == {"done"}
    reward = ClinicalReward(on_undecided="incorrect")
    inputs = [RewardInput("", target_text(SFTRow(c.question, r.thinking, r.response)), c.answer, c) for c, r in rows]
    scores = reward.score(inputs)
    assert [s.reward for s in scores] == [1.0] * len(rows)
    assert all(check_row(r.thinking, r.response, FilterConfig()) is None for _, r in rows)


def test_thinking_is_grounded_in_the_case_and_names_the_diagnosis():
    for case in BUILTIN[:40]:
        result = teach_case(case)
        findings = result.lineage["findings"]
        assert findings and all(f in case.question for f in findings)
        lines = result.thinking.splitlines()
        assert len(lines) >= 3 and case.answer in lines[-1]
        assert findings[0].lower() in lines[0].lower()  # the most telling finding shown leads
        assert result.response.index(case.answer) < 40  # the diagnosis comes first
        assert result.lineage["synthesizer"] == SYNTHESIZER and result.guided


def test_a_borrowed_finding_names_the_disease_it_came_from_in_the_differential():
    asthma, copd = disease_by_id("asthma"), disease_by_id("chronic_obstructive_pulmonary_disease")
    borrowed = copd.symptoms[-1].en  # while COPD's "wheeze" inside asthma's first symptom is no finding of its own
    question = f"A 30-year-old woman has {asthma.symptoms[0].en}, {asthma.symptoms[1].en} and {borrowed}."
    case = Case(question, "Asthma", id="x", language="en")
    pool = (asthma, copd)
    rivals = differential(asthma, stated_findings(question, "en", pool), "en", pool)
    assert [(d.id, [t.en for t in f]) for d, f in rivals] == [("chronic_obstructive_pulmonary_disease", [borrowed])]
    thinking = teach_case(case, pool).thinking
    assert re.search(rf"Hmm, {re.escape(borrowed)} could suggest {copd.name.en}", thinking)


UNTAUGHT = [
    ("Appendicitis of the left toe", "Pain in the toe.",
     "the knowledge base has no entry for 'Appendicitis of the left toe'"),
    ("Asthma", "The patient feels unwell.", "the question states none of the knowledge base's findings of 'Asthma'"),
]


@pytest.mark.parametrize("answer, question, why", UNTAUGHT)
def test_cases_it_cannot_reason_about_fail_with_the_reason(answer, question, why):
    result = teach_case(Case(question, answer, id="x", language="en"))
    assert result.status == "failed" and result.thinking is None
    [error] = result.lineage["errors"]
    assert error.startswith(why)


def test_coverage_counts_the_cases_the_teacher_writes_rows_for_and_says_why_not_for_others():
    # Seen: a run on a user's file whose diagnoses the knowledge base lacks stored nothing and exited 1 with 0 rows
    users = [Case(q, a, id=f"u{i}", language="en") for i, (a, q, _) in enumerate(UNTAUGHT)]
    cases = [*BUILTIN[:10], *users, Case("Pain in the other toe.", UNTAUGHT[0][0], id="u2", language="en")]
    taught, examples = kb_coverage(cases)
    assert taught == sum(teach_case(c).status == "done" for c in cases) == 10
    assert [e.split(": ", 1)[0] for e in examples] == ["case 'u0'", "case 'u1'"]  # one example per reference
    assert all(why in e for (_, _, why), e in zip(UNTAUGHT, examples))
    assert kb_coverage(users, max_examples=1) == (0, [examples[0]])
    assert kb_coverage([]) == (0, [])


def test_coverage_agrees_with_teach_case_on_every_builtin_case_and_a_mixed_file():
    mixed = [Case(c.question, a, id=c.id, language=c.language)
             for c, a in zip(BUILTIN[:60], ["Pneumonia", "Gout", "肺炎", "Not a disease", "asthma"] * 12)]
    for cases in (BUILTIN, mixed):
        assert kb_coverage(cases, max_examples=0)[0] == sum(teach_case(c).status == "done" for c in cases)


def test_builtin_language_generates_vignettes_in_that_language_only():
    english = load_cases("builtin", language="en")
    assert len(english) == len(BUILTIN) // 2 and {c.language for c in english} == {"en"}
    assert not any(re.search(r"[\u4e00-\u9fff]", c.question) for c in english)


def test_synthesize_with_the_teacher_writes_and_resumes_the_store(tmp_path):
    cfg = load_config(None, [f"output_dir={tmp_path}", "synthesis.teacher=knowledge_base", "synthesis.limit=6",
                             "synthesis.language=en"])
    first = synthesize(cfg)
    assert (first.done, first.failed, first.errors) == (6, 0, 0)
    records = [json.loads(line) for line in (tmp_path / "synthesis.jsonl").read_text().splitlines()]
    assert [r["state"] for r in records] == ["done"] * 6
    assert {r["lineage"]["synthesizer"] for r in records} == {SYNTHESIZER}
    assert synthesize(cfg).skipped == 6
