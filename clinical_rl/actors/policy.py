"""Policy trainer: one data-parallel rank of the actor model in a DeepSpeed engine.

A plain class; the driver wraps it with `ray.remote(...)` at launch (one engine per actor process).
"""

from __future__ import annotations

from collections import deque
from functools import partial

import torch
from torch import Tensor, nn
from transformers import AutoModelForCausalLM

from clinical_rl.actors.deepspeed_engine import (
    backward_step, build_engine, grad_accum_steps, load_hf_model, train_minibatch,
)
from clinical_rl.actors.trainer_rank import GroupRank, TrainerRank
from clinical_rl.actors.scoring import (
    causal_lm_logits, first_scored_position, score_batch, window_entropy, window_logprobs,
)
from clinical_rl.algorithms.losses import (
    aggregate_loss, get_policy_loss, kl_penalty_loss, masked_sum, truncated_is_weights,
)
from clinical_rl.rl.batch import Experience, RolloutBatch, trim_to_content
from clinical_rl.config import PolicyConfig
from clinical_rl.config_base import ModelConfig
from clinical_rl.device import Device
from clinical_rl.rl.weight_sync.trainer_side import WeightSender, iter_full_params, weight_update_info


class PolicyTrainer(TrainerRank):
    """Policy updates (`policy.loss_mode`), scoring at the sampling temperature, and HF export for one rank."""

    def __init__(
        self,
        model: ModelConfig,
        cfg: PolicyConfig,
        device: Device,
        *,
        model_path: str,
        group: GroupRank,
        minibatch_size: int,
        temperature: float,
        kl_coef: float,
        kl_estimator: str,
        kl_in_loss: bool,
        seed: int,
        tis_cap: float | None = None,
        loss_agg_mode: str = "token-mean",
        loss_norm_len: int | None = None,
    ) -> None:
        super().__init__(cfg, device, model_path, group, seed)
        self.cfg: PolicyConfig = cfg
        self.sender: WeightSender | None = None
        self.temperature, self.kl_coef = temperature, kl_coef
        self.kl_estimator, self.kl_in_loss = kl_estimator, kl_in_loss
        self.tis_cap = tis_cap  # truncated importance sampling of the engine/trainer mismatch (None: off)
        # RunConfig.loss_agg_mode (resolved from the method) and seq-mean-token-sum-norm's constant length
        self.loss_agg_mode, self.loss_norm_len = loss_agg_mode, loss_norm_len
        self.grad_accum = grad_accum_steps(minibatch_size, group.world_size, cfg.micro_batch_size)
        hf = load_hf_model(AutoModelForCausalLM, model_path, model, cfg.gradient_checkpointing)
        self.engine = build_engine(hf, cfg, model.dtype, self.grad_accum)

    def module(self) -> nn.Module:
        """The (possibly ZeRO-3 partitioned) HF model, for weight sync."""
        return self.engine.module

    @torch.no_grad()
    def logprobs(self, batch: RolloutBatch) -> Tensor:
        """(B, T) fp32 log pi(token) at the sampling temperature on response tokens, 0 elsewhere.

        Under ZeRO-3 the forward is collective: call every rank, each with the same number of rows.
        """
        self.engine.eval()

        def fn(input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor) -> Tensor:
            start = first_scored_position(response_mask)
            logits = causal_lm_logits(self.engine, input_ids, attention_mask, start)
            return window_logprobs(logits, input_ids, start, self.temperature, response_mask)

        return score_batch(fn, batch, self.cfg.micro_batch_size, self.torch_device)

    def update(self, exp: Experience, index: Tensor) -> dict[str, float]:
        """One optimizer step on minibatch rows `index`; this rank trains on its `shard_rows` shard.

        Returns this rank's token-mean metrics (the driver averages them over ranks).
        """
        num_seqs = float((exp.mask[index].sum(dim=1) > 0).sum())  # GLOBAL, like num_tokens: seq-mean-* divide by it
        return train_minibatch(
            self.engine, exp, index, self.rank, self.world_size, self.cfg.micro_batch_size, self.grad_accum,
            partial(self._micro_step, num_seqs=num_seqs), "policy",
        )

    def _micro_step(self, mb: Experience, num_tokens: float, num_seqs: float) -> dict[str, float]:
        """Forward, loss and backward of one micro-batch; returns token-weighted metric sums."""
        r = mb.rollout
        zeros = torch.zeros_like(r.rollout_logp)  # stands in for what this step does not have
        input_ids, attention_mask, mask, old_logp, advantages, ref_logp, rollout_logp = (
            t.to(self.torch_device)
            for t in trim_to_content(
                r.input_ids, mb.mask, zeros if mb.old_logp is None else mb.old_logp, mb.advantages,
                zeros if mb.ref_logp is None else mb.ref_logp, r.rollout_logp, attention_mask=r.attention_mask,
            )
        )
        start = first_scored_position(mask)
        logits = causal_lm_logits(self.engine, input_ids, attention_mask, start)
        logp = window_logprobs(logits, input_ids, start, self.temperature, mask)
        n = float(mask.sum())
        sums: dict[str, float] = {}
        if mb.old_logp is None:  # a single on-policy pass: pi_old is this very forward, without its gradient
            old_logp = logp.detach()
            sums["rollout/logp_mismatch"] = masked_sum((old_logp - rollout_logp).abs(), mask).item()
        if self.tis_cap is not None:
            # The loss is linear in the advantage on both sides of its max: weighting the advantage by w >= 0
            # weights the token's loss by w.
            weights = truncated_is_weights(old_logp, rollout_logp, mask, self.tis_cap)
            advantages = advantages * weights
            sums["rollout/tis_weight_mean"] = masked_sum(weights, mask).item()
            sums["rollout/tis_truncated_frac"] = masked_sum((weights >= self.tis_cap).float(), mask).item()
        agg = {"agg_mode": self.loss_agg_mode, "num_seqs": num_seqs, "norm_len": self.loss_norm_len}
        pg_loss, stats = get_policy_loss(self.cfg.loss_mode).fn(
            logp, old_logp, advantages, mask, self.cfg.clip_eps_low, self.cfg.clip_eps_high, num_tokens,
            dual_clip_c=self.cfg.dual_clip_c, **agg,
        )
        loss = pg_loss
        if self.cfg.entropy_coef > 0:
            # A full-vocabulary pass per token, so only when it is in the loss; `rollout/entropy_mc` estimates it
            # for free otherwise.
            entropy = window_entropy(logits, start, self.temperature, mask)
            loss = loss - self.cfg.entropy_coef * aggregate_loss(entropy, mask, num_tokens=num_tokens, **agg)
            sums["policy/entropy"] = masked_sum(entropy.detach(), mask).item()
        kl = torch.zeros(())
        if self.kl_in_loss:
            kl = kl_penalty_loss(logp, ref_logp, mask, self.kl_estimator, num_tokens, **agg)
            loss = loss + self.kl_coef * kl
        norm = backward_step(self.engine, loss, self.world_size)
        sums |= {
            "tokens": n,
            "seen_tokens": float(attention_mask.sum()),
            "grad_norm": 0.0 if norm is None else norm,  # set by the micro-batch that stepped the optimizer
            "loss/policy": pg_loss.item() * num_tokens,
            "policy/clipfrac": stats.clipfrac * n,
            "policy/approx_kl": stats.approx_kl * n,
            "policy/dual_clipfrac": stats.dual_clipfrac * n,
        }
        if self.kl_in_loss:
            sums["kl/loss"] = kl.item() * num_tokens
        return sums

    def init_weight_sync(self, master_address: str, master_port: int, world_size: int, bucket_mb: int) -> None:
        """Rank 0 joins the trainer -> engines transfer group; blocks until every engine worker has joined."""
        if self.rank == 0:
            self.sender = WeightSender(self.device, bucket_mb)
            self.sender.connect(master_address, master_port, world_size)

    def weight_update_info(self) -> dict[str, list]:
        """Names, dtypes and shapes the engines should expect in a push."""
        return weight_update_info(self.engine.module)

    def broadcast_weights(self) -> None:
        """Push full weights to the engines. Collective: every rank walks the ZeRO-3 gathers; rank 0 sends."""
        params = iter_full_params(self.engine.module, self.cfg.zero_stage)
        if self.sender is not None:
            self.sender.send(params)
        else:
            deque(params, maxlen=0)
