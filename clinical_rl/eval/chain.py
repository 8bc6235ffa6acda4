"""Chain benchmarks in `clinical-rl eval`: each case is one episode of the diagnostic chain (`envs/`), played with
the model through the same `ChatBackend` as one-turn benchmarks (vLLM engine actors or an endpoint).

    messages = [system, user: episode.first_message()]       # the one-turn prompt, with the environment's turn
    per turn, over the episodes still running:              # one batched `chat_in_chunks` call per turn
        reply = model.chat(messages)                         # greedy, eval.max_new_tokens per reply
        messages += [assistant: reply]; observation = episode.step(reply)
        observation is None: the episode is over, `reply` is the final one (judged as a one-turn reply)
        else: messages += [user: observation]

Turn-synchronous batching is simpler than RL's per-episode streams (`rl/multi_turn.py`) and costs only some idle
engine time while the longest reply of a turn finishes: for evaluation, results matter, not throughput. Messages
are text (the chat template of the engine or endpoint renders them), not token ids: nothing is trained on them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from clinical_rl.config_stages import EvalConfig
from clinical_rl.data.cases import Case
from clinical_rl.envs.chain_cases import ChainCase
from clinical_rl.envs.diagnostic_chain import DiagnosticChainConfig, Episode
from clinical_rl.eval.runner import ErrorStreak, chat_in_chunks, conversation
from clinical_rl.llm_client import ChatBackend, ChatReply, Conversation


@dataclasses.dataclass
class Played:
    """One case's episode as played: the environment's state, the conversation so far and the reply to judge
    (the final one, or the exception of the request that failed and ended the episode early)."""

    episode: Episode
    messages: Conversation
    final: ChatReply | Exception | None = None

    def summary(self) -> dict[str, Any]:
        """`Episode.summary()` for `Prediction.episode`: without the final reply (it is the prediction's output);
        `ended_by` "error" when a failed request cut the episode short."""
        summary: dict[str, Any] = {k: v for k, v in self.episode.summary().items() if k != "final_reply"}
        if isinstance(self.final, Exception):
            summary["ended_by"] = "error"
        return summary


def play_episodes(backend: ChatBackend, cases: Sequence[Case], env: DiagnosticChainConfig, ev: EvalConfig,
                  label: str) -> list[Played]:
    """Play one episode of `env` per case, all cases' turns batched together; one `Played` per case, in order.

    A failed request ends that case's episode (its `final` is the exception, an error when judged); the
    consecutive-error cutoff of `chat_in_chunks` counts across turns. Each episode ends after at most
    `env.max_turns` replies (the environment says so).

    Raises:
        TypeError: a case that is not a `ChainCase` (a chain benchmark loads chain cases).
    """
    for case in cases:
        if not isinstance(case, ChainCase):
            raise TypeError(f"case {case.id!r} is a {type(case).__name__}, not a ChainCase: a chain benchmark plays "
                            "chain cases (envs/chain_cases.py)")
    played = []
    for case in cases:
        episode = Episode(case, env)  # type: ignore[arg-type]
        # The one-turn prompt (system instruction, or cot_prompt's user turn) with the environment's first turn
        # as the case text, as RL rollouts render it (`rl/rollouts.py`).
        played.append(Played(episode, conversation(dataclasses.replace(case, question=episode.first_message()), ev)))
    streak, turn = ErrorStreak(), 0
    while running := [p for p in played if p.final is None]:
        turn += 1
        replies = chat_in_chunks(backend, [p.messages for p in running], ev, f"{label} turn {turn}", streak)
        for p, reply in zip(running, replies, strict=True):
            _take(p, reply)
    return played


def _take(played: Played, reply: ChatReply | Exception) -> None:
    """Give one turn's reply to its episode: the episode ends on a failed request or when the environment says
    so; otherwise the reply and the environment's observation join the conversation."""
    if isinstance(reply, Exception):
        played.final = reply
        return
    played.messages.append({"role": "assistant", "content": reply.text})
    observation = played.episode.step(reply.text)
    if observation is None:
        played.final = reply
    else:
        played.messages.append({"role": "user", "content": observation})
