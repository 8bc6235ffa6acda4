"""The wire of a `clinical_gloo` weight push, shared by both sides: backend choice, init info, headers, unpacking.

Wire format of one gloo push (every message is a rank-0 broadcast): per bucket a JSON header
`{"tensors": [[name, dtype, shape, byte_offset], ...], "nbytes": n}` then `n` payload bytes holding many
tensors; the stream ends with `{"end": true}`, or `{"abort": reason}` when the trainer fails mid-push (so the
engine stops waiting instead of hanging). The header stream lets both sides check names and shapes.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import Tensor

from clinical_rl.device import Device

GLOO_BACKEND = "clinical_gloo"
ALIGN = 64  # byte offset alignment inside a bucket, so any dtype can be viewed from the uint8 payload
NCCL_NUM_BUFFERS = 2  # vLLM's packed NCCL broadcast double-buffers; both sides must agree


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
    return info | {"packed": True, "packed_buffer_size_bytes": bucket_mb << 20, "packed_num_buffers": NCCL_NUM_BUFFERS}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def send_header(group: Any, header: dict[str, Any]) -> None:
    data = torch.frombuffer(bytearray(json.dumps(header).encode()), dtype=torch.uint8)
    group.broadcast(torch.tensor([data.numel()], dtype=torch.int64), 0).wait()
    group.broadcast(data, 0).wait()


def recv_header(group: Any) -> dict[str, Any]:
    size = torch.zeros(1, dtype=torch.int64)
    group.broadcast(size, 0).wait()
    data = torch.empty(int(size.item()), dtype=torch.uint8)
    group.broadcast(data, 0).wait()
    return json.loads(data.numpy().tobytes())



def unpack(entries: list[list[Any]], payload: Tensor, expected: dict[str, tuple[str, list[int]]]) -> list:
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


