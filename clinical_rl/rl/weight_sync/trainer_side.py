"""Trainer side of a weight push: parameters in push order, gathered under ZeRO-3, streamed by rank 0.

`WeightSender` is what the policy trainer uses; `GlooTrainerWeightTransferEngine` is the same sender behind vLLM's
trainer-side interface (`WeightTransferTrainerFactory`) for callers holding a `VLLMWeightSyncClient`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import torch
from torch import Tensor, nn
from vllm.distributed.utils import stateless_init_torch_distributed_process_group
from vllm.distributed.weight_transfer.base import (
    TrainerInitInfo,
    TrainerWeightTransferEngine,
    VLLMWeightSyncClient,
    WeightSource,
    layerwise_groups,
)

from clinical_rl.device import Device
from clinical_rl.rl.weight_sync.wire import (
    ALIGN,
    GLOO_BACKEND,
    NCCL_NUM_BUFFERS,
    dtype_name,
    engine_init_info,
    send_header,
    weight_transfer_backend,
)


def _ordered_params(module: nn.Module) -> list[list[tuple[str, nn.Parameter]]]:
    """Parameters grouped per decoder layer (embeddings first, norm/head last): the push order."""
    params = dict(module.named_parameters())
    return [[(name, params[name]) for name in group] for group in layerwise_groups(list(params))]


def weight_update_info(module: nn.Module) -> dict[str, list]:
    """`update_info` of a push of `module` (names, dtypes, full shapes in push order), without gathering.

    ZeRO-3 partitions keep their full shape in `ds_shape`.
    """
    flat = [p for group in _ordered_params(module) for p in group]
    return {
        "names": [name for name, _ in flat],
        "dtype_names": [dtype_name(p.dtype) for _, p in flat],
        "shapes": [list(getattr(p, "ds_shape", p.shape)) for _, p in flat],
    }


def iter_full_params(module: nn.Module, zero_stage: int) -> Iterator[tuple[str, Tensor]]:
    """HF-named full parameters in push order; each tensor is valid until the next one is requested.

    Under ZeRO-3 each layer's partitions are gathered together (a collective): every trainer rank must drain
    this iterator in lockstep, while only rank 0 sends.
    """
    groups = _ordered_params(module)
    if zero_stage < 3:
        for group in groups:
            for name, param in group:
                yield name, param.detach()
        return
    import deepspeed

    for group in groups:
        with deepspeed.zero.GatheredParameters([p for _, p in group], modifier_rank=None):
            for name, param in group:
                yield name, param.detach()




class _GlooTransport:
    """Rank 0 of a `clinical_gloo` group: streams (name, tensor) pairs as buckets of at most `bucket_bytes`."""

    def __init__(self, bucket_bytes: int) -> None:
        self._bucket_bytes = bucket_bytes
        self._group: Any = None

    def connect(self, master_address: str, master_port: int, world_size: int) -> None:
        self._group = stateless_init_torch_distributed_process_group(
            master_address, master_port, 0, world_size, backend="gloo"
        )

    def broadcast(self, named_tensors: Iterator[tuple[str, Tensor]]) -> None:
        try:
            self._stream(named_tensors)
        except BaseException as err:
            # The engines block in their receive loop: tell them, so they finalize and raise too.
            send_header(self._group, {"abort": f"{type(err).__name__}: {err}"})
            raise
        send_header(self._group, {"end": True})

    def _stream(self, named_tensors: Iterator[tuple[str, Tensor]]) -> None:
        bucket = torch.empty(self._bucket_bytes, dtype=torch.uint8)
        entries: list[list[Any]] = []
        used = 0
        for name, tensor in named_tensors:
            raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
            entry = [name, dtype_name(tensor.dtype), list(tensor.shape)]
            if raw.numel() > self._bucket_bytes:  # too big for any bucket: send it alone, uncopied
                self._flush(entries, bucket[:used])
                entries, used = [], 0
                self._flush([entry + [0]], raw)
                continue
            start = -(-used // ALIGN) * ALIGN
            if start + raw.numel() > self._bucket_bytes:
                self._flush(entries, bucket[:used])
                entries, start = [], 0
            # Copy now: under ZeRO-3 the gathered tensor is released when the iterator resumes.
            bucket[start : start + raw.numel()].copy_(raw)
            entries.append(entry + [start])
            used = start + raw.numel()
        self._flush(entries, bucket[:used])

    def _flush(self, entries: list[list[Any]], payload: Tensor) -> None:
        if entries:
            send_header(self._group, {"tensors": entries, "nbytes": payload.numel()})
            self._group.broadcast(payload, 0).wait()


class _NcclTransport:
    """Rank 0 of vLLM's built-in NCCL backend (GPU), packed broadcast. A failure mid-push leaves workers waiting."""

    def __init__(self, bucket_bytes: int) -> None:
        self._bucket_bytes = bucket_bytes
        self._group: Any = None

    def connect(self, master_address: str, master_port: int, world_size: int) -> None:
        from vllm.distributed.weight_transfer.nccl_common import trainer_init

        self._group = trainer_init(
            {"master_address": master_address, "master_port": master_port, "world_size": world_size}
        )

    def broadcast(self, named_tensors: Iterator[tuple[str, Tensor]]) -> None:
        from vllm.distributed.weight_transfer.packed_tensor import packed_nccl_broadcast_producer

        packed_nccl_broadcast_producer(
            iterator=named_tensors,
            group=self._group,
            src=0,
            post_iter_func=lambda item: item[1],
            buffer_size_bytes=self._bucket_bytes,
            num_buffers=NCCL_NUM_BUFFERS,
        )


class WeightSender:
    """Trainer rank 0's end of the transfer group: pushes full parameters to every engine worker.

    Every push must match the first one (names, order, shapes, dtypes), like nanoGPT's `from_pretrained`
    checks; a mismatch raises naming the parameter (and, on gloo, aborts the engines' receive).
    """

    def __init__(self, device: Device, bucket_mb: int) -> None:
        self._backend = weight_transfer_backend(device)
        self._bucket_bytes = bucket_mb << 20
        self._transport: _GlooTransport | _NcclTransport | None = None
        self._spec: list[tuple[str, tuple[int, ...], torch.dtype]] | None = None

    def connect(self, master_address: str, master_port: int, world_size: int) -> None:
        """Join as rank 0; blocks until all `world_size - 1` engine workers joined (`init_weight_sync`)."""
        transport_cls = _GlooTransport if self._backend == GLOO_BACKEND else _NcclTransport
        transport = transport_cls(self._bucket_bytes)
        transport.connect(master_address, master_port, world_size)
        self._transport = transport

    def send(self, named_tensors: Iterable[tuple[str, Tensor]]) -> None:
        """Broadcast one push; the engines must be inside `update_weights` concurrently."""
        if self._transport is None:
            raise RuntimeError("WeightSender.send() before connect()")
        sent: list[tuple[str, tuple[int, ...], torch.dtype]] = []
        self._transport.broadcast(self._checked(iter(named_tensors), sent))
        if self._spec is None:
            self._spec = sent

    def _checked(
        self, named_tensors: Iterator[tuple[str, Tensor]], sent: list[tuple[str, tuple[int, ...], torch.dtype]]
    ) -> Iterator[tuple[str, Tensor]]:
        spec = self._spec
        for name, tensor in named_tensors:
            got = (name, tuple(tensor.shape), tensor.dtype)
            if spec is not None:
                if len(sent) >= len(spec):
                    raise ValueError(f"weight push has extra parameter {name!r}: the first push had {len(spec)}")
                if got != spec[len(sent)]:
                    want = spec[len(sent)]
                    raise ValueError(
                        f"weight push mismatch at parameter #{len(sent)}: got {name!r} {got[1]} {got[2]}, "
                        f"the first push had {want[0]!r} {want[1]} {want[2]}"
                    )
            sent.append(got)
            yield name, tensor
        if spec is not None and len(sent) < len(spec):
            raise ValueError(f"weight push lacks parameter {spec[len(sent)][0]!r} ({len(sent)} of {len(spec)} sent)")





@dataclass
class GlooTrainerInitInfo(TrainerInitInfo):
    backend: ClassVar[str] = GLOO_BACKEND

    master_address: str
    master_port: int
    world_size: int
    bucket_mb: int = 64


class GlooTrainerWeightTransferEngine(TrainerWeightTransferEngine[GlooTrainerInitInfo]):
    """vLLM's trainer-side interface for `clinical_gloo`, for callers holding a `VLLMWeightSyncClient`."""

    init_info_cls = GlooTrainerInitInfo

    def __init__(self, *, client: VLLMWeightSyncClient, source: WeightSource, is_sender: bool, bucket_mb: int) -> None:
        super().__init__(client=client, source=source, is_sender=is_sender)
        self._sender = WeightSender(Device("cpu"), bucket_mb)  # clinical_gloo is the CPU backend

    @classmethod
    def trainer_init(
        cls, init_info: GlooTrainerInitInfo, *, client: VLLMWeightSyncClient, source: WeightSource | None = None
    ) -> Self:
        if source is None:
            raise ValueError(f"{GLOO_BACKEND} trainer weight transfer requires a WeightSource")
        engine = cls(client=client, source=source, is_sender=init_info.is_sender, bucket_mb=init_info.bucket_mb)
        if engine.is_sender:
            info = engine_init_info(
                GLOO_BACKEND,
                init_info.master_address,
                init_info.master_port,
                rank_offset=1,
                world_size=init_info.world_size,
                bucket_mb=init_info.bucket_mb,
            )
            # Workers block in init_weight_transfer_engine until rank 0 joins: join concurrently.
            with ThreadPoolExecutor(max_workers=1) as pool:
                joined = pool.submit(client.init_weight_transfer_engine, info)
                engine._sender.connect(init_info.master_address, init_info.master_port, init_info.world_size)
                joined.result()
        return engine

    def send_weights(self) -> None:
        assert self.source is not None  # trainer_init requires it
        if not self.is_sender:
            for _ in self.source:  # stay in the trainer-side gather collectives
                pass
            return
        meta = self.source.metadata()
        update_info = {
            "names": [m.name for m in meta],
            "dtype_names": [dtype_name(m.dtype) for m in meta],
            "shapes": [list(m.shape) for m in meta],
        }
        self.client.start_weight_update()
        # A failed send aborts the workers' receive, so waiting for them on the way out cannot hang.
        with ThreadPoolExecutor(max_workers=1) as pool:
            received = pool.submit(self.client.update_weights, update_info)
            self._sender.send(self.source)
            received.result()
        self.client.finish_weight_update()
