"""Trainer -> vLLM weight pushes through vLLM's native weight-transfer API.

vLLM 0.32 moves weights with pluggable backends (`weight_transfer_config={"backend": ...}` on the engine, worker
RPCs `init_weight_transfer_engine` / `start_weight_update` / `update_weights` / `finish_weight_update`). Its
built-in backends are CUDA-only, so on CPU we register our own, `clinical_gloo`: a stateless gloo group where the
trainer is rank 0 and the engine workers are ranks 1..N.

Driver contract, identical on CPU and GPU: `RolloutEngine.init_weight_sync(...)` on every engine concurrently
with `WeightSender.connect(...)` on the trainer's rank 0; then per push `RolloutEngine.update_weights(info)` with
`info = weight_update_info(module)` concurrently with `WeightSender.send(iter_full_params(module, stage))` (every
trainer rank iterates; rank 0 sends).

Modules: `wire` (shared format), `trainer_side` (gather and send), `engine_side` (receive inside vLLM workers).
Importing this package registers `clinical_gloo` with vLLM's factories (the worker extension imports it).
"""

from __future__ import annotations

from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory, WeightTransferTrainerFactory

from clinical_rl.rl.weight_sync.engine_side import GlooWeightTransferEngine
from clinical_rl.rl.weight_sync.trainer_side import GlooTrainerWeightTransferEngine
from clinical_rl.rl.weight_sync.wire import GLOO_BACKEND


def register_backend() -> None:
    """Register `clinical_gloo` with vLLM's worker and trainer factories (idempotent)."""
    # The factories raise on a second registration and have no lookup method: check their registries.
    if GLOO_BACKEND not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(GLOO_BACKEND, GlooWeightTransferEngine)
    if GLOO_BACKEND not in WeightTransferTrainerFactory._registry:
        WeightTransferTrainerFactory.register_engine(GLOO_BACKEND, GlooTrainerWeightTransferEngine)


register_backend()
