"""Multi-turn rollouts: episodes of an environment played on one vLLM engine, token in and token out.

Each episode is its own request stream on the engine's scheduler: when one turn finishes, the environment answers
and the next turn is queued at once, while the other episodes' turns are still decoding (continuous batching), so
no episode waits for the slowest one of the batch. The trajectory is kept as token ids: what the engine generated,
as generated, plus what the environment appended, encoded once; nothing is decoded and re-encoded between turns,
so the trainer scores exactly the tokens that were sampled. The environment's tokens carry loss mask 0.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from clinical_rl.rl.batch import Sample

_PLACEHOLDER = "\u2063OBSERVATION\u2063"  # text no real observation contains, to cut the template around


class Episode(Protocol):
    """What the rollout needs of an environment's episode (clinical_rl/envs/)."""

    def step(self, reply: str) -> str | None:
        """The model's reply of this turn -> the environment's next message, or None when the episode is over."""

    def summary(self) -> Mapping[str, float | str]:
        """What the episode recorded, for the reward (RewardInput.episode) and the logs."""


@dataclass
class _Trajectory:
    episode: Episode
    group_id: int
    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    logp: list[float] = field(default_factory=list)
    turn_lengths: list[int] = field(default_factory=list)
    last_reply: str = ""
    finish_reason: str = "stop"

    def sample(self) -> Sample:
        return Sample(self.prompt_ids, self.response_ids, self.logp, self.last_reply, self.finish_reason,
                      self.group_id, loss_mask=self.loss_mask, turn_lengths=self.turn_lengths,
                      episode=dict(self.episode.summary()))


class ObservationEncoder:
    """Token ids of an environment message appended after the model's turn, in the model's chat template: the
    end of the assistant turn the template adds after the model's end-of-turn token, the user message, and the
    opening of the next assistant turn. Computed by rendering a conversation around a placeholder once."""

    def __init__(self, tokenizer: Any) -> None:
        conversation = [{"role": "user", "content": "question"}, {"role": "assistant", "content": "reply"},
                        {"role": "user", "content": _PLACEHOLDER}]
        text = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        after_reply = text.index("reply", text.index("question")) + len("reply")
        eos = tokenizer.eos_token or ""
        if eos and text.startswith(eos, after_reply):  # the model generated its end-of-turn token itself
            after_reply += len(eos)
        self.before, self.after = text[after_reply:].split(_PLACEHOLDER)
        self.tokenizer = tokenizer

    def __call__(self, message: str) -> list[int]:
        return self.tokenizer(self.before + message + self.after, add_special_tokens=False)["input_ids"]


def run_episodes(engine: Any, encode: ObservationEncoder, starts: list[tuple[list[int], int, Episode]],
                 params: Any, max_model_len: int) -> list[Sample]:
    """Play every episode to its end on `engine` (vLLM's LLMEngine: add_request / step / has_unfinished_requests).

    `starts`: (prompt token ids, group id, a fresh episode) per trajectory. `params`: SamplingParams of one turn
    (n=1, logprobs=0); a turn gets at most params.max_tokens tokens and what is left of `max_model_len`.
    Returns one Sample per start, in order: response_ids = every turn's generated ids and the observations
    between them, loss_mask 1 on generated and 0 on observation tokens, rollout_logp 0 on observation tokens,
    text = the last reply, finish_reason "length" when a turn was cut off (or the context ran out).

    Raises RuntimeError when vLLM ends a request for another reason (abort)."""
    from vllm.inputs import TokensPrompt

    trajectories = [_Trajectory(episode, gid, list(ids)) for ids, gid, episode in starts]
    ids = itertools.count()
    running: dict[str, _Trajectory] = {}

    def submit(t: _Trajectory) -> None:
        context = len(t.prompt_ids) + len(t.response_ids)
        budget = min(params.max_tokens, max_model_len - context)
        if budget <= 0:
            t.finish_reason = "length"
            return
        turn = params.clone()
        turn.max_tokens = budget
        request = f"turn-{next(ids)}"  # outputs carry this id (vLLM adds its own suffix internally)
        engine.add_request(request, TokensPrompt(prompt_token_ids=t.prompt_ids + t.response_ids), turn)
        running[request] = t

    for t in trajectories:
        submit(t)
    while engine.has_unfinished_requests():
        for out in engine.step():
            if not out.finished:
                continue
            t = running.pop(out.request_id)
            if _take_turn(t, out):
                observation = t.episode.step(t.last_reply)
                if observation is not None:
                    appended = encode(observation)
                    t.response_ids += appended
                    t.loss_mask += [0] * len(appended)
                    t.logp += [0.0] * len(appended)
                    submit(t)
    return [t.sample() for t in trajectories]


def _take_turn(t: _Trajectory, out: Any) -> bool:
    """Append a finished turn to its trajectory; whether the episode goes on (a cut-off turn ends it)."""
    comp = out.outputs[0]
    if comp.finish_reason not in ("stop", "length"):
        raise RuntimeError(f"vLLM finished a turn with {comp.finish_reason!r}")
    t.response_ids += list(comp.token_ids)
    t.loss_mask += [1] * len(comp.token_ids)
    t.logp += [step[tok].logprob for tok, step in zip(comp.token_ids, comp.logprobs, strict=True)]
    t.turn_lengths.append(len(comp.token_ids))
    t.last_reply = comp.text
    if comp.finish_reason == "length":
        t.finish_reason = "length"
        return False
    return True
