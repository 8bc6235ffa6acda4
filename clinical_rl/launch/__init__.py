"""The launch layer: config -> placement plan (with memory) -> placement group -> started actors.

Every command that starts actors goes through here: the RL loop, SFT, evaluation, synthesis and the judge.
"""
