"""Packing: bin layout, position and segment ids, and packed == one-by-one (loss, gradients, isolation) in fp32."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clinical_rl.models import build_tiny_model, train_tiny_tokenizer
from clinical_rl.sft.dataset import IGNORE, SFTSample
from clinical_rl.sft.packing import (
    PADDING_SEGMENT,
    block_causal_mask,
    collate,
    first_fit_decreasing,
    label_loss_sum,
    make_batches,
)

NEG = torch.finfo(torch.float32).min


def sample(n: int, prompt: int, seed: int) -> SFTSample:
    ids = torch.randint(3, 200, (n,), generator=torch.Generator().manual_seed(seed)).tolist()
    return SFTSample(ids, [IGNORE] * prompt + ids[prompt:])


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    root: Path = tmp_path_factory.mktemp("packing")
    tokenizer = train_tiny_tokenizer(["a tiny corpus for a tiny tokenizer"] * 4, root / "tokenizer", vocab_size=300)
    model_dir = build_tiny_model(root / "model", tokenizer)
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def test_first_fit_decreasing_golden():
    assert first_fit_decreasing([5, 3, 7, 2, 4], max_len=8) == [[2], [0, 1], [4, 3]]
    assert first_fit_decreasing([4, 4, 4], max_len=8) == [[0, 1], [2]]
    with pytest.raises(ValueError, match="sample 1 has 9 tokens, more than max_len=8"):
        first_fit_decreasing([3, 9], max_len=8)


def test_collate_positions_segments_and_labels():
    samples = [SFTSample([10, 11, 12], [IGNORE, 11, 12]), SFTSample([20, 21], [20, 21]), SFTSample([30], [30])]
    batch = collate(samples, [[0, 1], [2]], pad_id=0)
    assert batch.input_ids.tolist() == [[10, 11, 12, 20, 21], [30, 0, 0, 0, 0]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1], [0, 0, 1, 2, 3]]
    assert batch.segment_ids.tolist() == [[0, 0, 0, 1, 1], [2, -1, -1, -1, -1]]
    # Each sample's first token is never a target, so no sample learns to predict its packed neighbour.
    assert batch.labels.tolist() == [[IGNORE, 11, 12, IGNORE, 21], [IGNORE] * 5]
    assert (batch.num_label_tokens, batch.num_tokens) == (3, 6)


def test_make_batches_packs_or_not():
    samples = [sample(n, 1, seed=n) for n in (5, 3, 7, 2, 4)]
    packed = make_batches(samples, max_len=8, micro_batch_size=2, pack=True, pad_id=0)
    assert [b.input_ids.shape for b in packed] == [(2, 8), (1, 6)]
    assert packed[0].segment_ids[1].tolist() == [0] * 5 + [1] * 3
    single = make_batches(samples, max_len=8, micro_batch_size=2, pack=False, pad_id=0)
    assert [b.input_ids.shape for b in single] == [(2, 5), (2, 7), (1, 4)]


def test_block_causal_mask_golden():
    mask = block_causal_mask(torch.tensor([[0, 0, 1, PADDING_SEGMENT]]), torch.float32)
    allowed = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    assert mask.shape == (1, 1, 4, 4) and mask.dtype == torch.float32
    torch.testing.assert_close(mask[0, 0], torch.where(allowed, 0.0, NEG))


def loss_and_grads(model: torch.nn.Module, loss: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("use_varlen", [False, True])
def test_packed_equals_one_by_one(tiny_lm: torch.nn.Module, use_varlen: bool):
    """The 4D mask (CPU path) and the position-ids path (flash-attention varlen on GPU) both isolate samples."""
    samples = [sample(n, p, seed=n) for n, p in ((9, 3), (6, 2), (12, 5), (4, 1), (7, 7))]  # last: no target
    batches = make_batches(samples, max_len=16, micro_batch_size=8, pack=True, pad_id=0)
    assert len(batches) == 1 and batches[0].input_ids.shape[0] < len(samples)  # really packed
    batch = batches[0]

    logits = tiny_lm(**batch.model_inputs(use_varlen, torch.float32, torch.device("cpu"))).logits
    packed = loss_and_grads(tiny_lm, label_loss_sum(logits, batch.labels) / batch.num_label_tokens)

    total = sum(sum(label != IGNORE for label in s.labels[1:]) for s in samples)
    alone = sum(label_loss_sum(tiny_lm(input_ids=torch.tensor([s.input_ids])).logits, torch.tensor([s.labels]))
                for s in samples)
    one_by_one = loss_and_grads(tiny_lm, alone / total)

    assert batch.num_label_tokens == total
    assert packed[0] == pytest.approx(one_by_one[0], abs=1e-5)
    for name, grad in packed[1].items():
        torch.testing.assert_close(grad, one_by_one[1][name], atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize("use_varlen", [False, True])
@torch.no_grad()
def test_segments_do_not_attend_across(tiny_lm: torch.nn.Module, use_varlen: bool):
    first, second = sample(6, 2, seed=1), sample(5, 2, seed=2)
    changed = SFTSample([t + 1 for t in second.input_ids], second.labels)
    logits = [
        tiny_lm(**collate([first, other], [[0, 1]], pad_id=0).model_inputs(use_varlen, torch.float32,
                                                                           torch.device("cpu"))).logits
        for other in (second, changed)
    ]
    torch.testing.assert_close(logits[0][:, :6], logits[1][:, :6], atol=0, rtol=0)
    assert (logits[0][:, 6:] - logits[1][:, 6:]).abs().max() > 1e-3  # the perturbation is visible where it should be
    alone = tiny_lm(input_ids=torch.tensor([first.input_ids])).logits
    torch.testing.assert_close(logits[0][:, :6], alone, atol=1e-5, rtol=0)
