"""The one place that knows which accelerator we run on.

Everything device-specific (torch device, dtype, collective backend, Ray bundle shape) is derived here from the
config's `device` ("cpu" or "gpu"); the rest of the code never names an accelerator. CI greps for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import torch

DeviceKind = Literal["cpu", "gpu"]
DTypeName = Literal["float32", "bfloat16", "float16"]

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def torch_dtype(name: DTypeName) -> torch.dtype:
    """Map a config dtype name to a torch dtype."""
    return _DTYPES[name]


@dataclass(frozen=True)
class Device:
    """Device facts for one role: what torch, DeepSpeed, vLLM and Ray need to be told."""

    kind: DeviceKind

    @property
    def is_gpu(self) -> bool:
        return self.kind == "gpu"

    @property
    def collective_backend(self) -> str:
        """torch.distributed backend for trainer groups and weight sync."""
        return "nccl" if self.is_gpu else "gloo"

    @property
    def deepspeed_accelerator(self) -> str:
        return "cuda" if self.is_gpu else "cpu"

    def torch_device(self, local_rank: int = 0) -> torch.device:
        """The device tensors of this process live on (Ray sets CUDA_VISIBLE_DEVICES per actor)."""
        return torch.device("cuda", local_rank) if self.is_gpu else torch.device("cpu")

    def bundle(self, num_cpus: float, num_gpus: float = 1.0) -> dict[str, float]:
        """Placement-group bundle for one actor instance."""
        return {"GPU": num_gpus, "CPU": num_cpus} if self.is_gpu else {"CPU": num_cpus}

    def actor_gpus(self, num_gpus: float = 1.0) -> float:
        """`num_gpus` for `ray.remote(...)`; 0 on CPU so Ray never waits for a GPU that does not exist."""
        return num_gpus if self.is_gpu else 0.0

    def setup_process(self, num_threads: int | None = None) -> None:
        """Per-process setup inside an actor: accelerator choice for DeepSpeed and CPU thread count.

        Ray sets OMP_NUM_THREADS=1 for fractional-CPU actors; our phases run one after another, so a CPU actor
        may use every core while it is the one working.
        """
        os.environ.setdefault("DS_ACCELERATOR", self.deepspeed_accelerator)
        if os.environ.get("CLINICAL_RL_LOG_LEVEL") == "WARNING":  # `ray.log_level`: no per-model load bars
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        if not self.is_gpu:
            torch.set_num_threads(num_threads or os.cpu_count() or 1)

    def empty_cache(self) -> None:
        if self.is_gpu:
            torch.cuda.empty_cache()

    @staticmethod
    def gpu_available() -> bool:
        return torch.cuda.is_available()
