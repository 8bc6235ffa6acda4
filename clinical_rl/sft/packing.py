"""Packing SFT samples into sequences of at most `max_len` tokens, with each sample isolated from its neighbours.

A packed row is samples laid end to end, then padding. Every sample gets position ids from 0 and its own segment
id (its index in the sample list; padding is segment -1), and attention never crosses a segment, so a packed
sample sees exactly what it would see alone. Two ways to enforce that, chosen by the caller (`use_varlen`):
- an explicit (B, 1, T, T) additive mask, block-diagonal causal: transformers 5 passes a 4D mask straight to the
  attention (eager and sdpa), which is what runs on CPU;
- position ids only: transformers derives the segments from where positions restart, which flash-attention turns
  into its variable-length kernel (no T x T mask) on GPU.

Loss: the cross-entropy summed over every label token of the batch, divided by the number of label tokens
(token mean). The first token of each sample gets label IGNORE, so no sample is trained to predict the next
sample's first token; a lone sample never predicts its first token either. Packed and one-by-one runs thus sum
the same terms over the same count: equal loss and gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from clinical_rl.sft.dataset import IGNORE, SFTSample

PADDING_SEGMENT = -1


@dataclass(frozen=True)
class PackedBatch:
    """Rows of packed samples; every tensor is (B, T) long."""

    input_ids: Tensor
    labels: Tensor  # IGNORE on prompts, padding and each sample's first token
    position_ids: Tensor  # 0, 1, ... within each sample (and within the padding)
    segment_ids: Tensor  # index of the sample in the packed list, PADDING_SEGMENT on padding

    @property
    def num_label_tokens(self) -> int:
        return int((self.labels != IGNORE).sum())

    @property
    def num_tokens(self) -> int:
        """Non-padding tokens (what throughput counts)."""
        return int((self.segment_ids != PADDING_SEGMENT).sum())

    def model_inputs(self, use_varlen: bool, dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
        """Keyword arguments of the HF forward; the mask is built in the model's dtype (sdpa requires it)."""
        inputs: dict[str, Any] = {
            "input_ids": self.input_ids.to(device),
            "position_ids": self.position_ids.to(device),
            "use_cache": False,  # with a KV cache transformers no longer reads segments from the position ids
        }
        if not use_varlen:
            inputs["attention_mask"] = block_causal_mask(self.segment_ids.to(device), dtype)
        return inputs


def first_fit_decreasing(lengths: list[int], max_len: int) -> list[list[int]]:
    """Bins of sample indices, each bin's lengths summing to at most `max_len`; longest samples placed first."""
    bins: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        if lengths[i] > max_len:
            raise ValueError(f"sample {i} has {lengths[i]} tokens, more than max_len={max_len}")
        slot = next((b for b, room in enumerate(free) if room >= lengths[i]), None)
        if slot is None:
            bins.append([])
            free.append(max_len)
            slot = len(bins) - 1
        bins[slot].append(i)
        free[slot] -= lengths[i]
    return bins


def collate(samples: list[SFTSample], rows: list[list[int]], pad_id: int) -> PackedBatch:
    """One batch: row r holds `samples[i]` for i in `rows[r]`, in that order, right-padded to the longest row."""
    width = max(sum(len(samples[i]) for i in row) for row in rows)
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    segment_ids = torch.full(shape, PADDING_SEGMENT, dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            end = start + len(samples[i])
            input_ids[r, start:end] = torch.tensor(samples[i].input_ids)
            labels[r, start + 1 : end] = torch.tensor(samples[i].labels[1:])
            position_ids[r, start:end] = torch.arange(end - start)
            segment_ids[r, start:end] = i
            start = end
        position_ids[r, start:] = torch.arange(width - start)  # padding restarts too: it is no sample's context
    return PackedBatch(input_ids, labels, position_ids, segment_ids)


def make_batches(
    samples: list[SFTSample], max_len: int, micro_batch_size: int, pack: bool, pad_id: int
) -> list[PackedBatch]:
    """Rows of packed samples (or one sample per row), `micro_batch_size` rows per batch."""
    rows = first_fit_decreasing([len(s) for s in samples], max_len) if pack else [[i] for i in range(len(samples))]
    return [collate(samples, rows[i : i + micro_batch_size], pad_id) for i in range(0, len(rows), micro_batch_size)]


def block_causal_mask(segment_ids: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, T) segment ids -> (B, 1, T, T) additive mask: 0 where query t may attend key s (s <= t, same segment)."""
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = torch.ones(segment_ids.shape[1], segment_ids.shape[1], dtype=torch.bool, device=segment_ids.device)
    allowed = (same & causal.tril())[:, None]
    blocked = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=segment_ids.device)
    return torch.where(allowed, torch.zeros((), dtype=dtype, device=segment_ids.device), blocked)


def label_loss_sum(logits: Tensor, labels: Tensor) -> Tensor:
    """Next-token cross-entropy (fp32) summed over label tokens. (B, T, V), (B, T) -> scalar.

    Divide by the label-token count (of the whole step, over ranks) for the token mean.
    """
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE,
                           reduction="sum")
