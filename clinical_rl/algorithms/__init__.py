"""RL math for policy optimisation: KL estimators, PPO/GRPO losses and advantage estimators.

Pure torch, no distributed or inference dependencies, so it can be imported and tested anywhere.
"""
