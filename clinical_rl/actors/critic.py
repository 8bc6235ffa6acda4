"""Critic trainer: a base transformer plus a linear value head, one data-parallel rank in a DeepSpeed engine.

A plain class; the driver wraps it with `ray.remote(...)` at launch. A saved critic is a HF directory of the base
model plus `value_head.safetensors`; pointing `critic.init_from` at it reloads both.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import AutoModel

from clinical_rl.actors.deepspeed_engine import (
    backward_step, build_engine, grad_accum_steps, load_hf_model, save_hf, train_minibatch,
)
from clinical_rl.actors.trainer_rank import GroupRank, TrainerRank
from clinical_rl.actors.scoring import score_batch, shift_right
from clinical_rl.algorithms.losses import masked_sum, value_loss
from clinical_rl.rl.batch import Experience, RolloutBatch, trim_to_content
from clinical_rl.config import CriticConfig
from clinical_rl.config_base import ModelConfig
from clinical_rl.device import Device, torch_dtype

VALUE_HEAD_FILE = "value_head.safetensors"


class ValueModel(nn.Module):
    """V(state before token t) for every position: base transformer -> hidden (B, T, H) -> head -> (B, T)."""

    def __init__(self, base: nn.Module, value_head: nn.Linear) -> None:
        super().__init__()
        self.base = base
        self.value_head = value_head

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, T) ids, mask -> (B, T) values; the state before token t is the prefix read up to t-1, so
        values[:, t] is the head's output at position t-1 and values[:, 0] = 0."""
        hidden = self.base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        return shift_right(self.value_head(hidden[:, :-1]).squeeze(-1))


def load_value_model(path: str, model: ModelConfig, gradient_checkpointing: bool = False) -> ValueModel:
    """Base model from `path`; the value head from `path/value_head.safetensors` if present, else a small init."""
    base = load_hf_model(AutoModel, path, model, gradient_checkpointing)
    hidden = base.config.hidden_size
    head = nn.Linear(hidden, 1)
    head_file = Path(path) / VALUE_HEAD_FILE
    if head_file.is_file():
        from safetensors.torch import load_file

        head.load_state_dict({k.removeprefix("value_head."): v for k, v in load_file(str(head_file)).items()})
    else:
        # Small init keeps the first values near 0, so early advantages are close to the returns.
        nn.init.normal_(head.weight, std=1.0 / (hidden + 1))
        nn.init.zeros_(head.bias)
    return ValueModel(base, head.to(torch_dtype(model.dtype)))


class CriticTrainer(TrainerRank):
    """Clipped value-loss updates and value estimates for one rank."""

    def __init__(
        self,
        model: ModelConfig,
        cfg: CriticConfig,
        device: Device,
        *,
        model_path: str,
        group: GroupRank,
        minibatch_size: int,
        seed: int,
    ) -> None:
        super().__init__(cfg, device, model_path, group, seed)
        self.cfg: CriticConfig = cfg
        self.grad_accum = grad_accum_steps(minibatch_size, group.world_size, cfg.micro_batch_size)
        value_model = load_value_model(model_path, model, cfg.gradient_checkpointing)
        self.engine = build_engine(value_model, cfg, model.dtype, self.grad_accum)

    @torch.no_grad()
    def values(self, batch: RolloutBatch) -> Tensor:
        """(B, T) fp32 V(state before token t), 0 at position 0 and on padding.

        Under ZeRO-3 the forward is collective: call every rank, each with the same number of rows.
        """
        self.engine.eval()
        return score_batch(lambda ids, am, _: self.engine(ids, am), batch, self.cfg.micro_batch_size, self.torch_device)

    def update(self, exp: Experience, index: Tensor) -> dict[str, float]:
        """One optimizer step of value_coef * clipped value loss on minibatch rows `index` (this rank's shard)."""
        if exp.values is None:
            raise ValueError("critic update needs exp.values (the critic's values at rollout time)")
        return train_minibatch(
            self.engine, exp, index, self.rank, self.world_size, self.cfg.micro_batch_size, self.grad_accum,
            self._micro_step, "critic",
        )

    def _micro_step(self, mb: Experience, num_tokens: float) -> dict[str, float]:
        """Forward, loss and backward of one micro-batch; returns token-weighted metric sums."""
        r = mb.rollout
        assert mb.values is not None
        input_ids, attention_mask, mask, old_values, returns = (
            t.to(self.torch_device)
            for t in trim_to_content(r.input_ids, mb.mask, mb.values, mb.returns, attention_mask=r.attention_mask)
        )
        values = self.engine(input_ids, attention_mask).float()
        loss, clipfrac = value_loss(values, old_values, returns, mask, self.cfg.clip_value, num_tokens)
        norm = backward_step(self.engine, self.cfg.value_coef * loss, self.world_size)
        n = float(mask.sum())
        return {
            "tokens": n,
            "grad_norm": 0.0 if norm is None else norm,  # set by the micro-batch that stepped the optimizer
            "seen_tokens": float(attention_mask.sum()),
            "loss/value": loss.item() * num_tokens,
            "critic/clipfrac": clipfrac * n,
            "critic/values_mean": masked_sum(values.detach(), mask).item(),
        }

    def save_pretrained(self, out_dir: str) -> None:
        """Base model as a HF directory plus `value_head.safetensors`. Collective: call every rank."""
        save_hf(self.engine, None, out_dir, self.cfg.zero_stage, hf_prefix="base.", extras_file=VALUE_HEAD_FILE)
