"""Reference model: the frozen initial policy, scored at the sampling temperature (KL anchor).

A plain class; the driver wraps it with `ray.remote(...)` at launch. No DeepSpeed: inference only.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import AutoModelForCausalLM

from clinical_rl.actors.deepspeed_engine import load_hf_model
from clinical_rl.actors.scoring import causal_lm_logits, first_scored_position, score_batch, window_logprobs
from clinical_rl.rl.batch import RolloutBatch
from clinical_rl.config import ReferenceConfig
from clinical_rl.config_base import ModelConfig
from clinical_rl.device import Device


class ReferenceModel:
    """log pi_ref(token) for rollout batches, in micro-batches, with gradients off."""

    def __init__(
        self,
        model: ModelConfig,
        cfg: ReferenceConfig,
        device: Device,
        *,
        model_path: str,
        temperature: float,
        seed: int = 0,
    ) -> None:
        device.setup_process()
        torch.manual_seed(seed)
        self.cfg, self.temperature = cfg, temperature
        self.torch_device = device.torch_device()
        self.model = load_hf_model(AutoModelForCausalLM, model_path, model).to(self.torch_device).eval()
        self.model.requires_grad_(False)

    def ready(self) -> bool:
        return True

    @torch.no_grad()
    def logprobs(self, batch: RolloutBatch) -> Tensor:
        """(B, T) fp32 log pi_ref(token) at the sampling temperature on response tokens, 0 elsewhere."""

        def fn(input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor) -> Tensor:
            start = first_scored_position(response_mask)
            logits = causal_lm_logits(self.model, input_ids, attention_mask, start)
            return window_logprobs(logits, input_ids, start, self.temperature, response_mask)

        return score_batch(fn, batch, self.cfg.micro_batch_size, self.torch_device)
