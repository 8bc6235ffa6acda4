"""`clinical-rl serve-reward` as a real subprocess, spoken to over HTTP in OpenRLHF's remote reward protocol."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from clinical_rl.rewards.server import reward_input, strip_suffixes

ROOT = Path(__file__).resolve().parents[2]
FAILING = "tests.rewards.failing_rewards:RaisesOnBoom"
SECRET = "PAYLOAD-CONTENT-7f3a"  # appears in prompts; must never reach the server log or an error body
SMALL_LIMITS = ("--max-body-bytes", "100000", "--max-items", "3", "--max-field-chars", "4000")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, tmp: Path, name: str, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"{name}.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "clinical_rl.cli", "serve-reward", "--port", str(self.port), *args],
            cwd=ROOT, env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        pytest.fail(f"server not ready after {timeout}s:\n{self.log.read_text()}")

    def post(self, payload, path: str = "/get_reward") -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=payload, timeout=60.0)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Three servers started together: default reward (and default limits), a failing reward (503) with small
    limits, the same with --failed-reward."""
    tmp = tmp_path_factory.mktemp("servers")
    started = {
        "default": Server(tmp, "default"),
        "failing": Server(tmp, "failing", f"reward.cls={FAILING}", "reward.max_retries=0", *SMALL_LIMITS),
        "stand_in": Server(tmp, "stand_in", "--failed-reward", "-1", f"reward.cls={FAILING}", "reward.max_retries=0"),
    }
    try:
        for server in started.values():
            server.wait_ready()
        yield started
    finally:
        for server in started.values():
            server.stop()


def chat_prompt(question: str) -> str:
    return f"<|im_start|>user\n{SECRET} {question}<|im_end|>\n<|im_start|>assistant\n"


def openrlhf_payload(samples: list[tuple[str, str, object]]) -> dict:
    """OpenRLHF's body: query = decoded prompt + response (EOS text included), prompts, labels."""
    prompts = [chat_prompt(q) for q, _, _ in samples]
    return {
        "query": [p + response + "<|im_end|>" for p, (_, response, _) in zip(prompts, samples, strict=True)],
        "prompts": prompts,
        "labels": [label for _, _, label in samples],
    }


def test_health_names_the_reward_class(servers):
    body = httpx.get(f"{servers['default'].url}/health").json()
    assert body == {"status": "ok", "reward_cls": "clinical_rl.rewards.clinical:ClinicalReward"}


def test_correct_wrong_and_no_think(servers):
    payload = openrlhf_payload([
        ("RLQ pain", "<think>rebound at McBurney</think>\nDiagnosis: Acute appendicitis", "Acute appendicitis"),
        ("RLQ pain", "<think>gallstones</think>\nDiagnosis: Acute cholecystitis", "Acute appendicitis"),
        ("RLQ pain", "Diagnosis: Acute appendicitis", "Acute appendicitis"),
    ])
    out = servers["default"].post(payload)
    assert out.status_code == 200, out.text
    body = out.json()
    assert body["rewards"] == [1.0, 0.1, 0.0]
    assert body["scores"] == [1.0, 0.1, 0.0]
    assert body["extra_logs"]["format_ok"] == [1.0, 1.0, 0.0] and body["extra_logs"]["correct"] == [1.0, 0.0, 0.0]
    assert all(len(v) == 3 for v in body["extra_logs"].values())


def test_root_route_and_one_sample_per_request(servers):
    """OpenRLHF >= 0.10 posts one sample per request; `/` is accepted like `/get_reward`."""
    out = servers["default"].post(openrlhf_payload([("wheeze", "<think>reversible</think> Asthma", "asthma")]), "/")
    assert out.status_code == 200, out.text
    assert out.json()["rewards"] == [1.0]


def test_json_labels_carry_the_case(servers):
    case = {"answer": "Asthma", "options": {"A": "COPD", "B": "Asthma"}, "answer_letter": "B", "language": "en"}
    payload = openrlhf_payload([
        ("wheeze", "<think>reversible</think>\nDiagnosis: Asthma", json.dumps(case)),  # JSON object string
        ("wheeze", "<think>reversible</think>\nDiagnosis: COPD", case),  # an object, as a dict-valued label_key
    ])
    out = servers["default"].post(payload)
    assert out.status_code == 200, out.text
    assert out.json()["rewards"] == [1.0, 0.1]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda p: p.pop("prompts"), "prompts: Field required"),
        (lambda p: p.update(query="not a list"), "query: Input should be a valid list"),
        (lambda p: p["labels"].append("extra"), "labels has 3 items but query has 2"),
        (lambda p: p["prompts"].__setitem__(1, "another prompt"), "query[1]: does not start with prompts[1]"),
        (lambda p: p["labels"].__setitem__(1, ""), "labels[1]: empty reference"),
        (lambda p: p["labels"].__setitem__(0, '{"answer": "x", "answer_leter": "B"}'), "labels[0].answer_leter"),
        (lambda p: p["labels"].__setitem__(0, '{"answer": "x",'), "labels[0]: starts with '{' but is not valid"),
        (lambda p: p["labels"].__setitem__(1, {"answer": "x", "options": {"A": "y"}, "answer_letter": "C"}),
         "labels[1]: answer_letter 'C' is not among options"),
    ],
)
def test_malformed_payload_is_422_naming_the_field(servers, mutate, expected):
    payload = openrlhf_payload([("q", "<think>a</think> x", "x"), ("q", "<think>a</think> y", "y")])
    mutate(payload)
    out = servers["default"].post(payload)
    assert out.status_code == 422, out.text
    assert any(expected in problem for problem in out.json()["problems"]), out.json()
    assert SECRET not in out.text  # the error names fields, it does not echo the payload


def test_not_json_at_all_is_422(servers):
    out = httpx.post(f"{servers['default'].url}/get_reward", content=b"query=1", timeout=10,
                     headers={"Content-Type": "application/json"})
    assert out.status_code == 422


def test_failed_sample_is_503_listing_it(servers):
    payload = openrlhf_payload([("q", "<think>a</think> x", "x"), ("q", "<think>BOOM</think> x", "x"),
                                ("q", "<think>b</think> x", "x")])
    out = servers["failing"].post(payload)
    assert out.status_code == 503, out.text
    body = out.json()
    assert body["failed"] == [{"index": 1, "status": "error", "reason": "RuntimeError: verifier exploded"}]
    assert "1 of 3 samples failed" in body["error"] and FAILING in body["error"]


def test_failed_reward_stands_in_and_is_flagged(servers):
    payload = openrlhf_payload([("q", "<think>a</think> x", "x"), ("q", "<think>BOOM</think> x", "x"),
                                ("q", "<think>b</think> x", "x")])
    out = servers["stand_in"].post(payload)
    assert out.status_code == 200, out.text
    body = out.json()
    assert body["rewards"] == [1.0, -1.0, 1.0] and body["scores"] == body["rewards"]
    # numeric details only ("label" is a string); the failed sample has none of its own
    assert body["extra_logs"] == {"seen": [1.0, 0.0, 1.0], "reward_failed": [0.0, 1.0, 0.0]}


def test_log_has_one_line_per_request_and_no_payload(servers):
    server = servers["failing"]
    assert server.post(openrlhf_payload([("q", "<think>a</think> x", "x")] * 2)).status_code == 200
    assert server.post(openrlhf_payload([("q", "<think>a</think> x", "x"), ("q", "BOOM", "x")])).status_code == 503
    time.sleep(0.2)
    log = server.log.read_text()
    assert "POST batch=2 latency=" in log and "status=200 failed=0" in log and "status=503 failed=1" in log
    assert "sample 1: error: RuntimeError: verifier exploded" in log
    assert SECRET not in log and "<think>" not in log


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of LISTEN sockets on `port`, from /proc/net/tcp{,6}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            addr, hex_port = fields[1].split(":")
            if int(hex_port, 16) == port and fields[3] == "0A":
                found.add(addr)
    return found


def test_binds_loopback_only_by_default(servers):
    port = servers["default"].port
    if not Path("/proc/net/tcp").exists():
        pytest.skip("no /proc/net/tcp")
    assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1, nothing else (no 0.0.0.0, no ::)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # this host's outward address, if it has one
        try:
            s.connect(("10.255.255.255", 1))
            outward = s.getsockname()[0]
        except OSError:
            outward = "127.0.0.1"
    if not outward.startswith("127."):
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://{outward}:{port}/health", timeout=2.0)


def test_unusable_reward_class_fails_before_binding():
    port = free_port()
    out = subprocess.run(
        [sys.executable, "-m", "clinical_rl.cli", "serve-reward", "--port", str(port), "reward.cls=my_lab.rewards:J"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2
    assert "reward.cls: cannot import module 'my_lab.rewards'" in out.stderr


def test_strip_suffixes_and_label_parsing():
    assert strip_suffixes("Diagnosis: X</s>\n<|endoftext|> ", ["</s>", "<|endoftext|>"]) == "Diagnosis: X"
    assert strip_suffixes("Diagnosis: X</s>", []) == "Diagnosis: X</s>"
    item = reward_input("P", "R", '{"answer": "Asthma", "icd10": "J45", "language": "zh", "options": {"A": "x"}}',
                        "labels[0]")
    assert (item.reference, item.case.answer, item.case.question) == ("Asthma", "Asthma", "P")
    assert (item.case.icd10, item.case.language, dict(item.case.options)) == ("J45", "zh", {"A": "x"})
    assert reward_input("P", "R", "Asthma", "labels[0]").case is None


# ---------------------------------------------------------------------------------------------------------------
# Limits: body cap (413 before parsing), field caps (413 naming field and index), UTF-8, one log line per rejection


def _log_lines(server: Server, needle: str) -> list[str]:
    time.sleep(0.2)
    return [line for line in server.log.read_text().splitlines() if needle in line]


def test_oversize_body_is_413_before_parsing_and_logged(servers):
    server = servers["default"]
    payload = openrlhf_payload([("q", "<think>a</think> Diagnosis: " + SECRET * 600_000, "x")])  # ~12 MB
    body = json.dumps(payload).encode()
    start = time.perf_counter()
    out = httpx.post(f"{server.url}/get_reward", content=body, timeout=60,
                     headers={"Content-Type": "application/json"})
    assert out.status_code == 413, out.text
    assert time.perf_counter() - start < 5  # not parsed, not scored
    assert out.json() == {"error": f"body of {len(body)} bytes (Content-Length) exceeds --max-body-bytes 4194304",
                          "problems": []}
    lines = _log_lines(server, "-> 413 body of")
    assert len(lines) == 1 and "POST /get_reward from 127.0.0.1:" in lines[0], lines
    assert SECRET not in server.log.read_text()
    assert server.post(openrlhf_payload([("q", "<think>a</think> Asthma", "asthma")])).status_code == 200  # still up


def test_chunked_body_is_counted_while_read(servers):
    server = servers["failing"]  # --max-body-bytes 100000
    chunk = json.dumps(openrlhf_payload([("q", "<think>a</think> " + SECRET * 500, "x")])).encode()

    def body():  # no Content-Length: httpx sends it chunked
        for _ in range(40):
            yield chunk

    out = httpx.post(f"{server.url}/get_reward", content=body(), timeout=60,
                     headers={"Content-Type": "application/json"})
    assert out.status_code == 413, out.text
    assert "(counted while reading) exceeds --max-body-bytes 100000" in out.json()["error"]
    assert len(_log_lines(server, "-> 413 body of")) == 1
    assert SECRET not in server.log.read_text()


def test_oversize_field_is_413_naming_the_field_and_index(servers):
    server = servers["default"]  # --max-field-chars 65536 (default)
    payload = openrlhf_payload([("q", "<think>a</think> x", "x"), ("q", "<think>a</think> " + "y" * 70_000, "y")])
    out = server.post(payload)
    assert out.status_code == 413, out.text
    assert out.json()["problems"] == [f"query[1]: {len(payload['query'][1])} characters exceed --max-field-chars "
                                      "65536"]
    lines = _log_lines(server, "-> 413 request too large: query[1]:")
    assert len(lines) == 1 and "y" * 100 not in lines[0]


def test_custom_limits_name_items_and_label_fields(servers):
    server = servers["failing"]  # --max-items 3 --max-field-chars 4000
    out = server.post(openrlhf_payload([("q", "<think>a</think> x", "x")] * 4))
    assert out.status_code == 413, out.text
    assert out.json()["problems"] == ["query: 4 items exceed --max-items 3"]
    label = {"answer": "x", "question": SECRET * 300, "options": {"A": "x", "B": "z" * 4001}, "answer_letter": "A"}
    out = server.post(openrlhf_payload([("q", "<think>a</think> x", "x"), ("q", "<think>a</think> x", label)]))
    assert out.status_code == 413, out.text
    assert out.json()["problems"] == ["labels[1].question: 6000 characters exceed --max-field-chars 4000",
                                      "labels[1].options.B: 4001 characters exceed --max-field-chars 4000"]
    assert len(_log_lines(server, "-> 413 request too large: query: 4 items")) == 1
    assert len(_log_lines(server, "-> 413 request too large: labels[1].question: 6000 characters")) == 1
    assert SECRET not in server.log.read_text() and "zzzz" not in server.log.read_text()


def test_non_utf8_body_is_400_and_logged(servers):
    server = servers["default"]
    body = json.dumps(openrlhf_payload([("q", "<think>a</think> x", "x")])).encode()
    body = body.replace(b"<think>a", b"<think>\xff\xfea")  # Latin-1 bytes, not UTF-8
    out = httpx.post(f"{server.url}/get_reward", content=body, timeout=10, headers={"Content-Type": "application/json"})
    assert out.status_code == 400, out.text
    assert out.json()["error"].startswith("body is not valid UTF-8 (byte ")
    assert len(_log_lines(server, "-> 400 body is not valid UTF-8")) == 1
    assert SECRET not in server.log.read_text()


def test_every_other_rejection_is_logged(servers):
    server = servers["default"]
    assert httpx.post(f"{server.url}/nowhere", json={}, timeout=10).status_code == 404
    out = httpx.get(f"{server.url}/get_reward", timeout=10)
    assert out.status_code == 405 and out.headers["allow"] == "POST"
    out = httpx.post(f"{server.url}/get_reward", content=f"{SECRET} not json".encode(), timeout=10,
                     headers={"Content-Type": "application/json"})
    assert out.status_code == 422
    assert len(_log_lines(server, "POST /nowhere from 127.0.0.1:")) == 1
    assert any("-> 404" in line for line in _log_lines(server, "POST /nowhere"))
    assert any("-> 405" in line for line in _log_lines(server, "GET /get_reward"))
    invalid = "-> 422 invalid payload: <body>: invalid JSON at character 0 (Expecting value)"
    assert any(invalid in line for line in _log_lines(server, "-> 422"))
    assert SECRET not in server.log.read_text()


def test_limits_below_one_fail_before_binding(capsys):
    from clinical_rl.cli import main

    assert main(["serve-reward", "--port", str(free_port()), "--max-field-chars", "0"]) == 2
    assert "clinical-rl: --max-field-chars must be >= 1, got 0" in capsys.readouterr().err
