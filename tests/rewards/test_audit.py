"""Verifier audit: the pairs file format, the verdicts and rates, and `clinical-rl verifier-audit` end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from clinical_rl.config import RewardConfig
from clinical_rl.config_files import ConfigError, load_config
from clinical_rl.rewards.audit import AuditStats, audit_locally, classify, live_audit, load_pairs, run_audit
from clinical_rl.rewards.base import RewardInput, RewardResult
from clinical_rl.rewards.clinical import ClinicalReward

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "tests" / "rewards" / "data" / "audit_pairs.jsonl"
# Pairs whose verdicts do not depend on how the verifier treats synonyms or near misses.
STABLE = [
    {"reference": "Acute appendicitis", "prediction": "acute appendicitis", "label": True, "kind": "exact"},
    {"reference": "急性阑尾炎", "prediction": "急性阑尾炎", "label": True, "kind": "exact", "language": "zh"},
    {"reference": "Acute appendicitis", "prediction": "Migraine", "label": False, "kind": "unrelated"},
    {"reference": "急性阑尾炎", "prediction": "偏头痛", "label": False, "kind": "unrelated", "language": "zh"},
    {"reference": "Escherichia coli", "prediction": "D", "label": False, "kind": "unrelated",
     "options": {"A": "Streptococcus pneumoniae", "B": "Escherichia coli", "D": "Neisseria meningitidis"},
     "answer_letter": "B"},
]


class AlwaysCorrect:
    """A reward that pays every answer: every pair labelled false becomes a false positive."""

    def score(self, batch: list[RewardInput]) -> list[RewardResult]:
        return [RewardResult(1.0, "ok", {"correct": 1.0, "path": "always"}) for _ in batch]


def write_pairs(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clinical_rl.cli", "verifier-audit", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def test_shipped_pairs_load_and_cover_the_kinds_in_both_languages():
    pairs = load_pairs(SHIPPED)
    assert 20 <= len(pairs) <= 40
    assert {"exact", "synonym", "abbreviation", "near_miss", "list", "other"} <= {p.kind for p in pairs}
    assert {p.language for p in pairs} == {"en", "zh"}
    assert {p.label for p in pairs} == {True, False}
    mcq = [p for p in pairs if p.options]
    assert mcq and all(p.options[p.answer_letter] == p.reference for p in mcq)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"reference": "A", "prediction": "B", "kind": "x"}', "label: Field required"),
        ('{"reference": "A", "prediction": "B", "label": "yes", "kind": "x"}',
         "label: Input should be a valid boolean"),
        ('{"reference": "A", "prediction": "B", "label": true, "kind": "x", "lang": "en"}', "lang: unknown key"),
        ('{"reference": "A", "prediction": "B", "label": true, "kind": "x", "language": "fr"}',
         "language: Input should"),
        ('{"reference": "", "prediction": "B", "label": true, "kind": "x"}', "reference: String should have at least"),
        ('{"reference": "A", "prediction": "B", "label": true, "kind": "x", "options": {"A": "a"}, '
         '"answer_letter": "C"}', "answer_letter 'C' is not among the options ['A']"),
        ('{"reference": "A", "prediction": "B", "label": true, "kind": "x", "options": {"A": "a"}}',
         "options and answer_letter go together"),
        ('["A", "B", true, "x"]', "<line>: Input should be a valid dictionary"),
        ('{"reference": "A", "prediction": "B", "label": true,', "invalid JSON"),
    ],
)
def test_a_bad_line_is_named_with_file_line_and_field(tmp_path, line, message):
    good = json.dumps(STABLE[0])
    file = tmp_path / "pairs.jsonl"
    file.write_text(f"{good}\n\n{line}\n", encoding="utf-8")
    with pytest.raises(ValueError) as err:
        load_pairs(file)
    assert str(err.value).startswith(f"{file}:3")
    assert message in str(err.value)


def test_missing_and_empty_files_are_errors(tmp_path):
    with pytest.raises(ValueError, match="no such pairs file"):
        load_pairs(tmp_path / "absent.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no pairs"):
        load_pairs(tmp_path / "empty.jsonl")


def test_pairs_go_through_the_clinical_reward_parser_and_rules(tmp_path):
    pairs = load_pairs(write_pairs(tmp_path / "p.jsonl", STABLE))
    seen: list[RewardInput] = []

    def score(batch: list[RewardInput]) -> list[RewardResult]:
        seen.extend(batch)
        return ClinicalReward().score(batch)

    report = run_audit(pairs, score)
    assert seen[0].response == "<think>audit</think>\nDiagnosis: acute appendicitis"
    assert seen[1].case.language == "zh" and seen[4].case.answer_letter == "B"
    assert [s.verdict for s in report.scored] == ["correct", "correct", "incorrect", "incorrect", "incorrect"]
    assert all(s.by_rules and s.path.startswith("rule:") for s in report.scored)
    total = report.total
    assert (total.precision, total.recall, total.coverage, total.accuracy) == (1.0, 1.0, 1.0, 1.0)
    assert report.false_positives == [] and set(report.by_kind) == {"exact", "unrelated"}


def test_huatuo_format_is_wrapped_in_its_headers(tmp_path):
    pairs = load_pairs(write_pairs(tmp_path / "p.jsonl", STABLE[:1]))
    cfg = RewardConfig(kwargs={"answer_format": "huatuo"})
    report = run_audit(pairs, ClinicalReward(answer_format="huatuo").score, "huatuo")
    assert report.scored[0].verdict == "correct"
    assert audit_locally(cfg, tmp_path / "p.jsonl").scored[0].verdict == "correct"


def test_undecided_judge_and_failed_results_are_classified():
    ok = {"correct": 0.0, "undecided": 1.0, "path": "rule:none"}
    assert classify(RewardResult(0.1, "ok", ok)) == ("undecided", False, "rule:none")
    assert classify(RewardResult(1.0, "ok", {**ok, "correct": 1.0, "path": "judge"})) == ("correct", False, "judge")
    assert classify(RewardResult(1.0, "ok", {"correct": 1.0})) == ("correct", True, "")  # no undecided key: decided
    assert classify(RewardResult.failed("timeout", "slow"))[0] == "failed"
    assert classify(RewardResult(1.0, "ok", {}))[0] == "failed"  # nothing says whether it was correct
    unparsed = {"correct": 0.0, "undecided": 0.0, "path": "format", "missing_reason": "no answer"}
    assert classify(RewardResult(0.0, "ok", unparsed)) == ("failed", False, "format: no answer")


def test_rates_leave_undecided_out_of_precision_and_recall(tmp_path):
    rows = [{**STABLE[0], "kind": "k"}, {**STABLE[0], "kind": "k"}, {**STABLE[2], "kind": "k"},
            {**STABLE[3], "kind": "k"}]
    pairs = load_pairs(write_pairs(tmp_path / "p.jsonl", rows))
    results = [
        RewardResult(1.0, "ok", {"correct": 1.0, "undecided": 0.0, "path": "rule:exact"}),  # true positive
        RewardResult(0.1, "ok", {"correct": 0.0, "undecided": 1.0, "path": "rule:none"}),  # undecided (label true)
        RewardResult(1.0, "ok", {"correct": 1.0, "undecided": 1.0, "path": "judge"}),  # false positive, judge
        RewardResult.failed("error", "judge down"),  # failed (label false)
    ]
    report = run_audit(pairs, lambda batch: results)
    assert report.total == AuditStats(n=4, true_pos=1, false_pos=1, true_neg=0, false_neg=0, undecided=1, failed=1,
                                      by_rules=1)
    assert report.total.precision == 0.5 and report.total.recall == 1.0
    assert report.total.accuracy == 0.25 and report.total.coverage == 0.25
    assert [s.pair.reference for s in report.false_positives] == ["Acute appendicitis"]
    assert report.metrics() == {
        "audit/false_positives": 1.0, "audit/false_negatives": 0.0, "audit/undecided": 1.0, "audit/failed": 1.0,
        "audit/accuracy": 0.25, "audit/coverage": 0.25, "audit/precision": 0.5, "audit/recall": 1.0,
        "audit/kind/k/accuracy": 0.25, "audit/kind/k/coverage": 0.25, "audit/kind/k/false_positives": 1.0,
    }


def test_live_audit_warns_with_every_false_positive(tmp_path, caplog):
    pairs = load_pairs(write_pairs(tmp_path / "p.jsonl", STABLE))
    metrics = live_audit(pairs, AlwaysCorrect().score, RewardConfig(), step=7)
    assert metrics["audit/false_positives"] == 3.0 and metrics["audit/precision"] == 0.4
    (record,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "step 7: 3 FALSE POSITIVE(S)" in record.getMessage()
    assert "prediction 'Migraine'" in record.getMessage() and "prediction '偏头痛'" in record.getMessage()


def test_audit_config_is_validated():
    assert load_config(None, ["reward.audit.pairs=p.jsonl"]).reward.audit.every == 10
    with pytest.raises(ConfigError, match="reward.audit.every: Input should be greater than or equal to 1"):
        load_config(None, ["reward.audit.pairs=p.jsonl", "reward.audit.every=0"])
    with pytest.raises(ConfigError, match="reward.audit.pairs: Field required"):
        load_config(None, ["reward.audit.every=5"])
    with pytest.raises(ConfigError, match="reward.audit.pair: unknown key"):
        load_config(None, ["reward.audit.pairs=p.jsonl", "reward.audit.pair=p.jsonl"])


def test_cli_prints_the_table_and_exits_0_without_false_positives(tmp_path):
    out = cli("--pairs", str(write_pairs(tmp_path / "p.jsonl", STABLE)))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["kind", "n", "precision", "recall", "coverage", "accuracy", "FP", "FN", "undecided",
                                "failed"]
    assert lines[1].split() == ["exact", "2", "1.000", "1.000", "1.000", "1.000", "0", "0", "0", "0"]
    assert lines[2].split() == ["unrelated", "3", "-", "-", "1.000", "1.000", "0", "0", "0", "0"]
    assert lines[3].split()[:2] == ["all", "5"]
    assert "false positives (label false, judged correct): 0" in out.stdout


def test_cli_lists_a_forced_false_positive_and_exits_1(tmp_path):
    pairs = write_pairs(tmp_path / "p.jsonl", STABLE)
    out = cli("--pairs", str(pairs), "reward.cls=tests.rewards.test_audit:AlwaysCorrect")
    assert out.returncode == 1, out.stderr
    assert "false positives (label false, judged correct): 3" in out.stdout
    assert "[unrelated] reference 'Acute appendicitis'  prediction 'Migraine'  (always)" in out.stdout

    as_json = cli("--pairs", str(pairs), "--json", "reward.cls=tests.rewards.test_audit:AlwaysCorrect")
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert report["all"]["false_pos"] == 3 and report["all"]["precision"] == 0.4
    assert report["by_kind"]["unrelated"]["recall"] is None
    assert [fp["prediction"] for fp in report["false_positives"]] == ["Migraine", "偏头痛", "D"]
    assert len(report["pairs"]) == 5


def test_cli_names_a_bad_file_and_exits_2(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"reference": "A", "prediction": "B", "kind": "x"}\n')
    out = cli("--pairs", str(bad), "--config", "configs/demo.yaml")
    assert out.returncode == 2
    assert f"{bad}:1: label: Field required" in out.stderr
