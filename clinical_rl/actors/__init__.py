"""Ray-hosted roles: rollout engines (vLLM) and their worker-side extension.

Classes here are plain; the driver wraps them with `ray.remote(...)` at launch.
"""
