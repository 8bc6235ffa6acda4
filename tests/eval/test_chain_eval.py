"""Chain benchmarks in `clinical-rl eval`: episodes of the diagnostic chain played through the chat backend, the
final replies judged as one-turn answers, and accuracy, examinations and cost per case reported per department,
several models side by side; resume and the benchmark's validation."""

import contextlib
import dataclasses
import json

import pytest

from clinical_rl.config_files import ConfigError, load_config
from clinical_rl.config_stages import EvalBenchmarkConfig, EvalModelConfig
from clinical_rl.envs.diagnostic_chain import DiagnosticChainConfig
from clinical_rl.eval import runner
from clinical_rl.eval.pairs import PairFiles
from clinical_rl.eval.report import read_predictions
from clinical_rl.eval.report_base import format_accuracy
from clinical_rl.llm_client import ChatReply

# Two departments, two cases each (the ICD-stratified split of the built-in chain cases), English, 3 replies each.
BENCHMARK = EvalBenchmarkConfig(name="chain", path="builtin", language="en", departments=["respiratory", "cardiology"],
                                per_department=2, env=DiagnosticChainConfig(max_turns=3))
WRONG = "Migraine"  # a knowledge-base disease outside both departments: the rules call it incorrect


def answer(case):
    return f"<think>The findings point one way.</think>\nDiagnosis: {case.answer}"


def request(*names):
    return f"<think>I need more.</think>\n<request>{'; '.join(names)}</request>"


class ScriptedChat:
    """Plays each case by a plan, `plans[label](role, case, turn) -> reply text or an exception`, where `role` is
    the case's place in the benchmark (resp0, resp1, card0, card1); logs who was asked what, and how."""

    def __init__(self, log, label, plan, roles):
        self.log, self.label, self.plan, self.roles = log, label, plan, roles

    def chat(self, conversations, max_tokens, temperature=0.0, top_logprobs=0):
        asked = []
        for conversation in conversations:
            role, case = next((role, case) for role, case in self.roles.items()
                              if conversation[1]["content"].startswith(case.question))
            asked.append((role, case, sum(m["role"] == "assistant" for m in conversation) + 1))
        self.log.append(("chat", self.label, [(role, turn) for role, _, turn in asked], max_tokens, temperature))
        replies = [self.plan(role, case, turn) for role, case, turn in asked]
        return [r if isinstance(r, Exception) else ChatReply(r) for r in replies]


def plan_a(role, case, turn, fail=True):
    """resp0 orders two exams of its record, then answers right; resp1 answers right at once; card0 orders one
    exam of its record and an unknown one, then answers wrong; card1's request fails (when `fail`)."""
    if role == "resp0":
        return request(case.exams[1].name, case.exams[2].name) if turn == 1 else answer(case)
    if role == "card0":
        return request(case.exams[1].name, "tarot reading") if turn == 1 else f"<think>Hm.</think>\nDiagnosis: {WRONG}"
    if role == "card1" and fail:
        return TimeoutError("read timed out")
    return answer(case)


def plan_b(role, case, turn):
    """Answers right at once, except card0: it orders the same exam on every turn until the turns run out."""
    return request(case.exams[1].name) if role == "card0" else answer(case)


@pytest.fixture
def harness(tmp_path, monkeypatch):
    """`run(*overrides, benchmark=..., a=plan)` runs run_eval with models a and b on the chain benchmark."""
    log = []
    plans = {}

    @contextlib.contextmanager
    def open_backend(model, cfg):
        log.append(("open", model.label))
        yield ScriptedChat(log, model.label, plans[model.label], plans["roles"])

    monkeypatch.setattr(runner, "open_backend", open_backend)

    def run(*overrides, benchmark=BENCHMARK, a=plan_a):
        cfg = load_config(None, [f"output_dir={tmp_path}", "tracking.wandb_mode=disabled", "eval.max_new_tokens=64",
                                 "eval.bootstrap_resamples=100", *overrides])
        ev = cfg.eval.model_copy(update={
            "models": [EvalModelConfig(label=label, model=label, base_url="http://127.0.0.1:9/v1") for label in "ab"],
            "benchmarks": [benchmark]})
        cfg = cfg.model_copy(update={"eval": ev})
        plans.update(a=a, b=plan_b, roles=roles(cfg.seed, benchmark))
        log.clear()
        return runner.run_eval(cfg)

    run.log, run.out = log, tmp_path / "eval"
    return run


def roles(seed, benchmark=BENCHMARK):
    cases = runner.load_benchmark(benchmark, seed)
    by_department = {d: [c for c in cases if c.department == d] for d in ("respiratory", "cardiology")}
    assert [len(v) for v in by_department.values()] == [2, 2]
    return {f"{d[:4]}{i}": c for d, group in by_department.items() for i, c in enumerate(group)}


def means(episodes):
    """The expected per-case means of (exams, cost, info, useless, turns, ended by max turns) of episodes given
    as (exams, cost, info, useless, turns, max_turns)."""
    return [sum(e[k] for e in episodes) / len(episodes) for k in range(6)]


def row_line(group, model, n, accuracy_row, values):
    cells = [f"{v:.2f}" for v in values[:5]] + [f"{100 * values[5]:.1f}%"]
    return f"| {group} | {model} | {n} | {format_accuracy(accuracy_row)} | {' | '.join(cells)} |"


def expected_episodes(cases):
    """What each episode does, derived from the plans and the cases' records, per model and role: (exams, cost,
    info, useless, turns, ended by max turns)."""
    costs = BENCHMARK.env.costs
    resp0, card0 = cases["resp0"].exams, cases["card0"].exams
    # a's card0: one exam of the record plus an unknown one (useless, not billed); card1 failed, so it is left out
    a = {"resp0": (2, costs[resp0[1].category] + costs[resp0[2].category], 2, 0, 2, 0), "resp1": (0, 0, 0, 0, 1, 0),
         "card0": (1, costs[card0[1].category], 1, 1, 2, 0)}
    # b's card0 orders the same exam on turns 1 and 2 (the second a repeat: useless, not billed); its third reply
    # is the last one, whatever it is
    b = {"resp0": (0, 0, 0, 0, 1, 0), "resp1": (0, 0, 0, 0, 1, 0), "card1": (0, 0, 0, 0, 1, 0),
         "card0": (1, costs[card0[1].category], 1, 1, 3, 1)}
    assert max(x[1] for x in (*a.values(), *b.values())) > 0  # the records bill something
    return {"a": a, "b": b}


def check_chain_table(report, rows, expected):
    """The report's chain table: overall then per department, models a and b in adjacent rows."""
    a, b = expected["a"], expected["b"]
    assert "| group | model | n | accuracy | exams/case | cost/case | info requests/case | useless requests/case | " \
           "turns/case | ended by max turns |" in report
    resp, card = ("resp0", "resp1"), ("card0", "card1")
    expected_lines = [
        row_line("Overall", "a", 4, rows["a", "overall", "all"], means(list(a.values()))),
        row_line("Overall", "b", 4, rows["b", "overall", "all"], means(list(b.values()))),
        row_line("Respiratory", "a", 2, rows["a", "department", "respiratory"], means([a[r] for r in resp])),
        row_line("Respiratory", "b", 2, rows["b", "department", "respiratory"], means([b[r] for r in resp])),
        row_line("Cardiology", "a", 2, rows["a", "department", "cardiology"], means([a["card0"]])),
        row_line("Cardiology", "b", 2, rows["b", "department", "cardiology"], means([b[r] for r in card])),
    ]
    section = report.split("### Diagnostic chain", 1)[1].split("\n### ", 1)[0]
    assert [line for line in section.splitlines() if line.startswith("| ")][1:] == expected_lines
    assert "| Overall | a | 4 | 50.0 (1 failed) |" in report and "| Overall | b | 4 | 75.0 |" in report


def test_chain_benchmark_reports_accuracy_exams_and_cost_per_department(harness):
    result = harness()
    cases = roles(0)
    expected = expected_episodes(cases)
    # greedy, max_new_tokens per reply; each turn one batch over the episodes still running
    calls = [e for e in harness.log if e[0] == "chat"]
    assert {(e[3], e[4]) for e in calls} == {(64, 0.0)}
    assert [(e[1], sorted(e[2])) for e in calls] == [
        ("a", [("card0", 1), ("card1", 1), ("resp0", 1), ("resp1", 1)]), ("a", [("card0", 2), ("resp0", 2)]),
        ("b", [("card0", 1), ("card1", 1), ("resp0", 1), ("resp1", 1)]), ("b", [("card0", 2)]), ("b", [("card0", 3)])]

    by = {(p.model, p.case_id): p for p in result.predictions}
    verdicts = {(m, role): by[m, c.id].verdict for m in "ab" for role, c in cases.items()}
    assert verdicts == {("a", "resp0"): "correct", ("a", "resp1"): "correct", ("a", "card0"): "incorrect",
                        ("a", "card1"): "error", ("b", "resp0"): "correct", ("b", "resp1"): "correct",
                        ("b", "card0"): "incorrect", ("b", "card1"): "correct"}
    for model, episodes in expected.items():
        for role, (exams, cost, info, useless, turns, max_turns) in episodes.items():
            episode = by[model, cases[role].id].episode
            assert (episode["exams_ordered"], episode["cost"], episode["info_requests"], episode["useless_requests"],
                    episode["turns"]) == (exams, cost, info, useless, turns), (model, role)
            assert episode["ended_by"] == ("max_turns" if max_turns else "answered")
    assert by["a", cases["card1"].id].episode["ended_by"] == "error"

    rows = {(r.model, r.kind, r.group): r for r in result.rows}
    check_chain_table((harness.out / "report.md").read_text(), rows, expected)

    # summary.json carries the same means
    summary = json.loads((harness.out / "summary.json").read_text())
    groups = {(g["model"], g["kind"], g["group"]): g for g in summary["groups"]}
    for model, episodes in expected.items():
        chain = groups[model, "overall", "all"]["chain"]
        assert chain["n"] == len(episodes)
        assert [chain[k] for k in ("exams", "cost", "info_requests", "useless_requests", "turns",
                                   "max_turns_frac")] == pytest.approx(means(list(episodes.values())))
    assert groups["a", "department", "cardiology"]["chain"]["n"] == 1  # the failed episode is left out

    # the pair's predictions keep the whole conversation and the summary
    stored = {p.case_id: p for p in read_predictions(PairFiles(harness.out, "a", "chain").predictions)}
    played, record = stored[cases["resp0"].id], cases["resp0"].exams
    assert [m["role"] for m in played.conversation] == ["system", "user", "assistant", "user", "assistant"]
    assert played.conversation[1]["content"].startswith(cases["resp0"].question)
    assert all(exam.result in played.conversation[3]["content"] for exam in record[1:3])  # the results, turn 2
    assert played.output == played.conversation[-1]["content"] == answer(cases["resp0"])
    assert played.episode["cost"] == expected["a"]["resp0"][1] and "final_reply" not in played.episode


def test_a_rerun_skips_done_pairs_and_a_changed_env_recomputes(harness, capsys):
    harness()
    cases = roles(0)
    capsys.readouterr()

    result = harness(a=lambda role, case, turn: plan_a(role, case, turn, fail=False))
    console = capsys.readouterr().out
    # a: only the failed episode is played again (from its start); b: skipped
    assert [(e[1], e[2]) for e in harness.log if e[0] == "chat"] == [("a", [("card1", 1)])]
    assert "eval a/chain: 1 of 4 cases failed last time; asking those again" in console
    assert "eval b/chain: done in " in console and ("open", "b") not in harness.log
    fixed = next(p for p in result.predictions if p.model == "a" and p.case_id == cases["card1"].id)
    assert fixed.verdict == "correct" and fixed.episode["ended_by"] == "answered"

    harness(a=lambda role, case, turn: plan_a(role, case, turn, fail=False))
    assert [e for e in harness.log if e[0] == "chat"] == []  # all done, same inputs

    shorter = BENCHMARK.model_copy(update={"env": DiagnosticChainConfig(max_turns=2)})
    result = harness(benchmark=shorter, a=lambda role, case, turn: plan_a(role, case, turn, fail=False))
    console = capsys.readouterr().out
    assert "stored predictions not reused, made with other inputs: benchmark.env.max_turns: 3 -> 2" in console
    assert {e[1] for e in harness.log if e[0] == "chat"} == {"a", "b"}
    b_card0 = next(p for p in result.predictions if p.model == "b" and p.case_id == cases["card0"].id)
    assert b_card0.episode["turns"] == 2 and b_card0.episode["ended_by"] == "max_turns"


def test_a_chain_benchmark_is_validated():
    with pytest.raises(ValueError, match=r"eval.benchmarks\[c\].fields: a chain benchmark \(env\) reads chain cases"):
        EvalBenchmarkConfig(name="c", path="cases.jsonl", fields={"question": "q"}, env=DiagnosticChainConfig())
    with pytest.raises(ValueError, match=r"eval.benchmarks\[c\].format: a chain benchmark \(env\) reads auto, "
                                         r"builtin, medrbench, jsonl, not 'csv'"):
        EvalBenchmarkConfig(name="c", path="cases.csv", format="csv", env=DiagnosticChainConfig())
    with pytest.raises(ConfigError, match="max_turns"):
        load_config(None, ["eval.benchmarks=[{name: c, env: {max_turns: 0}}]"])
    with pytest.raises(ConfigError, match="max_turn"):
        load_config(None, ["eval.benchmarks=[{name: c, env: {max_turn: 3}}]"])  # a misspelt key
    cfg = load_config(None, ["eval.benchmarks=[{name: c, path: builtin, env: {max_turns: 2}}]"])
    assert cfg.eval.benchmarks[0].env == DiagnosticChainConfig(max_turns=2)
    assert cfg.eval.benchmarks[0].model_copy(update={"env": None}).env is None  # one-turn: the default
    assert EvalBenchmarkConfig(name="one-turn").env is None


def test_the_preflight_loads_a_chain_benchmark_as_chain_cases(tmp_path):
    """The preflight loads a chain benchmark as eval will: a file without examination records passes the one-turn
    loader but is no chain benchmark, and is named by the benchmark's key before anything starts."""
    from clinical_rl.envs.chain_cases import chain_cases_from_kb, write_chain_cases
    from clinical_rl.preflight import find_problems

    write_chain_cases(chain_cases_from_kb(("en",))[:3], tmp_path / "chain.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"question": "q", "answer": "a"}\n')  # no exams
    cfg = load_config(None, [f"output_dir={tmp_path}", "tracking.wandb_mode=disabled",
                             f"eval.benchmarks=[{{name: good, path: {tmp_path / 'chain.jsonl'}, env: {{}}}}, "
                             f"{{name: bad, path: {tmp_path / 'bad.jsonl'}, env: {{}}}}]"])
    models = [EvalModelConfig(label="m", model="m", base_url="http://127.0.0.1:9/v1")]
    problems = [str(p) for p in find_problems(cfg, "eval", models=models, endpoints=False)]
    assert len(problems) == 1 and problems[0].startswith("eval.benchmarks[bad].path: ") and "exams" in problems[0]


def test_the_consecutive_error_cutoff_counts_across_turns(harness):
    """The last episode of the batch fails on turn 1; with eval.max_consecutive_errors=1 no turn 2 is sent: the
    three episodes still running end as errors, and nothing is left to average."""
    cases = roles(0)
    last_id = runner.load_benchmark(BENCHMARK, 0)[-1].id

    def plan(role, case, turn):
        if case.id == last_id:
            return TimeoutError("read timed out")
        return request(case.exams[1].name) if turn == 1 else answer(case)

    result = harness("eval.max_consecutive_errors=1", a=plan)
    assert [(e[1], len(e[2])) for e in harness.log if e[0] == "chat" and e[1] == "a"] == [("a", 4)]
    errors = {p.case_id: p.error for p in result.predictions if p.model == "a"}
    assert errors[last_id] == "TimeoutError: read timed out"
    assert all(errors[c.id].startswith("RuntimeError: not sent: the 1 requests before it failed in a row")
               for c in cases.values() if c.id != last_id)
    summary = json.loads((harness.out / "summary.json").read_text())
    overall = next(g for g in summary["groups"] if (g["model"], g["kind"]) == ("a", "overall"))
    assert overall["chain"] == {"n": 0, "exams": None, "cost": None, "info_requests": None, "useless_requests": None,
                                "turns": None, "max_turns_frac": None}
    assert "| Overall | a | 4 | — (4 of 4 failed) | — | — | — | — | — | — |" in (harness.out / "report.md").read_text()


def test_one_turn_prediction_lines_keep_their_layout_and_chain_lines_read_back(tmp_path):
    from clinical_rl.eval.records import Prediction
    from clinical_rl.eval.report import write_predictions

    one_turn = Prediction(benchmark="b", model="m", case_id="c", department="respiratory", language="en", icd10=None,
                          reference="Asthma", prompt="p", output="Diagnosis: Asthma", extracted="Asthma",
                          verdict="correct", path="rule:exact")
    chain = dataclasses.replace(one_turn, episode={"turns": 1.0, "cost": 0.0, "ended_by": "answered"},
                                conversation=[{"role": "user", "content": "p"}])
    assert "episode" not in one_turn.to_json() and "conversation" not in one_turn.to_json()
    write_predictions([one_turn, chain], tmp_path / "p.jsonl")
    assert read_predictions(tmp_path / "p.jsonl") == [one_turn, chain]
    (tmp_path / "bad.jsonl").write_text(json.dumps({**chain.to_json(), "episode": [1]}) + "\n")
    with pytest.raises(ValueError, match="field 'episode': expected dict"):
        read_predictions(tmp_path / "bad.jsonl")
