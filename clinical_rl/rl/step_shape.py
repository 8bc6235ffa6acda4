"""What one RL step of a config does, in numbers, for `clinical-rl plan`: samples, optimizer steps, generation
bounds under dynamic sampling, and the pieces of the algorithm that are on."""

from __future__ import annotations

from clinical_rl.config import RunConfig


def describe_step(cfg: RunConfig) -> list[str]:
    """Lines that say what one step generates and trains: the estimator and its roles, prompts x samples, optimizer
    steps, the most a dynamic-sampling step can generate (prompts, samples), the KL, the loss and the shaping."""
    a, p = cfg.algo, cfg.policy
    critic = "a critic" if a.use_critic else "no critic"
    kl = f"KL {a.kl_estimator} in the {a.kl_in}, coef {a.kl_coef:g}" if a.use_reference else "no KL (no reference)"
    minibatches = a.samples_per_step // a.minibatch_size
    lines = [
        f"RL step: {a.advantage} with {critic}; {kl}",
        f"  {a.rollout_batch_size} prompts x {a.n_samples_per_prompt} samples = {a.samples_per_step} samples; "
        f"{minibatches} minibatches of {a.minibatch_size} x {a.ppo_epochs} epochs = {minibatches * a.ppo_epochs} "
        f"optimizer steps",
        f"  policy loss {p.loss_mode} ({cfg.loss_agg_mode}), clip [{p.clip_eps_low:g}, {p.clip_eps_high:g}]"
        + (f", dual clip {p.dual_clip_c:g}" if p.dual_clip_c else ""),
    ]
    if cfg.env is not None:
        e = cfg.env
        costs = ", ".join(f"{category} {cost:g}" for category, cost in e.costs.items())
        lines.append(f"  environment {e.name}: up to {e.max_turns} model turns of {cfg.rollout.max_new_tokens} tokens "
                     f"per episode (context {cfg.rollout.max_model_len}); exam costs {costs}; reward - "
                     f"{e.cost_penalty:g} x cost" + (f" - {e.no_exam_penalty:g} if nothing ordered" if e.no_exam_penalty
                                                     else ""))
    if a.dynamic_sampling is not None:
        d = a.dynamic_sampling
        most = a.rollout_batch_size * d.max_rounds  # each refill round asks for at most rollout_batch_size prompts
        lines.append(f"  dynamic sampling: groups alike by `{d.metric}` dropped and refilled, up to {d.max_rounds} "
                     f"rounds: at most {most} prompts ({most * a.n_samples_per_prompt} samples) generated a step")
    if a.overlong is not None and a.overlong.buffer_tokens:
        o = a.overlong
        lines.append(f"  overlong shaping: the last {o.buffer_tokens} of {cfg.rollout.max_new_tokens} tokens cost up "
                     f"to {o.penalty:g} of reward" + ("; truncated samples out of the loss" if o.mask_truncated else ""))
    elif a.overlong is not None and a.overlong.mask_truncated:
        lines.append("  truncated samples out of the loss")
    return lines
