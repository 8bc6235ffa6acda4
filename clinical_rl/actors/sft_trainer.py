"""SFT trainer: one data-parallel rank of supervised fine-tuning on packed long-CoT samples, in a DeepSpeed engine.

A plain class; the caller wraps it with `ray.remote(...)` (one engine per actor process). Engine setup is the
policy trainer's (`deepspeed_engine`), plus a cosine learning-rate schedule with linear warmup. Every batch is one
optimizer step; its loss is the token mean over the label tokens of all ranks' batches of that step (the count
is all-reduced, and `backward_step` turns DeepSpeed's rank average into a sum), so sharding rows over ranks
leaves the update unchanged. Each rank must get the same number of batches (ZeRO collectives line up per step).
"""

from __future__ import annotations

import math
import time

import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM, get_cosine_schedule_with_warmup

from clinical_rl.actors.deepspeed_engine import backward_step, build_engine, load_hf_model
from clinical_rl.actors.trainer_rank import GroupRank, TrainerRank
from clinical_rl.config import SFTConfig
from clinical_rl.config_base import ModelConfig
from clinical_rl.device import Device, torch_dtype
from clinical_rl.sft.packing import PackedBatch, label_loss_sum


class SFTTrainer(TrainerRank):
    """Next-token cross-entropy on thinking + response tokens, evaluation loss, and HF export for one rank."""

    def __init__(
        self,
        model: ModelConfig,
        cfg: SFTConfig,
        device: Device,
        *,
        model_path: str,
        group: GroupRank,
        steps_per_epoch: int,
        seed: int,
    ) -> None:
        super().__init__(cfg, device, model_path, group, seed)
        self.cfg: SFTConfig = cfg
        self.dtype = torch_dtype(model.dtype)
        self.use_varlen = device.is_gpu  # GPU: flash-attention varlen from position ids; CPU: explicit 4D mask
        hf = load_hf_model(AutoModelForCausalLM, model_path, model, cfg.gradient_checkpointing)
        self.engine = build_engine(hf, cfg, model.dtype, grad_accum_steps=1)
        total = cfg.epochs * steps_per_epoch
        # DeepSpeed steps `engine.lr_scheduler` after each applied optimizer step (not after fp16-overflow skips).
        self.engine.lr_scheduler = get_cosine_schedule_with_warmup(
            self.engine.basic_optimizer, math.ceil(cfg.warmup_ratio * total), total
        )

    def _loss_sum(self, batch: PackedBatch) -> torch.Tensor:
        logits = self.engine(**batch.model_inputs(self.use_varlen, self.dtype, self.torch_device)).logits
        return label_loss_sum(logits, batch.labels.to(self.torch_device))

    def _all_ranks(self, *values: float) -> list[float]:
        """Sum of each value over ranks (fp64 so token counts stay exact)."""
        totals = torch.tensor(values, dtype=torch.float64, device=self.torch_device)
        dist.all_reduce(totals)
        return totals.tolist()

    def train_steps(self, batches: list[PackedBatch]) -> dict[str, float]:
        """One optimizer step per batch -> token-mean loss (all ranks), last lr, mean grad norm, tokens/s (rank)."""
        start = time.perf_counter()
        self.engine.train()
        loss_sum, label_tokens, seen_tokens, lr = 0.0, 0.0, 0.0, math.nan
        norms: list[float] = []
        for batch in batches:
            (step_tokens,) = self._all_ranks(batch.num_label_tokens)
            lr = float(self.engine.get_lr()[0])  # the rate this step applies (the scheduler moves it after)
            loss = self._loss_sum(batch)
            # No accumulation: every batch ends at an optimizer step, so backward_step always returns its norm.
            norms.append(float(backward_step(self.engine, loss / max(step_tokens, 1.0), self.world_size)))
            loss_sum += loss.item()
            label_tokens += batch.num_label_tokens
            seen_tokens += batch.num_tokens
        loss_sum, label_tokens = self._all_ranks(loss_sum, label_tokens)
        return {
            "sft/loss": loss_sum / max(label_tokens, 1.0),
            "sft/lr": lr,
            "sft/grad_norm": sum(norms) / max(len(norms), 1),
            "sft/label_tokens": label_tokens,
            "perf/sft_tokens_per_s": seen_tokens / (time.perf_counter() - start),
        }

    @torch.no_grad()
    def evaluate_loss(self, batches: list[PackedBatch]) -> float:
        """Token-mean loss over the label tokens of all ranks' batches. Collective under ZeRO-3: call every rank."""
        self.engine.eval()
        loss_sum = sum(self._loss_sum(batch).item() for batch in batches)
        loss_sum, label_tokens = self._all_ranks(loss_sum, sum(b.num_label_tokens for b in batches))
        return loss_sum / max(label_tokens, 1.0)
