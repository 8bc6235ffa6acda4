"""Per-token log-probabilities and entropies from causal-LM logits, and micro-batched scoring. Pure torch.

Alignment (see `clinical_rl.batch`): position `t` holds the quantity for generating token `t`, so
`logp[:, t] = log p(input_ids[:, t] | input_ids[:, :t])` comes from the logits at position `t - 1`;
position 0 has no prediction and gets 0.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from clinical_rl.algorithms.losses import entropy_from_logits
from clinical_rl.batch import RolloutBatch, trim_to_content

ScoreFn = Callable[[Tensor, Tensor], Tensor]  # (input_ids, attention_mask) (b, t) -> aligned (b, t) scores


def token_logprobs(logits: Tensor, input_ids: Tensor, temperature: float = 1.0) -> Tensor:
    """log softmax(logits / temperature) at `input_ids`, position by position. (B, T, V), (B, T) -> (B, T) fp32.

    Gather minus logsumexp, one row at a time: besides the logits, at most one row's fp32 (T, V) copy exists,
    where `log_softmax` would allocate a second (B, T, V) tensor (the largest activation of an LLM).
    """
    rows = []
    for row_logits, row_ids in zip(logits, input_ids):
        row = row_logits.float()  # no copy when already fp32
        if temperature != 1.0:
            row = row / temperature
        picked = row.gather(-1, row_ids.unsqueeze(-1)).squeeze(-1)
        rows.append(picked - torch.logsumexp(row, dim=-1))
    return torch.stack(rows)


def shift_right(x: Tensor) -> Tensor:
    """(B, T-1) predictions of tokens 1..T-1 -> (B, T) aligned to tokens, 0 at position 0."""
    return F.pad(x, (1, 0))


def next_token_logprobs(logits: Tensor, input_ids: Tensor, temperature: float = 1.0) -> Tensor:
    """Causal-LM logits -> token-aligned logp. (B, T, V), (B, T) -> (B, T) fp32, logp[:, 0] = 0."""
    return shift_right(token_logprobs(logits[:, :-1], input_ids[:, 1:], temperature))


def next_token_entropy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Entropy of the distribution each token was sampled from. (B, T, V) -> (B, T) fp32, 0 at position 0.

    Row by row for the same memory reason as `token_logprobs`.
    """
    rows = [entropy_from_logits(row[:-1].float() / temperature) for row in logits]
    return shift_right(torch.stack(rows))


def micro_batches(num_rows: int, micro_batch_size: int) -> list[Tensor]:
    """Row indices `0..num_rows-1` in consecutive chunks of at most `micro_batch_size`."""
    return list(torch.arange(num_rows).split(micro_batch_size))


def score_batch(fn: ScoreFn, batch: RolloutBatch, micro_batch_size: int, device: torch.device) -> Tensor:
    """Run `fn` over micro-batches of `batch` -> (B, T) fp32 on CPU, 0 on padding.

    Each micro-batch is trimmed to its longest row first, so short rows do not pay for the batch width.
    """
    out = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
    for rows in micro_batches(len(batch), micro_batch_size):
        input_ids, attention_mask = trim_to_content(batch.input_ids[rows], attention_mask=batch.attention_mask[rows])
        scores = fn(input_ids.to(device), attention_mask.to(device)).float().cpu()
        out[rows, : input_ids.shape[1]] = scores * attention_mask
    return out
