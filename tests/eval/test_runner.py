"""`clinical-rl eval` end to end: a scripted OpenAI-compatible server reproduces a known department table; the
embedded model through both backends (vLLM engine actors and `vllm serve`) writes a real report."""

import json
import threading
import time
from importlib.metadata import version

import pytest

from clinical_rl.config_stages import EvalBenchmarkConfig, EvalModelConfig
from clinical_rl.config_files import config_hash, load_config
from clinical_rl.data.generator import generate_cases
from clinical_rl.data.prompts import case_text
from clinical_rl.local_server import free_port

RIGHT_DEPARTMENTS = {"respiratory", "cardiology", "neurology"}


def write_cases(path, cases):
    with path.open("w", encoding="utf-8") as f:
        for c in cases:
            row = {"id": c.id, "question": c.question, "answer": c.answer, "icd10": c.icd10,
                   "department": c.department, "language": c.language}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def scripted_server(cases):
    """A real HTTP server speaking the OpenAI chat API: right for three departments, wrong for the rest."""
    import uvicorn
    from fastapi import FastAPI

    by_text = {case_text(c): c for c in cases}
    wrong = {"en": "Migraine", "zh": "偏头痛"}  # a knowledge-base disease, so the rules call it incorrect
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def complete(body: dict) -> dict:
        case = by_text[body["messages"][-1]["content"]]
        # Migraine is a neurology disease, and neurology is answered right: the wrong answer is always wrong.
        answer = case.answer if case.department in RIGHT_DEPARTMENTS else wrong[case.language]
        content = f"<think>Findings point one way.</think>\nDiagnosis: {answer}"
        return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}/v1"


def test_department_table_is_reproduced_exactly(tmp_path):
    from clinical_rl.eval.runner import run_eval

    cases = generate_cases(seed=1)  # one case per disease and language
    server, base_url = scripted_server(cases)
    try:
        cfg = load_config(None, [f"output_dir={tmp_path}", "tracking.wandb_mode=disabled"])
        ev = cfg.eval.model_copy(update={
            "models": [EvalModelConfig(label="scripted", model="m", base_url=base_url)],
            "benchmarks": [EvalBenchmarkConfig(name="kb", path=str(write_cases(tmp_path / "kb.jsonl", cases)))],
            "bootstrap_resamples": 200,
        })
        cfg = cfg.model_copy(update={"eval": ev})
        result = run_eval(cfg)
    finally:
        server.should_exit = True
    rows = {(r.kind, r.group): r for r in result.rows}
    for department in {c.department for c in cases}:
        n = sum(c.department == department for c in cases)
        row = rows["department", department]
        assert row.accuracy.n == n
        assert row.accuracy.value == (1.0 if department in RIGHT_DEPARTMENTS else 0.0), department
        assert row.distinct_icd10 == n // 2  # each disease in both languages
    right = sum(c.department in RIGHT_DEPARTMENTS for c in cases)
    assert rows["overall", "all"].accuracy.value == pytest.approx(right / len(cases))
    assert rows["language", "zh"].accuracy.value == pytest.approx(right / len(cases))
    assert all(p.path.startswith("rule:") for p in result.predictions)  # decided without a judge
    assert result.report.is_file() and (result.report.parent / "predictions.jsonl").is_file()
    # the report and summary.json name what was evaluated: the endpoint, the benchmark file, config and version
    report = result.report.read_text()
    summary = json.loads((result.report.parent / "summary.json").read_text())
    assert summary["models"] == [{"label": "scripted", "path": None, "base_url": base_url, "model": "m"}]
    bench = str((tmp_path / "kb.jsonl").resolve())
    assert summary["benchmarks"] == [{"name": "kb", "path": bench, "n": len(cases)}]
    assert summary["config_hash"] == config_hash(cfg) and summary["version"] == version("clinical_rl")
    assert f"| scripted | endpoint m at {base_url} |" in report and f"| kb | {bench} | {len(cases)} |" in report
    assert f"Config hash `{config_hash(cfg)}`" in report and f"clinical_rl {version('clinical_rl')}" in report


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.ray
def test_embedded_model_through_engine_actors_and_vllm_serve(tmp_path, vllm_server):
    from PIL import Image

    from clinical_rl.eval.runner import run_eval

    cfg = load_config(None, [
        f"output_dir={tmp_path}", "tracking.wandb_mode=offline", "ray.num_cpus=2", "eval.max_new_tokens=48",
        "eval.engine.dtype=float32", "eval.engine.kv_cache_gib=1", "eval.bootstrap_resamples=200",
    ])
    ev = cfg.eval.model_copy(update={
        "models": [EvalModelConfig(label="engine", path="embedded"),
                   EvalModelConfig(label="endpoint", model="smollm2", base_url=vllm_server.base_url)],
        # and a chain benchmark: the same backends play the diagnostic chain's episodes (tests/eval/test_chain_eval.py
        # checks its numbers with a scripted model)
        "benchmarks": [EvalBenchmarkConfig(name="builtin", path="builtin", limit=20),
                       EvalBenchmarkConfig(name="chain", path="builtin", language="en", limit=3,
                                           env={"max_turns": 2})],
    })
    result = run_eval(cfg.model_copy(update={"eval": ev}))
    chain = [p for p in result.predictions if p.benchmark == "chain"]
    assert len(chain) == 6 and all(p.episode and p.episode["ended_by"] in ("answered", "max_turns") for p in chain)
    for p in chain:  # system, the environment's first turn, then the model's replies and the environment's answers
        roles = [m["role"] for m in p.conversation]
        assert roles[:3] == ["system", "user", "assistant"] and len(roles) == 1 + 2 * p.episode["turns"]
        assert "<request>" in p.conversation[1]["content"] and p.conversation[-1]["content"] == p.output
    assert "Diagnostic chain" in result.report.read_text()
    builtin = [p for p in result.predictions if p.benchmark == "builtin"]
    by_model = {m: [p for p in builtin if p.model == m] for m in ("engine", "endpoint")}
    assert all(len(p) == 20 for p in by_model.values())
    assert all(p.verdict != "error" for p in result.predictions), [p.error for p in result.predictions if p.error]
    assert all(p.output for p in builtin)
    # Same weights, greedy decoding: the two backends mostly write the same text.
    same = sum(a.output == b.output for a, b in zip(by_model["engine"], by_model["endpoint"]))
    assert same >= 15, same
    report = result.report.read_text()
    assert "engine" in report and "endpoint" in report
    charts = sorted((result.report.parent / "charts").glob("*.png"))
    assert charts
    with Image.open(charts[0]) as image:
        assert image.format == "PNG" and image.width > 300 and len(set(image.convert("RGB").getdata())) > 8
    assert list(tmp_path.rglob("*.wandb"))
