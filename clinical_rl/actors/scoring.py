"""Per-token log-probabilities and entropies from causal-LM logits, and micro-batched scoring. Pure torch.

Alignment (see `clinical_rl.rl.batch`): position `t` holds the quantity for generating token `t`, so
`logp[:, t] = log p(input_ids[:, t] | input_ids[:, :t])` comes from the logits at position `t - 1`;
position 0 has no prediction and gets 0.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from clinical_rl.algorithms.losses import entropy_from_logits
from clinical_rl.rl.batch import RolloutBatch, trim_to_content

# (input_ids, attention_mask, response_mask) (b, t) -> aligned (b, t) scores; the response mask says where they count
ScoreFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def token_logprobs(logits: Tensor, input_ids: Tensor, temperature: float = 1.0, mask: Tensor | None = None) -> Tensor:
    """log softmax(logits / temperature) at `input_ids`, position by position. (B, T, V), (B, T) -> (B, T) fp32.

    Gather minus logsumexp, one row at a time: besides the logits, at most one row's fp32 (T, V) copy exists,
    where `log_softmax` would allocate a second (B, T, V) tensor (the largest activation of an LLM). With `mask`
    (B, T), only positions where it is nonzero are computed (0 elsewhere): prompts are most of a row's tokens.
    """
    return torch.stack([
        _at(lambda row, ids: row.gather(-1, ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(row, dim=-1),
            row_logits, row_ids, temperature, row_mask)
        for row_logits, row_ids, row_mask in zip(logits, input_ids, _rows_of(mask, logits))
    ])


def _rows_of(mask: Tensor | None, logits: Tensor) -> list[Tensor | None]:
    return [None] * logits.shape[0] if mask is None else list(mask)


def _at(fn: Callable[[Tensor, Tensor], Tensor], row_logits: Tensor, row_ids: Tensor, temperature: float,
        row_mask: Tensor | None) -> Tensor:
    """`fn(fp32 logits / temperature, ids)` of one row, at the masked positions only when a mask is given."""
    if row_mask is None:
        return fn(row_logits.float() / temperature, row_ids)
    where = row_mask.nonzero().squeeze(-1)
    out = torch.zeros(row_ids.shape, dtype=torch.float32, device=row_ids.device)
    return out.index_put((where,), fn(row_logits[where].float() / temperature, row_ids[where]))


def shift_right(x: Tensor) -> Tensor:
    """(B, T-1) predictions of tokens 1..T-1 -> (B, T) aligned to tokens, 0 at position 0."""
    return F.pad(x, (1, 0))


def first_scored_position(mask: Tensor) -> int:
    """Smallest t >= 1 where any row of `mask` (B, T) is nonzero (1 when none is): tokens before it need no logits."""
    columns = mask[:, 1:].any(dim=0).nonzero()
    return 1 + int(columns[0]) if len(columns) else 1


def causal_lm_logits(model: Callable[..., Any], input_ids: Tensor, attention_mask: Tensor, start: int) -> Tensor:
    """(B, T - start, V) logits at positions start-1 .. T-2, i.e. the predictions of tokens start .. T-1.

    `logits_to_keep` makes the HF model run its LM head (hidden x vocabulary, the largest matmul of a small
    model) only there: the prompt, usually half of a row, is read but never projected onto the vocabulary.
    """
    keep = torch.arange(start - 1, input_ids.shape[1] - 1, device=input_ids.device)
    return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=keep).logits


def window_logprobs(logits: Tensor, input_ids: Tensor, start: int, temperature: float = 1.0,
                    mask: Tensor | None = None) -> Tensor:
    """Logits (B, T - start, V) predicting tokens start .. T-1 -> token-aligned logp (B, T) fp32, 0 before `start`.

    `mask` (B, T), aligned to tokens: compute only where it is nonzero (e.g. the response), 0 elsewhere.
    """
    window = None if mask is None else mask[:, start:]
    return F.pad(token_logprobs(logits, input_ids[:, start:], temperature, window), (start, 0))


def window_entropy(logits: Tensor, start: int, temperature: float = 1.0, mask: Tensor | None = None) -> Tensor:
    """Entropy of the distribution each token start .. T-1 was sampled from: (B, T - start, V) -> (B, T) fp32.

    Row by row for the same memory reason as `token_logprobs`; with `mask`, only where it is nonzero.
    """
    ids = torch.zeros(logits.shape[:2], dtype=torch.long, device=logits.device)
    window = _rows_of(None if mask is None else mask[:, start:], logits)
    rows = [_at(lambda row, _: entropy_from_logits(row), row, row_ids, temperature, row_mask)
            for row, row_ids, row_mask in zip(logits, ids, window)]
    return F.pad(torch.stack(rows), (start, 0))


def next_token_logprobs(logits: Tensor, input_ids: Tensor, temperature: float = 1.0,
                        mask: Tensor | None = None) -> Tensor:
    """Full causal-LM logits (B, T, V) -> token-aligned logp (B, T) fp32, logp[:, 0] = 0 (see `window_logprobs`)."""
    return window_logprobs(logits[:, :-1], input_ids, 1, temperature, mask)


def next_token_entropy(logits: Tensor, temperature: float = 1.0, mask: Tensor | None = None) -> Tensor:
    """Full causal-LM logits (B, T, V) -> token-aligned entropy (B, T) fp32, 0 at position 0 (see `window_entropy`)."""
    return window_entropy(logits[:, :-1], 1, temperature, mask)


def micro_batches(lengths: Tensor, micro_batch_size: int) -> list[Tensor]:
    """Row indices in chunks of at most `micro_batch_size`, longest rows first: rows of similar length (tokens,
    `lengths` (B,)) share a chunk, so trimming each chunk to its longest row leaves little padding."""
    return list(lengths.argsort(descending=True, stable=True).split(micro_batch_size))


def score_batch(fn: ScoreFn, batch: RolloutBatch, micro_batch_size: int, device: torch.device) -> Tensor:
    """Run `fn` over micro-batches of `batch` -> (B, T) fp32 on CPU, 0 on padding.

    Each micro-batch is trimmed to its longest row first, so short rows do not pay for the batch width.
    """
    out = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
    for rows in micro_batches(batch.attention_mask.sum(dim=1), micro_batch_size):
        input_ids, attention_mask, response_mask = trim_to_content(
            batch.input_ids[rows], batch.response_mask[rows], attention_mask=batch.attention_mask[rows]
        )
        scores = fn(input_ids.to(device), attention_mask.to(device), response_mask.to(device)).float().cpu()
        out[rows, : input_ids.shape[1]] = scores * attention_mask
    return out
