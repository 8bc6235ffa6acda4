"""Typed data that moves between roles (as Ray ObjectRefs): samples, rollout batches and experience.

Every per-token tensor is `(B, T)` over the concatenated prompt + response, right-padded, so position `t` holds
token `t` and the quantity *for generating* token `t` (its logprob, value, advantage). Prompt and padding
positions, and in multi-turn episodes the environment's tokens between turns, are 0 in `response_mask`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from clinical_rl.data.cases import Case
from clinical_rl.rewards.base import RewardResult


@dataclass(frozen=True)
class Sample:
    """One generated response, as a rollout engine returns it."""

    prompt_ids: list[int]
    response_ids: list[int]
    rollout_logp: list[float]  # logprob of each response token under the engine's weights
    text: str
    finish_reason: str  # "stop" (EOS / stop string) or "length"
    group_id: int  # index of the prompt in the step's batch; the n samples of a prompt share it
    # Multi-turn episodes (rl/multi_turn.py): 1 on the tokens the model generated, 0 on what the environment
    # appended between turns (same length as response_ids); None: every response token is generated.
    loss_mask: list[int] | None = None
    turn_lengths: list[int] | None = None  # generated tokens of each model turn
    episode: dict[str, float | str] | None = None  # what the environment recorded (RewardInput.episode)


@dataclass(frozen=True)
class Group:
    """The n scored samples of one prompt."""

    case: Case
    prompt: str
    samples: list[Sample]
    results: list[RewardResult]  # one per sample, same order


@dataclass(frozen=True)
class RolloutBatch:
    """A padded batch of samples plus what the reward needs."""

    input_ids: Tensor  # (B, T) long: prompt + response, right-padded with pad_id
    attention_mask: Tensor  # (B, T) long: 1 on real tokens
    response_mask: Tensor  # (B, T) float: 1 on generated response tokens (0 on what an environment appended)
    rollout_logp: Tensor  # (B, T) float: engine logprob of each response token, 0 elsewhere
    group_ids: Tensor  # (B,) long
    prompts: list[str]  # (B,) prompt text as the model saw it (chat template applied)
    responses: list[str]  # (B,) decoded response
    cases: list[Case]  # (B,) the sample's case: gold answer, options, ICD-10, language
    truncated: Tensor  # (B,) bool: hit max_new_tokens without EOS
    episodes: list[dict[str, float | str] | None] = field(default_factory=list)  # (B,) multi-turn only, else []

    @staticmethod
    def from_samples(samples: list[Sample], prompts: list[str], cases: list[Case], pad_id: int) -> RolloutBatch:
        """Pad samples into tensors; `prompts`/`cases` are indexed by `Sample.group_id`."""
        width = max(len(s.prompt_ids) + len(s.response_ids) for s in samples)
        b = len(samples)
        input_ids = torch.full((b, width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((b, width), dtype=torch.long)
        response_mask = torch.zeros((b, width))
        rollout_logp = torch.zeros((b, width))
        for i, s in enumerate(samples):
            p, r = len(s.prompt_ids), len(s.response_ids)
            input_ids[i, : p + r] = torch.tensor(s.prompt_ids + s.response_ids)
            attention_mask[i, : p + r] = 1
            response_mask[i, p : p + r] = 1 if s.loss_mask is None else torch.tensor(s.loss_mask, dtype=torch.float)
            rollout_logp[i, p : p + r] = torch.tensor(s.rollout_logp)
        return RolloutBatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            response_mask=response_mask,
            rollout_logp=rollout_logp,
            group_ids=torch.tensor([s.group_id for s in samples]),
            prompts=[prompts[s.group_id] for s in samples],
            responses=[s.text for s in samples],
            cases=[cases[s.group_id] for s in samples],
            truncated=torch.tensor([s.finish_reason == "length" for s in samples]),
            episodes=[s.episode for s in samples] if any(s.episode is not None for s in samples) else [],
        )

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def response_lengths(self) -> Tensor:  # (B,)
        return self.response_mask.sum(dim=1)

    def select(self, index: Tensor) -> RolloutBatch:
        """Rows `index` (a rank's shard)."""
        rows = index.tolist()
        return replace(
            self,
            input_ids=self.input_ids[index],
            attention_mask=self.attention_mask[index],
            response_mask=self.response_mask[index],
            rollout_logp=self.rollout_logp[index],
            group_ids=self.group_ids[index],
            prompts=[self.prompts[i] for i in rows],
            responses=[self.responses[i] for i in rows],
            cases=[self.cases[i] for i in rows],
            truncated=self.truncated[index],
            episodes=[self.episodes[i] for i in rows] if self.episodes else [],
        )


@dataclass(frozen=True)
class Experience:
    """A rollout batch with everything the PPO update needs."""

    rollout: RolloutBatch
    scores: Tensor  # (B,) outcome reward; 0 where reward_ok is False (and masked out)
    # (B,) bool: the sample is trained on: the verifier returned a valid reward (and, with
    # algo.overlong.mask_truncated, the response ended before the length cap)
    reward_ok: Tensor
    # (B, T) log pi_old(token) from the policy trainer before the update; None when the update is a single
    # on-policy pass (`AlgoConfig.scores_old_policy`), where pi_old is the trainer's own detached logp.
    old_logp: Tensor | None
    ref_logp: Tensor | None  # (B, T) log pi_ref(token); None without a KL penalty (no reference model)
    values: Tensor | None  # (B, T) critic values V(s_t) before the update; None without a critic
    advantages: Tensor  # (B, T)
    returns: Tensor  # (B, T) value targets
    extras: dict[str, Tensor] = field(default_factory=dict)  # (B,) per-sample kl and overlong_penalty, for logging

    @property
    def mask(self) -> Tensor:
        """(B, T) loss mask: response tokens of samples with a valid reward."""
        return self.rollout.response_mask * self.reward_ok.unsqueeze(1).to(self.rollout.response_mask.dtype)

    def select(self, index: Tensor) -> Experience:
        """Rows `index` (a minibatch or a rank's shard)."""
        return Experience(
            rollout=self.rollout.select(index),
            scores=self.scores[index],
            reward_ok=self.reward_ok[index],
            old_logp=None if self.old_logp is None else self.old_logp[index],
            ref_logp=None if self.ref_logp is None else self.ref_logp[index],
            values=None if self.values is None else self.values[index],
            advantages=self.advantages[index],
            returns=self.returns[index],
            extras={k: v[index] for k, v in self.extras.items()},
        )

def shard_rows(num_rows: int, rank: int, world_size: int) -> Tensor:
    """Contiguous rows of one data-parallel rank; equal sizes are required so ZeRO collectives line up."""
    if num_rows % world_size:
        raise ValueError(f"{num_rows} rows cannot be split evenly over {world_size} ranks")
    per = num_rows // world_size
    return torch.arange(rank * per, (rank + 1) * per)


def trim_to_content(input_ids: Tensor, *tensors: Tensor, attention_mask: Tensor) -> tuple[Tensor, ...]:
    """Drop trailing all-padding columns of a micro-batch (saves compute when rows are short)."""
    width = int(attention_mask.sum(dim=1).max().item())
    return tuple(t[:, :width] for t in (input_ids, attention_mask, *tensors))
