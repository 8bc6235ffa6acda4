"""One preflight for every command: each problem a new user met late (issue 15, "What was seen" 2) now stops the
command before Ray or any actor starts, all problems at once, each naming its key."""

from __future__ import annotations

import http.server
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


class _Models(http.server.BaseHTTPRequestHandler):
    """GET /v1/models: 200 with the right bearer key, 401 otherwise."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        ok = self.path == "/v1/models" and self.headers.get("Authorization") == "Bearer right"
        self.send_response(200 if ok else 401)
        self.end_headers()
        self.wfile.write(b'{"data": []}')

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
