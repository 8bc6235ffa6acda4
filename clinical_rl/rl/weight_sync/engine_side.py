"""Engine side of a weight push: the `clinical_gloo` backend inside every vLLM worker (receive, reload, repack)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from vllm.distributed.utils import stateless_init_torch_distributed_process_group
from vllm.distributed.weight_transfer.base import WeightTransferEngine, WeightTransferInitInfo, WeightTransferUpdateInfo

from clinical_rl.rl.weight_sync.wire import recv_header, unpack


@dataclass
class GlooInitInfo(WeightTransferInitInfo):
    master_address: str
    master_port: int
    rank_offset: int  # rank of this engine's first worker in the transfer group (the trainer is 0)
    world_size: int


@dataclass
class GlooUpdateInfo(WeightTransferUpdateInfo):
    """What the driver announced (`weight_update_info`); the stream is checked against it."""

    names: list[str]
    dtype_names: list[str]
    shapes: list[list[int]]


def _repack_embedding_heads(model: nn.Module) -> None:
    """Re-run the embedding method's CPU repack on every embedding/LM head.

    Layerwise reload processes a tied parameter only through `embed_tokens`, so the tied `lm_head` keeps a
    packed GEMM copy of the OLD embedding (logits stay stale).
    """
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    for module in model.modules():
        method = getattr(module, "quant_method", None)
        if isinstance(method, UnquantizedEmbeddingMethod):
            method.process_weights_after_loading(module)


class GlooWeightTransferEngine(WeightTransferEngine[GlooInitInfo, GlooUpdateInfo]):
    """Worker side of `clinical_gloo`: receives buckets and loads them via vLLM's layerwise reload.

    The CPU backend repacks Linear weights at load time (parameters become shape [0]), so plain
    `load_weights` cannot be used; the layerwise reload restores checkpoint-format parameters, loads, and
    re-runs each layer's processing.
    """

    init_info_cls = GlooInitInfo
    update_info_cls = GlooUpdateInfo

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._group: Any = None

    def init_transfer_engine(self, init_info: GlooInitInfo) -> None:
        pc = self.parallel_config
        rank = init_info.rank_offset + pc.data_parallel_index * pc.world_size + pc.rank
        self._group = stateless_init_torch_distributed_process_group(
            init_info.master_address, init_info.master_port, rank, init_info.world_size, backend="gloo"
        )

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model)

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model, self.model_config)
        _repack_embedding_heads(self.model)

    def update_weights(self, update_info: dict[str, Any]) -> None:
        # The base class ends with torch.accelerator.synchronize(), which raises without an accelerator;
        # gloo on CPU is synchronous anyway.
        self.receive_weights(self.parse_update_info(update_info))

    def receive_weights(self, update_info: GlooUpdateInfo) -> None:
        """Load buckets until the trainer's end marker; on any error drain the stream, finalize, raise."""
        if self._group is None:
            raise RuntimeError("clinical_gloo: update_weights before init_weight_transfer_engine")
        expected = {n: (d, list(s)) for n, d, s in zip(update_info.names, update_info.dtype_names, update_info.shapes)}
        error: Exception | None = None
        while "tensors" in (header := recv_header(self._group)):
            payload = torch.empty(header["nbytes"], dtype=torch.uint8)
            self._group.broadcast(payload, 0).wait()
            if error is None:
                try:
                    self.model.load_weights(unpack(header["tensors"], payload, expected))
                except Exception as err:  # re-raised below, after the trainer finished streaming
                    error = err
        if error is None and "abort" in header:
            error = RuntimeError(f"trainer aborted the weight update: {header['abort']}")
        if error is None and expected:
            error = ValueError(f"weight update lacks parameter {next(iter(expected))!r} ({len(expected)} missing)")
        if error is not None:
            # Leave no layer half-restored on the meta device; the worker ends the update session on raise.
            self.finish_weight_update()
            raise error

    def shutdown(self) -> None:
        self._group = None

