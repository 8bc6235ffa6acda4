"""WiNGPT-3.0's offline difficulty selection of the RL cases (`clinical-rl select-rl-data`): `pass_rates.py` decides
and writes without actors, `runner.py` samples the answers on vLLM engine actors and scores them."""
