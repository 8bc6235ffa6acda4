"""Trainer -> vLLM weight pushes through vLLM's native weight-transfer API.

vLLM 0.32 moves weights with pluggable backends (`weight_transfer_config={"backend": ...}` on the engine, worker
RPCs `init_weight_transfer_engine` / `start_weight_update` / `update_weights` / `finish_weight_update`). Its
built-in backends are CUDA-only, so on CPU we register our own, `clinical_gloo`: a stateless gloo group where the
trainer is rank 0 and the engine workers are ranks 1..N.

Wire format of one gloo push (every message is a rank-0 broadcast): per bucket a JSON header
`{"tensors": [[name, dtype, shape, byte_offset], ...], "nbytes": n}` then `n` payload bytes holding many
tensors; the stream ends with `{"end": true}`, or `{"abort": reason}` when the trainer fails mid-push (so the
engine stops waiting instead of hanging). The header stream lets both sides check names and shapes.

Driver contract, identical on CPU and GPU: `RolloutEngine.init_weight_sync(...)` on every engine concurrently
with `WeightSender.connect(...)` on the trainer's rank 0; then per push `RolloutEngine.update_weights(info)` with
`info = weight_update_info(module)` concurrently with `WeightSender.send(iter_full_params(module, stage))` (every
trainer rank iterates; rank 0 sends).
"""

from __future__ import annotations

import json
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
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
    layerwise_groups,
)
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory, WeightTransferTrainerFactory

from clinical_rl.device import Device

GLOO_BACKEND = "clinical_gloo"
_ALIGN = 64  # byte offset alignment inside a bucket, so any dtype can be viewed from the uint8 payload
_NCCL_NUM_BUFFERS = 2  # vLLM's packed NCCL broadcast double-buffers; both sides must agree


def weight_transfer_backend(device: Device) -> str:
    """vLLM weight-transfer backend name: vLLM's built-in one on GPU, our gloo one on CPU."""
    return device.collective_backend if device.is_gpu else GLOO_BACKEND


def engine_init_info(
    backend: str, master_address: str, master_port: int, rank_offset: int, world_size: int, bucket_mb: int
) -> dict[str, Any]:
    """The `init_info` an engine worker needs to join the transfer group of `backend`."""
    info: dict[str, Any] = {
        "master_address": master_address,
        "master_port": master_port,
        "rank_offset": rank_offset,
        "world_size": world_size,
    }
    if backend == GLOO_BACKEND:
        return info
    # vLLM's NCCL engine unpacks with the buffer geometry WeightSender packs with.
    return info | {"packed": True, "packed_buffer_size_bytes": bucket_mb << 20, "packed_num_buffers": _NCCL_NUM_BUFFERS}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


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
        "dtype_names": [_dtype_name(p.dtype) for _, p in flat],
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


# ------------------------------------------------------------------------------------------------------ wire


def _send_header(group: Any, header: dict[str, Any]) -> None:
    data = torch.frombuffer(bytearray(json.dumps(header).encode()), dtype=torch.uint8)
    group.broadcast(torch.tensor([data.numel()], dtype=torch.int64), 0).wait()
    group.broadcast(data, 0).wait()


def _recv_header(group: Any) -> dict[str, Any]:
    size = torch.zeros(1, dtype=torch.int64)
    group.broadcast(size, 0).wait()
    data = torch.empty(int(size.item()), dtype=torch.uint8)
    group.broadcast(data, 0).wait()
    return json.loads(data.numpy().tobytes())


# ---------------------------------------------------------------------------------------------- trainer side


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
            _send_header(self._group, {"abort": f"{type(err).__name__}: {err}"})
            raise
        _send_header(self._group, {"end": True})

    def _stream(self, named_tensors: Iterator[tuple[str, Tensor]]) -> None:
        bucket = torch.empty(self._bucket_bytes, dtype=torch.uint8)
        entries: list[list[Any]] = []
        used = 0
        for name, tensor in named_tensors:
            raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
            entry = [name, _dtype_name(tensor.dtype), list(tensor.shape)]
            if raw.numel() > self._bucket_bytes:  # too big for any bucket: send it alone, uncopied
                self._flush(entries, bucket[:used])
                entries, used = [], 0
                self._flush([entry + [0]], raw)
                continue
            start = -(-used // _ALIGN) * _ALIGN
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
            _send_header(self._group, {"tensors": entries, "nbytes": payload.numel()})
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
            num_buffers=_NCCL_NUM_BUFFERS,
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


# ----------------------------------------------------------------------------------------------- engine side


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
        while "tensors" in (header := _recv_header(self._group)):
            payload = torch.empty(header["nbytes"], dtype=torch.uint8)
            self._group.broadcast(payload, 0).wait()
            if error is None:
                try:
                    self.model.load_weights(_unpack(header["tensors"], payload, expected))
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


def _unpack(entries: list[list[Any]], payload: Tensor, expected: dict[str, tuple[str, list[int]]]) -> list:
    """Views of one bucket's tensors, each checked against (and removed from) the announced metadata."""
    out = []
    for name, dtype_name, shape, offset in entries:
        if expected.pop(name, None) != (dtype_name, shape):
            raise ValueError(f"weight update: parameter {name!r} {dtype_name} {shape} was not announced as such")
        dtype = getattr(torch, dtype_name)
        numel = torch.Size(shape).numel()
        nbytes = numel * dtype.itemsize
        out.append((name, payload[offset : offset + nbytes].view(dtype).view(shape)))
    return out


# ---------------------------------------------------------------------- vLLM's trainer-side interface, registration


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
            "dtype_names": [_dtype_name(m.dtype) for m in meta],
            "shapes": [list(m.shape) for m in meta],
        }
        self.client.start_weight_update()
        # A failed send aborts the workers' receive, so waiting for them on the way out cannot hang.
        with ThreadPoolExecutor(max_workers=1) as pool:
            received = pool.submit(self.client.update_weights, update_info)
            self._sender.send(self.source)
            received.result()
        self.client.finish_weight_update()


def register_backend() -> None:
    """Register `clinical_gloo` with vLLM's worker and trainer factories (idempotent)."""
    # The factories raise on a second registration and have no lookup method: check their registries.
    if GLOO_BACKEND not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(GLOO_BACKEND, GlooWeightTransferEngine)
    if GLOO_BACKEND not in WeightTransferTrainerFactory._registry:
        WeightTransferTrainerFactory.register_engine(GLOO_BACKEND, GlooTrainerWeightTransferEngine)


register_backend()
