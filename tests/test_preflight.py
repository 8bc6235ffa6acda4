"""One preflight for every command: each problem a new user met late (issue 15, "What was seen" 2) now stops the
command before Ray or any actor starts, all problems at once, each naming its key."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from pathlib import Path

import pytest

from clinical_rl.cli import main
from clinical_rl.config_files import load_config
from clinical_rl.models import cache_dir
from clinical_rl.preflight import Endpoint, find_problems, reach

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo.yaml")


@pytest.fixture
def no_ray(monkeypatch, tmp_path_factory):
    """Any attempt to start or join Ray fails the test: the preflight must stop the command first."""
    import ray

    def forbidden(*_args, **_kwargs):
        raise AssertionError("Ray was started: the preflight should have stopped the command")

    monkeypatch.setattr(ray, "init", forbidden)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    # A home without ~/.netrc (no `wandb login` key); the embedded model stays where it is.
    monkeypatch.setenv("CLINICAL_RL_CACHE", str(cache_dir()))
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))


def problems_of(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "found before starting anything" in err, err
    return [line.strip() for line in err.splitlines()[1:]]


def test_pipeline_reports_every_problem_before_synthesis(no_ray, tmp_path, capsys):
    # Seen: a missing data.path was reported only after synthesis and SFT had run; a typo in reward.kwargs and
    # wandb online without a key only after every engine and trainer had started.
    out = tmp_path / "run"
    code = main(["pipeline", "--config", DEMO, f"output_dir={out}", f"data.path={tmp_path / 'missing.jsonl'}",
                 "reward.kwargs.on_undecidd=error", "tracking.wandb_mode=online",
                 f"eval.benchmarks=[{{name: held_out, path: {tmp_path / 'held_out.csv'}}}]"])
    assert code == 2
    assert problems_of(capsys) == [  # in the order the stages would meet them
        "reward.kwargs.on_undecidd: unknown key",
        f"data.path: no such file or directory {tmp_path / 'missing.jsonl'}",
        f"eval.benchmarks[held_out].path: no such file or directory {tmp_path / 'held_out.csv'}",
        "tracking.wandb_mode: online needs WANDB_API_KEY in the environment (or `wandb login`); set "
        "tracking.wandb_mode=offline to sync later",
    ]
    assert not out.exists()  # nothing written, no config clobbered


def test_eval_checks_every_model_and_benchmark_before_the_first_runs(no_ray, tmp_path, capsys):
    # Seen: the second model's path was checked only after the first was fully evaluated; a missing --benchmark
    # file was reported as data.path.
    code = main(["eval", "--model", "base=embedded", "--model", f"rl={tmp_path / 'policy'}",
                 "--benchmark", f"held_out={tmp_path / 'cases.jsonl'}", f"output_dir={tmp_path}"])
    assert code == 2
    assert problems_of(capsys) == [
        f"--model rl: no HF model at {tmp_path / 'policy'} (config.json missing)",
        f"--benchmark held_out: no such file or directory {tmp_path / 'cases.jsonl'}",
    ]


def test_benchmark_files_are_loaded_not_only_found(no_ray, tmp_path, capsys):
    cases = tmp_path / "cases.csv"
    cases.write_text("question,diagnosis\nCough and fever for 3 days.,Pneumonia\n")
    assert main(["eval", "--model", "embedded", "--benchmark", str(cases)]) == 2
    [problem] = problems_of(capsys)
    assert problem.startswith("--benchmark cases: ") and "answer" in problem  # the column is named diagnosis


def test_plan_lists_what_is_wrong_or_says_ready(no_ray, tmp_path, capsys):
    assert main(["plan", "--config", DEMO, "--for", "pipeline"]) == 0
    assert "ready: clinical-rl pipeline found everything it needs" in capsys.readouterr().out
    code = main(["plan", "--config", DEMO, f"model.path={tmp_path}", "reward.cls=my_lab.rewards:Judge"])
    assert code == 1
    captured = capsys.readouterr()
    assert "placement group: 3 bundles" in captured.out  # the plan itself is still printed
    assert captured.err.splitlines() == [
        "not ready: clinical-rl ppo would stop on 2 problems:",
        f"  model.path: no HF model at {tmp_path} (config.json missing)",
        "  reward.cls: cannot import module 'my_lab.rewards' (No module named 'my_lab')",
    ]


def test_synth_needs_a_synthesizer(no_ray, tmp_path, capsys):
    code = main(["synth", "--config", DEMO, "synthesis.teacher=search", f"output_dir={tmp_path}"])
    assert code == 2
    assert problems_of(capsys) == ["synthesis.model: required for an endpoint (or set synthesis.engine_model to a "
                                   "local model, or synthesis.teacher=knowledge_base)"]


SERVED: list[str] | None = None  # what the stub lists; None: an answer without a model list


@contextlib.contextmanager
def served(models: list[str]):
    global SERVED
    SERVED = models
    try:
        yield
    finally:
        SERVED = None


class _Models(http.server.BaseHTTPRequestHandler):
    """GET /v1/models: 200 with the right bearer key (listing SERVED), 401 otherwise."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        ok = self.path == "/v1/models" and self.headers.get("Authorization") == "Bearer right"
        self.send_response(200 if ok else 401)
        self.end_headers()
        body = {"data": [{"id": m} for m in SERVED]} if SERVED is not None else {"object": "list"}
        self.wfile.write(json.dumps(body).encode())

    def log_message(self, *_args):
        pass


@pytest.fixture
def models_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Models)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_an_endpoint_is_asked_once_with_the_runs_key(models_server, monkeypatch):
    endpoint = Endpoint("eval.models[gpt].base_url", models_server, "MY_KEY")
    monkeypatch.setenv("MY_KEY", "right")
    reach(endpoint)
    monkeypatch.setenv("MY_KEY", "wrong")
    with pytest.raises(ConnectionError, match=r"rejects the key in MY_KEY \(HTTP 401\)") as err:
        reach(endpoint)
    assert "wrong" not in str(err.value)  # the key itself is never shown
    monkeypatch.delenv("MY_KEY")
    with pytest.raises(ConnectionError, match="needs a key: MY_KEY is not set"):
        reach(endpoint)


def test_a_dead_endpoint_is_named_and_the_check_can_be_skipped(no_ray, tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    cfg = load_config(DEMO, [f"eval.models=[{{label: gpt, model: gpt-4o, base_url: '{dead}'}}]"])
    [problem] = find_problems(cfg, "eval")
    assert str(problem).startswith(f"eval.models[gpt].base_url: {dead} does not answer (ConnectError")
    assert problem.message.endswith("--skip-endpoint-check skips this check")
    assert find_problems(cfg, "eval", endpoints=False) == []


def test_labels_and_names_must_be_unique(no_ray, tmp_path, capsys):
    # Seen: two benchmarks named by the same file stem, two models under one label, were merged into one row.
    for d in ("d1", "d2"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "cases.jsonl").write_text('{"question": "Cough and fever.", "answer": "Pneumonia"}\n')
    code = main(["eval", "--model", "x=embedded", "--model", "x=embedded", "--benchmark", str(tmp_path / "d1" /
                 "cases.jsonl"), "--benchmark", str(tmp_path / "d2" / "cases.jsonl"), f"output_dir={tmp_path}"])
    assert code == 2
    assert problems_of(capsys) == [
        "--model: the label 'x' is given 2 times; each needs its own label (--model LABEL=PATH, --benchmark "
        "NAME=PATH)",
        "--benchmark: the name 'cases' is given 2 times; each needs its own name (--model LABEL=PATH, --benchmark "
        "NAME=PATH)",
    ]


@pytest.mark.parametrize("spec,why", [
    ("=embedded", "empty label"), ("x=", "empty path"), ("x=openai:", "needs a model name"),
    ("x=openai:m@", "needs a model name and a base URL after @"),
])
def test_a_malformed_model_spec_is_refused(no_ray, spec, why, capsys):
    assert main(["eval", "--model", spec]) == 2
    err = capsys.readouterr().err
    assert f"--model {spec!r}: " in err and why in err


def test_the_endpoint_must_serve_the_model_asked_for(models_server, monkeypatch):
    monkeypatch.setenv("MY_KEY", "right")
    reach(Endpoint("eval.models[gpt].base_url", models_server, "MY_KEY", "gpt-4o"))  # lists none: not concluded
    with served(["qwen", "llama"]):
        with pytest.raises(ConnectionError, match=r"does not serve 'gpt-4o' \(it serves: qwen, llama\)"):
            reach(Endpoint("eval.models[gpt].base_url", models_server, "MY_KEY", "gpt-4o"))
        reach(Endpoint("eval.models[gpt].base_url", models_server, "MY_KEY", "qwen"))


def test_serve_reward_and_verifier_audit_name_a_bad_kwarg(no_ray, tmp_path, capsys):
    pairs = tmp_path / "p.jsonl"
    pairs.write_text("")
    for argv in (["verifier-audit", "--pairs", str(pairs)], ["serve-reward", "--port", "1"]):
        assert main([*argv, "reward.kwargs.on_undecidd=x"]) == 2
        assert problems_of(capsys) == ["reward.kwargs.on_undecidd: unknown key"]


def test_plan_for_eval_checks_no_rl_layout_and_plan_sees_this_machines_cpus(no_ray, capsys, monkeypatch):
    assert main(["plan", "--for", "eval", "placement.cpus_per_node=1"]) == 1
    captured = capsys.readouterr()
    assert "placement group" not in captured.out and "does not fit" not in captured.err  # eval starts no RL roles
    assert "eval.models: empty" in captured.err
    # ray.num_cpus unset: a local run gets this machine's CPUs, and the default layout (3.75 CPUs) needs more
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert main(["plan"]) == 1
    assert "bundle 2 {'CPU': 1.0} does not fit on any of the 1 nodes (2.0 CPUs each" in capsys.readouterr().err


def test_the_knowledge_base_teacher_on_cases_it_does_not_know_is_not_ready(no_ray, tmp_path, capsys):
    # Seen: `plan` said ready, then `synth` wrote 0 rows and said "no call got a reply", to be retried forever.
    cases = tmp_path / "cases.jsonl"
    cases.write_text('{"id": "u0", "question": "Pain in the left toe.", "answer": "Appendicitis of the left toe"}\n')
    assert main(["synth", "synthesis.teacher=knowledge_base", f"synthesis.path={cases}", f"output_dir={tmp_path}"]) == 2
    [problem] = problems_of(capsys)
    assert problem.startswith("synthesis.teacher: knowledge_base writes rows only for the built-in diseases, and has "
                              "none of the 1 cases of synthesis.path (case 'u0': the knowledge base has no entry for "
                              "'Appendicitis of the left toe')")
