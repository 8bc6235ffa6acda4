"""Trainer overhead: `PolicyTrainer.update` (DeepSpeed ZeRO-0 in a Ray actor) relative to bare torch training.

Why: the trainer should cost little beyond forward + PPO loss + backward + AdamW (target ratio >= 0.85). Both
run as Ray actors on 1-CPU placement-group bundles with the same process setup (`Device.setup_process`) and do
one AdamW step (2 micro-batches of 4, same loss and clipping) on the same synthetic Experience (random ids, prompt
64 + response 160..192). The trainer is timed from the driver around `ray.get(update.remote(...))`, the bare step
inside its actor; tokens are attention-mask tokens. The machine is noisy: warm-up, then alternating rounds.
Run: `python bench/trainer_overhead.py [--model DIR] [--dtype float32] [--rounds 3]`.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from clinical_rl.actors.policy import PolicyTrainer
from clinical_rl.actors.scoring import next_token_logprobs
from clinical_rl.actors.trainer_rank import GroupRank
from clinical_rl.algorithms.losses import ppo_policy_loss
from clinical_rl.rl.batch import Experience, RolloutBatch, trim_to_content
from clinical_rl.config import AlgoConfig, PolicyConfig, RunConfig
from clinical_rl.config_base import ModelConfig
from clinical_rl.data.cases import Case
from clinical_rl.device import Device, torch_dtype
from clinical_rl.models import prepare_embedded_model
from clinical_rl.launch.actors import actor_options
from clinical_rl.launch.placement import create_placement_group, node_address_and_free_port, plan_placement
from ratio import report_ratio  # bench/ is sys.path[0] when a script runs

SAMPLES = 8  # rows of the synthetic Experience = one minibatch = one optimizer step (2 micro-batches of 4)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="HF model dir (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--rounds", type=int, default=3)
    return p.parse_args()


class BareTrainer:
    """HF causal LM + torch AdamW running PolicyTrainer.update's loop, without DeepSpeed or metrics."""

    def __init__(self, model_dir: str, dtype: str, lr: float, max_grad_norm: float, micro_batch_size: int) -> None:
        from transformers import AutoModelForCausalLM

        Device("cpu").setup_process()  # what PolicyTrainer does first: torch uses every core
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype(dtype))
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.0)
        self.max_grad_norm, self.micro = max_grad_norm, micro_batch_size

    @torch.no_grad()
    def old_logp(self, ids: torch.Tensor, am: torch.Tensor) -> torch.Tensor:
        return next_token_logprobs(self.model(input_ids=ids, attention_mask=am, use_cache=False).logits, ids) * am

    def update(self, exp: Experience, index: torch.Tensor) -> float:
        """One optimizer step over minibatch `index` of an Experience; returns its seconds."""
        start = time.perf_counter()
        self.model.train()
        num_tokens = float(exp.mask[index].sum())
        for rows in index.split(self.micro):
            mb = exp.select(rows)
            ids, am, mask, old, adv = trim_to_content(mb.rollout.input_ids, mb.mask, mb.old_logp, mb.advantages,
                                                      attention_mask=mb.rollout.attention_mask)
            logits = self.model(input_ids=ids, attention_mask=am, use_cache=False).logits
            loss, _ = ppo_policy_loss(next_token_logprobs(logits, ids), old, adv, mask, 0.2, 0.2, num_tokens)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return time.perf_counter() - start


def synthetic_batch(n: int, vocab: int, width: int = 256) -> RolloutBatch:
    """RolloutBatch of `n` rows: prompt 64 + response 160..192 random tokens, right-padded to `width`."""
    gen = torch.Generator().manual_seed(0)
    ids, am, rm = (torch.zeros(n, width, dtype=dt) for dt in (torch.long, torch.long, torch.float))
    for i, length in enumerate((64 + torch.randint(160, 193, (n,), generator=gen)).tolist()):
        ids[i, :length] = torch.randint(0, vocab, (length,), generator=gen)
        am[i, :length], rm[i, 64:length] = 1, 1.0
    return RolloutBatch(ids, am, rm, torch.zeros(n, width), torch.arange(n), [""] * n, [""] * n, [Case("", "")] * n,
                        torch.zeros(n, dtype=torch.bool))


def main() -> None:
    args = parse_args()
    os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray
    from transformers import AutoConfig

    model_dir = args.model or str(prepare_embedded_model())
    pcfg = PolicyConfig(micro_batch_size=4, world_size=1, zero_stage=0)
    algo = AlgoConfig(rollout_batch_size=SAMPLES, minibatch_size=SAMPLES)
    ray.init(num_cpus=4, object_store_memory=1 << 30, include_dashboard=False)
    plan = plan_placement(RunConfig(policy=pcfg, algo=algo))  # the driver's placement group
    pg, _ = create_placement_group(plan)
    address, port = node_address_and_free_port()  # one node: the driver's is the trainer's
    trainer = ray.remote(PolicyTrainer).options(**actor_options(plan.of("policy")[0], pg)).remote(
        ModelConfig(path=model_dir, dtype=args.dtype), pcfg, Device("cpu"), model_path=model_dir,
        group=GroupRank(0, 1, address, port), minibatch_size=algo.minibatch_size,
        temperature=1.0, kl_coef=0.0, kl_estimator="k1", kl_in_loss=False, seed=0)
    # The critic's bundle (no critic runs here) has the policy bundle's shape (1 CPU): the bare trainer's slot.
    bare = ray.remote(BareTrainer).options(**actor_options(plan.of("critic")[0], pg)).remote(
        model_dir, args.dtype, pcfg.lr, pcfg.max_grad_norm, pcfg.micro_batch_size)
    ray.get(trainer.ready.remote())

    batch, n = synthetic_batch(SAMPLES, AutoConfig.from_pretrained(model_dir).vocab_size), SAMPLES
    old_logp = ray.get(bare.old_logp.remote(batch.input_ids, batch.attention_mask))
    exp_ref = ray.put(Experience(rollout=batch, scores=torch.zeros(n), reward_ok=torch.ones(n, dtype=torch.bool),
                                 old_logp=old_logp, ref_logp=old_logp, values=None, returns=torch.zeros_like(old_logp),
                                 advantages=torch.randn(batch.input_ids.shape) * batch.response_mask))
    index, tokens = torch.arange(n), float(batch.attention_mask.sum())

    def run(name: str) -> tuple[float, str]:
        """(tok/s, note) of one optimizer step of `name`."""
        if name == "bare":
            return tokens / ray.get(bare.update.remote(exp_ref, index)), ""
        start = time.perf_counter()
        inner = ray.get(trainer.update.remote(exp_ref, index))["perf/policy_tokens_per_s"]
        return tokens / (time.perf_counter() - start), f" (inside update(): {inner:.0f} tok/s)"

    run("trainer"), run("bare")  # warm-up
    rates: dict[str, list[float]] = {"trainer": [], "bare": []}
    for r in range(args.rounds):
        for name in ("trainer", "bare") if r % 2 == 0 else ("bare", "trainer"):
            rate, note = run(name)
            rates[name].append(rate)
            print(f"round {r} {name:7s} {tokens:.0f} tokens: {rate:.0f} tok/s{note}", flush=True)
    ray.shutdown()
    report_ratio(rates, "trainer", "bare", "policy_trainer/bare_torch", "tok/s")


if __name__ == "__main__":
    main()
