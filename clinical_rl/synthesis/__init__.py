"""Long chain-of-thought synthesis: search with a verifier, reformat, filter, store."""
