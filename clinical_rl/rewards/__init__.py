"""Rewards: the result contract, plugin loading and the built-in verifiers."""
