"""Policy / critic / reference trainers on the real stack: DeepSpeed (CPU, gloo) inside Ray actors, tiny Llama.

One DeepSpeed engine per Ray actor (STACK.md: several engines in one process abort at exit). Exactness checks run
in fp32 against plain HF forwards computed here.
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from clinical_rl.data.cases import Case
from clinical_rl.actors.critic import CriticTrainer, load_value_model
from clinical_rl.actors.policy import PolicyTrainer
from clinical_rl.actors.reference import ReferenceModel
from clinical_rl.actors.scoring import (
    causal_lm_logits, first_scored_position, next_token_entropy, next_token_logprobs, token_logprobs, window_entropy,
    window_logprobs,
)
from clinical_rl.actors.trainer_rank import GroupRank
from clinical_rl.algorithms.losses import value_loss
from clinical_rl.rl.batch import Experience, RolloutBatch
from clinical_rl.config import CriticConfig, PolicyConfig, ReferenceConfig
from clinical_rl.config_base import ModelConfig
from clinical_rl.device import Device
from clinical_rl.models import build_tiny_model

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

CPU = Device("cpu")
TEMPERATURE = 0.7
PROMPT_LEN = 4
LENGTHS = [12, 9, 7, 12]  # prompt + response per row; rows 1 and 2 are right-padded
TIMEOUT_S = 240


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture(scope="module")
def ray_cluster():
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(num_cpus=4, object_store_memory=500 * 1024**2, include_dashboard=False)
    yield
    ray.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_batch(seed: int = 0, lengths: list[int] = LENGTHS) -> RolloutBatch:
    gen = torch.Generator().manual_seed(seed)
    b, width = len(lengths), max(lengths)
    input_ids = torch.full((b, width), 2, dtype=torch.long)  # pad id: any token, it is masked
    attention_mask = torch.zeros((b, width), dtype=torch.long)
    response_mask = torch.zeros((b, width))
    for i, n in enumerate(lengths):
        input_ids[i, :n] = torch.randint(10, 2000, (n,), generator=gen)
        attention_mask[i, :n] = 1
        response_mask[i, PROMPT_LEN:n] = 1
    return RolloutBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_mask=response_mask,
        rollout_logp=torch.zeros((b, width)),
        group_ids=torch.arange(b),
        prompts=[""] * b,
        responses=[""] * b,
        cases=[Case("", "")] * b,
        truncated=torch.zeros(b, dtype=torch.bool),
    )


def make_experience(batch: RolloutBatch, logp: torch.Tensor, row_advantages: list[float], **kw) -> Experience:
    """`logp` serves as old and reference logprobs unless `kw` says otherwise."""
    b = len(batch)
    advantages = torch.tensor(row_advantages).unsqueeze(1) * batch.response_mask
    fields = dict(scores=torch.zeros(b), reward_ok=torch.ones(b, dtype=torch.bool), ref_logp=logp, values=None,
                  old_logp=logp)
    fields.update(kw)
    return Experience(rollout=batch, advantages=advantages, returns=torch.zeros_like(logp), **fields)


@torch.no_grad()
def hf_logprobs(model_dir: str, batch: RolloutBatch, temperature: float) -> torch.Tensor:
    """Row by row, unpadded, with plain transformers: the ground truth for padding and temperature handling."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = torch.zeros(batch.input_ids.shape)
    for i, n in enumerate(batch.attention_mask.sum(1).tolist()):
        ids = batch.input_ids[i, :n]
        logits = model(input_ids=ids[None]).logits[0, :-1] / temperature
        out[i, 1:n] = torch.log_softmax(logits, -1).gather(-1, ids[1:, None]).squeeze(-1)
    return out


def start_policy(model_dir: str, *, rank: int = 0, world_size: int = 1, port: int | None = None, **cfg):
    settings = dict(lr=1e-3, micro_batch_size=2, world_size=world_size) | cfg
    kl_in_loss = settings.pop("kl_in_loss", False)
    loss_agg_mode = settings.pop("loss_agg_mode", "token-mean")  # a run resolves it in RunConfig.loss_agg_mode
    return ray.remote(num_cpus=1)(PolicyTrainer).remote(
        ModelConfig(path=model_dir),
        PolicyConfig(**settings),
        CPU,
        model_path=model_dir,
        group=GroupRank(rank, world_size, "127.0.0.1", port or free_port()),
        minibatch_size=4,
        temperature=TEMPERATURE,
        kl_coef=0.1,
        kl_estimator="k3",
        kl_in_loss=kl_in_loss,
        seed=0,
        loss_agg_mode=loss_agg_mode,
        loss_norm_len=max(LENGTHS) - PROMPT_LEN,
    )


def get(refs):
    return ray.get(refs, timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def policy(ray_cluster, tiny_model):
    actor = start_policy(tiny_model)
    assert get(actor.ready.remote())
    yield actor
    ray.kill(actor)


def response_logp(logp: torch.Tensor, batch: RolloutBatch) -> torch.Tensor:  # (B,) summed over the response
    return (logp * batch.response_mask).sum(1)


# --- scoring and reference: in-process, no DeepSpeed -----------------------------------------------------------


def test_token_logprobs_equals_log_softmax():
    logits = torch.randn(3, 5, 11)
    ids = torch.randint(0, 11, (3, 5))
    expected = torch.log_softmax(logits / 0.5, -1).gather(-1, ids[..., None]).squeeze(-1)
    torch.testing.assert_close(token_logprobs(logits, ids, temperature=0.5), expected)


def test_masked_scoring_computes_only_the_masked_positions_and_keeps_gradients():
    logits = torch.randn(2, 6, 11, requires_grad=True)
    ids = torch.randint(0, 11, (2, 6))
    mask = torch.tensor([[0, 0, 0, 1, 1, 0], [0, 1, 1, 1, 1, 1]], dtype=torch.float32)
    full_logp, full_entropy = next_token_logprobs(logits, ids, 0.7), next_token_entropy(logits, 0.7)
    logp, entropy = next_token_logprobs(logits, ids, 0.7, mask), next_token_entropy(logits, 0.7, mask)
    torch.testing.assert_close(logp, full_logp * mask)
    torch.testing.assert_close(entropy, full_entropy * mask)
    (logp.sum() + entropy.sum()).backward()
    assert logits.grad[0, :2].abs().sum() == 0 and logits.grad[0, 2:4].abs().sum() > 0  # token t from logits t-1


@torch.no_grad()
def test_lm_head_runs_only_from_the_first_response_token_and_scores_match_full_logits(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    batch = make_batch(seed=3)
    mask = batch.response_mask.clone()
    mask[0, :7] = 0  # responses start at 7, 4, 5, 4: the window starts at the earliest, 4
    mask[2, :5] = 0
    start = first_scored_position(mask)
    assert start == PROMPT_LEN
    ids, am = batch.input_ids, batch.attention_mask
    logits = causal_lm_logits(model, ids, am, start)
    assert logits.shape[:2] == (len(batch), ids.shape[1] - start)  # no logits for the prompt-only columns
    full = model(input_ids=ids, attention_mask=am).logits
    torch.testing.assert_close(window_logprobs(logits, ids, start, 0.7, mask),
                               next_token_logprobs(full, ids, 0.7, mask))
    torch.testing.assert_close(window_entropy(logits, start, 0.7, mask), next_token_entropy(full, 0.7, mask))
    assert first_scored_position(torch.zeros(2, 5)) == 1  # nothing to score: the whole row (still valid)


def test_reference_logprobs_match_hf(tiny_model):
    batch = make_batch()
    ref = ReferenceModel(
        ModelConfig(path=tiny_model), ReferenceConfig(micro_batch_size=3), CPU, model_path=tiny_model,
        temperature=TEMPERATURE,
    )
    expected = hf_logprobs(tiny_model, batch, TEMPERATURE) * batch.response_mask  # scored on the response only
    torch.testing.assert_close(ref.logprobs(batch), expected, atol=1e-5, rtol=0)


# --- policy -----------------------------------------------------------------------------------------------------


def test_policy_logprobs_match_hf(policy, tiny_model):
    batch = make_batch()
    logp = get(policy.logprobs.remote(batch))
    assert logp.shape == batch.input_ids.shape
    expected = hf_logprobs(tiny_model, batch, TEMPERATURE) * batch.response_mask  # scored on the response only
    torch.testing.assert_close(logp, expected, atol=1e-5, rtol=0)


def test_positive_advantages_raise_logp(policy):
    batch = make_batch(seed=1)
    before = get(policy.logprobs.remote(batch))
    metrics = get(policy.update.remote(make_experience(batch, before, [1.0] * 4), torch.arange(4)))
    after = get(policy.logprobs.remote(batch))
    assert (response_logp(after, batch) > response_logp(before, batch)).all()
    expected = {"loss/policy", "policy/clipfrac", "policy/approx_kl", "policy/grad_norm",
                "policy/lr", "perf/policy_tokens_per_s"}
    # No kl in the loss, no entropy bonus (its full-vocabulary pass is skipped), old logp given: none of these.
    absent = {"kl/loss", "policy/entropy", "rollout/logp_mismatch", "rollout/tis_weight_mean"}
    assert expected <= metrics.keys() and not absent & metrics.keys()
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["loss/policy"] == pytest.approx(-1.0) and metrics["policy/grad_norm"] > 0


def test_single_on_policy_pass_without_old_logp_equals_scoring_it_first(ray_cluster, tiny_model):
    """`old_logp=None` (AlgoConfig.scores_old_policy False) takes pi_old as the update's own detached forward: in
    fp32 that is the same number the separate scoring pass gives, so both updates land on the same weights."""
    batch = replace(make_batch(seed=4), rollout_logp=make_batch(seed=4).response_mask * -1.0)
    scored, unscored = start_policy(tiny_model), start_policy(tiny_model)
    old = get(scored.logprobs.remote(batch))
    advantages = [1.0, -0.5, 0.25, -1.0]
    with_old = get(scored.update.remote(make_experience(batch, old, advantages), torch.arange(4)))
    without = get(unscored.update.remote(make_experience(batch, old, advantages, old_logp=None), torch.arange(4)))
    torch.testing.assert_close(get(unscored.logprobs.remote(batch)), get(scored.logprobs.remote(batch)), atol=1e-6,
                               rtol=0)
    assert without["loss/policy"] == pytest.approx(with_old["loss/policy"], abs=1e-6)
    # The trainer reports the engine/trainer mismatch itself when no scoring pass did: |logp - (-1)|.
    mask = batch.response_mask.bool()
    assert without["rollout/logp_mismatch"] == pytest.approx((old[mask] + 1.0).abs().mean().item(), abs=1e-5)
    ray.kill(scored), ray.kill(unscored)


def test_save_pretrained_roundtrip(policy, tmp_path: Path):
    batch = make_batch(seed=2)
    out = tmp_path / "policy"
    get(policy.save_pretrained.remote(str(out)))
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    torch.testing.assert_close(hf_logprobs(str(out), batch, TEMPERATURE) * batch.response_mask, get(policy.logprobs.remote(batch)),
                               atol=1e-5, rtol=0)


def test_masked_row_has_no_effect_and_negative_advantages_lower_logp(ray_cluster, tiny_model):
    batch_b = make_batch(seed=3)
    other = make_batch(seed=4)  # same lengths, different tokens: only row 3 is taken from it
    batch_c = make_batch(seed=3)
    batch_c.input_ids[3] = other.input_ids[3]
    reward_ok = torch.tensor([True, True, True, False])  # row 3 failed its reward: Experience.mask is 0 there
    actors = [start_policy(tiny_model), start_policy(tiny_model)]
    try:
        olds = get([a.logprobs.remote(b) for a, b in zip(actors, (batch_b, batch_c))])
        exps = [
            make_experience(b, old, [-1.0, -1.0, -1.0, sign * 1e3], reward_ok=reward_ok)
            for b, old, sign in zip((batch_b, batch_c), olds, (1, -1))
        ]
        get([a.update.remote(e, torch.arange(4)) for a, e in zip(actors, exps)])
        after_b, after_c = get([a.logprobs.remote(batch_b) for a in actors])
    finally:
        for a in actors:
            ray.kill(a)
    torch.testing.assert_close(after_b, after_c, atol=1e-6, rtol=0)
    assert (response_logp(after_b, batch_b)[:3] < response_logp(olds[0], batch_b)[:3]).all()


@pytest.mark.parametrize("loss", [
    {},
    # the sequence-level ratio, a per-sequence aggregation (global sequence count) and the dual clip
    {"loss_mode": "gspo", "loss_agg_mode": "seq-mean-token-sum-norm", "dual_clip_c": 3.0},
], ids=["vanilla-token-mean", "gspo-seq-mean-token-sum-norm"])
def test_zero3_world_size_2_matches_world_size_1(ray_cluster, tiny_model, tmp_path: Path, loss: dict):
    """Global token and sequence counts make sharding invisible: 2 ranks x 2 rows (ZeRO-3) == 1 rank x 4 rows."""
    batch = make_batch(seed=5)
    extra = dict(entropy_coef=0.01, kl_in_loss=True) | loss  # every loss term takes part
    single = start_policy(tiny_model, **extra)
    port = free_port()
    ranks = [start_policy(tiny_model, rank=r, world_size=2, port=port, zero_stage=3, micro_batch_size=1, **extra)
             for r in range(2)]
    try:
        old = get(single.logprobs.remote(batch))
        exp = make_experience(batch, old, [1.0, -0.5, 2.0, -1.5], ref_logp=old - 0.1)
        index = torch.arange(4)
        m1, *m2 = get([single.update.remote(exp, index)] + [a.update.remote(exp, index) for a in ranks])
        lp1, *lp2 = get([single.logprobs.remote(batch)] + [a.logprobs.remote(batch) for a in ranks])
        get([a.save_pretrained.remote(str(tmp_path / "ws2")) for a in ranks])
    finally:
        for a in [single, *ranks]:
            ray.kill(a)
    assert len(m2) == 2 and all("kl/loss" in m and math.isfinite(m["loss/policy"]) for m in m2)
    assert m2[0]["policy/grad_norm"] == pytest.approx(m1["policy/grad_norm"], rel=1e-4)
    torch.testing.assert_close(lp2[0], lp2[1], atol=0, rtol=0)
    torch.testing.assert_close(lp2[0], lp1, atol=1e-4, rtol=0)
    assert (lp1 - old).abs().max() > 1e-2  # the step did move the policy
    torch.testing.assert_close(hf_logprobs(str(tmp_path / "ws2"), batch, TEMPERATURE) * batch.response_mask, lp1, atol=1e-4, rtol=0)


# --- critic -----------------------------------------------------------------------------------------------------


def test_critic_values_alignment_updates_and_save(ray_cluster, tiny_model, tmp_path: Path):
    batch = make_batch(seed=6)
    cfg = CriticConfig(lr=1e-3, micro_batch_size=2, clip_value=0.2)
    critic = ray.remote(num_cpus=1)(CriticTrainer).remote(
        ModelConfig(path=tiny_model), cfg, CPU, model_path=tiny_model,
        group=GroupRank(0, 1, "127.0.0.1", free_port()), minibatch_size=4, seed=0,
    )
    changed = make_batch(seed=6)
    t = 6
    changed.input_ids[:, t] = (changed.input_ids[:, t] + 1) % 2000
    returns = batch.response_mask * torch.tensor([1.0, -1.0, 0.5, 2.0]).unsqueeze(1)
    try:
        values, values_changed = get([critic.values.remote(batch), critic.values.remote(changed)])
        losses, metrics = [], {}
        for _ in range(6):
            old = get(critic.values.remote(batch))
            losses.append(value_loss(old, old, returns, batch.response_mask, None)[0].item())
            exp = replace(make_experience(batch, torch.zeros_like(old), [0.0] * 4, values=old), returns=returns)
            metrics = get(critic.update.remote(exp, torch.arange(4)))
        final = get(critic.values.remote(batch))
        get(critic.save_pretrained.remote(str(tmp_path / "critic")))
    finally:
        ray.kill(critic)
    # values[:, t] = V(state before token t): changing token t changes values from t+1 on, not before.
    assert values.shape == batch.input_ids.shape
    assert (values[:, 0] == 0).all() and (values * (1 - batch.attention_mask)).abs().sum() == 0
    torch.testing.assert_close(values[:, : t + 1], values_changed[:, : t + 1], atol=1e-6, rtol=0)
    real = batch.attention_mask[:, t + 1].bool()  # rows still going at t+1 (row 2 ends at 7 tokens)
    assert ((values[real, t + 1] - values_changed[real, t + 1]).abs() > 1e-6).all()
    assert losses[-1] < 0.5 * losses[0], losses
    assert {"loss/value", "critic/clipfrac", "critic/grad_norm", "critic/values_mean"} <= metrics.keys()
    # The saved directory reloads as base model + value head and gives the same values.
    reloaded = load_value_model(str(tmp_path / "critic"), ModelConfig(path=tiny_model)).eval()
    with torch.no_grad():
        again = reloaded(batch.input_ids, batch.attention_mask) * batch.attention_mask
    torch.testing.assert_close(again, final, atol=1e-5, rtol=0)
