"""The base of every config node, and the sections several commands share (model, vLLM engine)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from clinical_rl.device import DTypeName


class ConfigNode(BaseModel):
    """A config section: unknown keys are errors (typos name their line), values are frozen once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(ConfigNode):
    """The policy's model: where it is, its dtype, and whether its own code may run."""

    path: str = Field("embedded", description="HF model directory, or 'embedded' for SmolLM2-135M-Instruct")
    dtype: DTypeName = Field("float32", description="weights/compute dtype of every role")
    trust_remote_code: bool = Field(False, description="allow model code from the checkpoint (opt-in)")


class EngineConfig(ConfigNode):
    """The one shape of every vLLM engine: rollout, judge, evaluation and synthesis (`launch/engines.py`)."""

    num_engines: int = Field(1, ge=1, description="vLLM engine actors (data parallel)")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per engine bundle")
    dtype: DTypeName | None = Field(None, description="weights dtype; null: model.dtype")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per engine (vLLM tensor parallel, one node)")
    max_model_len: int = Field(2048, ge=16, description="prompt + response cap of the engine")
    enforce_eager: bool = Field(True, description="skip graph capture/compile (fast start)")
    kv_cache_gib: float = Field(2.0, gt=0, description="CPU KV cache size (VLLM_CPU_KVCACHE_SPACE)")
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1, description="GPU memory fraction for vLLM")
    max_restarts: int = Field(3, ge=0, description="times Ray restarts an engine whose process died")

    @model_validator(mode="after")
    def _check_tp(self) -> EngineConfig:
        if self.tensor_parallel_size > 1 and self.num_cpus < self.tensor_parallel_size:
            raise ValueError(f"num_cpus={self.num_cpus} must be >= tensor_parallel_size={self.tensor_parallel_size} "
                             "(one worker process per GPU)")
        return self

