"""clinical_rl: Ray-native RL that trains LLMs to reason before they diagnose."""
