"""The LLM-judge path against real servers: `vllm serve` of the embedded model, a dead port, a silent port,
and a rollout-engine actor in a Ray cluster."""

import math
import socket
import threading

import pytest
import torch

from clinical_rl.rl.batch import Group, RolloutBatch, Sample
from clinical_rl.config import AlgoConfig, RewardConfig
from clinical_rl.data.cases import Case
from clinical_rl.rl.experience import make_experience
from clinical_rl.rl.reward_metrics import reward_metrics
from clinical_rl.local_server import free_port
from clinical_rl.rewards.base import RewardInput

pytestmark = pytest.mark.vllm

# Outside the knowledge base, so the partial answer is left to the judge.
CASE = Case("A 13-year-old with sinusitis, fever and a frontal extra-axial collection.", "Frontal epidural empyema")
PARTIAL = "<think>sinusitis, collection on MRI</think>\nDiagnosis: epidural empyema after frontal sinusitis"
RIGHT = "<think>collection on MRI</think>\nDiagnosis: frontal epidural empyema"
WRONG = "<think>headache</think>\nDiagnosis: migraine"


def reward_config(judge: dict, timeout_s: float = 60.0) -> RewardConfig:
    return RewardConfig(cls="clinical_rl.rewards.clinical:ClinicalReward", kwargs={"judge": judge},
                        timeout_s=timeout_s, max_retries=0)


def items(*responses: str) -> list[RewardInput]:
    return [RewardInput("prompt", r, CASE.answer, CASE) for r in responses]


def request_count(server) -> float:
    """vLLM's own Prometheus counter of finished requests: proves a verdict came from the cache."""
    import httpx

    text = httpx.get(server.base_url.removesuffix("/v1") + "/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("vllm:request_success_total"))


@pytest.mark.slow
def test_judge_against_vllm_serve_reads_p_true_and_caches(vllm_server):
    from openai import OpenAI

    from clinical_rl.rewards.guard import RewardActor
    from clinical_rl.rewards.judge import p_true_from_logprobs, render_judge_prompt

    actor = RewardActor(reward_config({"model": "smollm2", "base_url": vllm_server.base_url, "threshold": 0.5}))
    before = request_count(vllm_server)
    first = actor.score(items(PARTIAL, RIGHT, WRONG))
    assert [r.status for r in first] == ["ok"] * 3
    assert [r.details["path"] for r in first] == ["judge", "rule:exact", "rule:disjoint"]
    assert first[0].details["judge_used"] == 1.0 and request_count(vllm_server) == before + 1

    # P(True) is the server's own first-token distribution, renormalised over True/False.
    raw = OpenAI(base_url=vllm_server.base_url, api_key="EMPTY").chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": render_judge_prompt(
            "epidural empyema after frontal sinusitis", CASE.answer, "en")}],
        max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=5)
    top = {c.token: c.logprob for c in raw.choices[0].logprobs.content[0].top_logprobs}
    p_true = p_true_from_logprobs(top)
    assert p_true is not None and 0.0 < p_true < 1.0
    assert first[0].reward == (1.0 if p_true >= 0.5 else 0.1)

    before = request_count(vllm_server)
    again = actor.score(items(PARTIAL))
    assert again[0].details["cache_hit"] == 1.0 and again[0].reward == first[0].reward
    assert request_count(vllm_server) == before


def silent_server() -> tuple[int, threading.Event]:
    """Accepts connections and never answers: a hung judge."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    stop = threading.Event()

    def hold() -> None:
        held = []
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue
        for conn in held:
            conn.close()
        sock.close()

    threading.Thread(target=hold, daemon=True).start()
    return sock.getsockname()[1], stop


@pytest.mark.parametrize("endpoint", ["dead", "silent"])
def test_unreachable_judge_ends_in_error_and_the_step_goes_on(endpoint):
    from clinical_rl.rewards.guard import RewardActor

    stop = None
    if endpoint == "dead":
        port = free_port()  # nothing listens there
    else:
        port, stop = silent_server()
    judge = {"model": "x", "base_url": f"http://127.0.0.1:{port}/v1", "timeout_s": 1.0, "max_retries": 1}
    try:
        results = RewardActor(reward_config(judge)).score(items(PARTIAL, RIGHT, WRONG, RIGHT))
    finally:
        if stop:
            stop.set()
    assert [r.status for r in results] == ["error", "ok", "ok", "ok"]
    reason = results[0].details["error"]
    assert ("APIConnectionError" if endpoint == "dead" else "APITimeoutError") in reason, reason
    assert results[0].reward is None

    # The step trains on the three valid samples; the failed one is masked out and counted.
    samples = [Sample([1, 2], [3, 4], [-0.5, -0.5], "", "stop", group_id=i) for i in range(4)]
    batch = RolloutBatch.from_samples(samples, ["p"] * 4, [CASE] * 4, pad_id=0)
    logp = torch.zeros(4, 4)
    exp = make_experience(AlgoConfig(advantage="grpo", n_samples_per_prompt=4, rollout_batch_size=1,
                                     minibatch_size=4), batch, results, logp, logp, None, max_failed_frac=0.5)
    assert exp.reward_ok.tolist() == [False, True, True, True] and exp.mask[0].sum() == 0
    metrics = reward_metrics([Group(CASE, "p", samples, results)])
    assert metrics["reward/failed_frac"] == 0.25 and math.isfinite(metrics["reward/mean"])


@pytest.mark.slow
@pytest.mark.ray
def test_judge_on_a_rollout_engine_actor_in_the_cluster(vllm_server):
    import ray

    from clinical_rl.rewards.guard import RewardActor
    from clinical_rl.actors.rollout import RolloutEngine
    from clinical_rl.config import RolloutConfig
    from clinical_rl.device import Device
    from clinical_rl.models import resolve_model_path

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=512 * 1024**2)
    try:
        engine = ray.remote(num_cpus=1)(RolloutEngine).options(name="judge_engine").remote(
            str(resolve_model_path("embedded")), RolloutConfig(), Device("cpu"), "float32", 0)
        ray.get(engine.ready.remote())
        in_cluster = RewardActor(reward_config({"backend": "ray_engine", "actor_name": "judge_engine"}, 120.0))
        over_http = RewardActor(reward_config({"model": "smollm2", "base_url": vllm_server.base_url}))
        a, b = in_cluster.score(items(PARTIAL))[0], over_http.score(items(PARTIAL))[0]
        assert a.status == b.status == "ok" and a.details["path"] == "judge"
        assert a.reward == b.reward  # same model, same greedy first token distribution
        ray.get(engine.shutdown.remote())
    finally:
        ray.shutdown()
