"""The one place DeepSpeed is set up: process group, engine config, engine, minibatch stepping, HF save.

Policy and critic trainers (and later SFT) share it; one engine per process (STACK.md: several engines in one
process abort at exit). `deepspeed` is imported inside the functions so `Device.setup_process()` can set
`DS_ACCELERATOR` before DeepSpeed picks its accelerator (it does so on import).

Loss normalisation for a PPO minibatch split over data-parallel ranks and micro-batches: every micro-batch loss is
(sum over its tokens) / (GLOBAL token count of the minibatch). Summed over all micro-batches of all ranks, that is
the full-minibatch token mean, so sharding and micro-batching leave the gradient unchanged. `backward_step` undoes
DeepSpeed's two averagings (over ranks, over accumulation steps) so that sum is what reaches the optimizer.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import socket
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from clinical_rl.rl.batch import Experience, shard_rows
from clinical_rl.config import TrainerConfig
from clinical_rl.config_base import ModelConfig
from clinical_rl.device import Device, torch_dtype

_PRECISION: dict[str, dict[str, Any]] = {
    "float32": {},
    "bfloat16": {"bf16": {"enabled": True}},  # DeepSpeed keeps fp32 master weights in its optimizer wrapper
    "float16": {"fp16": {"enabled": True, "initial_scale_power": 16}},  # dynamic loss scaling
}


def init_distributed(device: Device, rank: int, world_size: int, master_address: str, master_port: int) -> None:
    """Join the trainer group (gloo on CPU, NCCL on GPU) through the env:// rendezvous DeepSpeed reads."""
    os.environ.update(
        MASTER_ADDR=master_address,
        MASTER_PORT=str(master_port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        # Ray gives each GPU actor its own CUDA_VISIBLE_DEVICES, so the process's device is always index 0.
        LOCAL_RANK="0",
    )
    import deepspeed

    # `connect_ray` puts the run's `ray.log_level` here; DeepSpeed sets its logger to INFO on import.
    deepspeed.utils.logger.setLevel(os.environ.get("CLINICAL_RL_LOG_LEVEL", "INFO"))
    deepspeed.init_distributed(
        dist_backend=device.collective_backend,
        auto_mpi_discovery=False,
        distributed_port=master_port,
        rank=rank,
        world_size=world_size,
    )


def ds_config(cfg: TrainerConfig, dtype: str, grad_accum_steps: int) -> dict[str, Any]:
    """DeepSpeed config of one trainer; DeepSpeed derives train_batch_size = micro * accum * world_size."""
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": grad_accum_steps,
        "gradient_clipping": cfg.max_grad_norm,
        "zero_optimization": {"stage": cfg.zero_stage},
        "zero_allow_untested_optimizer": True,  # our torch AdamW client optimizer
        "steps_per_print": 1_000_000_000,
        "wall_clock_breakdown": False,
        **_PRECISION[dtype],
    }


def load_hf_model(auto_cls: Any, path: str, model: ModelConfig, gradient_checkpointing: bool = False) -> nn.Module:
    """`auto_cls.from_pretrained` (AutoModelForCausalLM, AutoModel) with the run's dtype and remote-code choice.

    The full model is materialised on every rank before ZeRO partitions it; models that do not fit one host's
    memory need `zero.Init` loading (not done yet).
    """
    hf = auto_cls.from_pretrained(path, dtype=torch_dtype(model.dtype), trust_remote_code=model.trust_remote_code)
    hf.config.use_cache = False  # training and scoring never decode
    if gradient_checkpointing:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return hf


def _param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases and norm weights (1-D parameters)."""
    params = [p for p in module.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def build_engine(module: nn.Module, cfg: TrainerConfig, dtype: str, grad_accum_steps: int) -> Any:
    """Wrap `module` in a DeepSpeed engine with a torch AdamW client optimizer and constant learning rate.

    ZeRO-Offload is not supported with a torch optimizer (DeepSpeed refuses it; it needs DeepSpeedCPUAdam).
    """
    import deepspeed

    optimizer = torch.optim.AdamW(_param_groups(module, cfg.weight_decay), lr=cfg.lr)
    engine, *_ = deepspeed.initialize(
        model=module, optimizer=optimizer, config=ds_config(cfg, dtype, grad_accum_steps)
    )
    return engine


def grad_accum_steps(minibatch_size: int, world_size: int, micro_batch_size: int) -> int:
    """Micro-batches per rank per minibatch (the same on every rank, so ZeRO collectives line up)."""
    if minibatch_size % world_size:
        raise ValueError(f"minibatch_size={minibatch_size} is not divisible by world_size={world_size}")
    return math.ceil(minibatch_size // world_size / micro_batch_size)


def rank_micro_batches(index: Tensor, rank: int, world_size: int, micro_batch_size: int, steps: int,
                       lengths: Tensor | None = None) -> list[Tensor]:
    """This rank's rows of minibatch `index` (its `shard_rows` shard), split into `steps` micro-batches.

    With `lengths` (tokens per row of the whole batch), rows of similar length share a micro-batch: each is trimmed
    to its longest row, so sorting cuts the padding computed. The loss is normalised by the minibatch's global
    token count, so the order of the rows does not change the gradient.
    """
    mine = index[shard_rows(len(index), rank, world_size)]
    if lengths is not None:
        mine = mine[lengths[mine].argsort(descending=True, stable=True)]
    micro = list(mine.split(micro_batch_size))
    if len(micro) != steps:
        raise ValueError(
            f"minibatch of {len(index)} rows gives {len(micro)} micro-batches per rank; the engine was built for"
            f" {steps} (minibatch_size is fixed at construction)"
        )
    return micro


MicroStep = Callable[[Experience, float], dict[str, float]]


def train_minibatch(
    engine: Any, exp: Experience, index: Tensor, rank: int, world_size: int, micro_batch_size: int, grad_accum: int,
    micro_step: MicroStep, role: str,
) -> dict[str, float]:
    """One optimizer step over minibatch rows `index` (this rank's shard, in micro-batches); token-mean metrics.

    `micro_step(rows, num_tokens)` runs forward + loss + `backward_step` and returns token-weighted sums plus
    `tokens`, `seen_tokens` and `grad_norm`. Policy and critic share this loop.
    """
    start = time.perf_counter()
    engine.train()
    num_tokens = float(exp.mask[index].sum())  # GLOBAL: the same denominator on every rank
    sums: dict[str, float] = defaultdict(float)
    lengths = exp.rollout.attention_mask.sum(dim=1)
    for rows in rank_micro_batches(index, rank, world_size, micro_batch_size, grad_accum, lengths):
        for key, value in micro_step(exp.select(rows), num_tokens).items():
            sums[key] += value
    tokens, seen_tokens, norm = sums.pop("tokens"), sums.pop("seen_tokens"), sums.pop("grad_norm")
    metrics = {key: value / max(tokens, 1.0) for key, value in sums.items()}
    metrics[f"{role}/grad_norm"] = norm
    metrics[f"{role}/lr"] = float(engine.get_lr()[0])
    metrics[f"perf/{role}_tokens_per_s"] = seen_tokens / (time.perf_counter() - start)
    return metrics


def backward_step(engine: Any, loss: Tensor, world_size: int) -> float | None:
    """Backward one micro-batch loss normalised by the GLOBAL minibatch token count, then `engine.step()`.

    DeepSpeed averages gradients over ranks, so the loss is scaled by world_size to make that a sum;
    `scale_wrt_gas=False` skips its 1/accum scaling (the global normalisation already covers it). `step()` runs
    after every micro-batch: DeepSpeed applies the optimizer only at the accumulation boundary.
    Returns the global gradient norm (before clipping) when this micro-batch stepped the optimizer, else None.
    """
    engine.backward(loss * world_size, scale_wrt_gas=False)
    boundary = engine.is_gradient_accumulation_boundary()
    norm = None
    if boundary and not (engine.zero_optimization() or engine.bfloat16_enabled() or engine.fp16_enabled()):
        # The plain fp32 path clips with torch and drops the norm; grads are already all-reduced here.
        grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
        norm = float(torch.nn.utils.get_total_norm(grads))
    engine.step()
    if boundary and norm is None:
        ds_norm = engine.get_global_grad_norm()  # ZeRO / mixed-precision optimizers record it
        norm = math.nan if ds_norm is None else float(ds_norm)
    return norm


def gather_state_dict(module: nn.Module, zero_stage: int) -> dict[str, Tensor] | None:
    """Full CPU state dict on rank 0 (None elsewhere). Collective under ZeRO-3: every rank must call it.

    Parameters are gathered one at a time, so no rank ever holds more than one full tensor beyond its shard.
    """
    import deepspeed

    rank0 = dist.get_rank() == 0
    persistent = set(module.state_dict().keys())
    state: dict[str, Tensor] = {}
    for name, param in module.named_parameters():
        with deepspeed.zero.GatheredParameters([param], enabled=zero_stage == 3):
            if rank0:
                state[name] = param.detach().cpu().clone()
    for name, buf in module.named_buffers():
        if rank0 and name in persistent:
            state[name] = buf.detach().cpu().clone()
    return state if rank0 else None


def save_hf(
    engine: Any,
    tokenizer: Any | None,
    out_dir: str | Path,
    zero_stage: int,
    *,
    hf_prefix: str = "",
    extras_file: str | None = None,
) -> None:
    """Write a HF directory (transformers and vLLM load it). Collective: every rank calls it; rank 0 writes.

    With `hf_prefix` (the critic: "base."), the HF model is that submodule and the other weights go to
    `extras_file` (safetensors) in the same directory. Written to a temp dir and renamed into place, so a killed
    save never leaves a half-written model behind.
    """
    state = gather_state_dict(engine.module, zero_stage)
    if state is not None:
        hf_model = engine.module.get_submodule(hf_prefix.rstrip(".")) if hf_prefix else engine.module
        hf_state = {k.removeprefix(hf_prefix): v for k, v in state.items() if k.startswith(hf_prefix)}
        extras = {k: v for k, v in state.items() if not k.startswith(hf_prefix)}
        out = Path(out_dir)
        tmp, old = out.with_name(out.name + ".tmp"), out.with_name(out.name + ".old")
        for stale in (tmp, old):
            shutil.rmtree(stale, ignore_errors=True)
        hf_model.save_pretrained(tmp, state_dict=hf_state)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if extras:
            from safetensors.torch import save_file

            if extras_file is None:
                raise ValueError(f"weights outside {hf_prefix!r} need an extras_file: {sorted(extras)}")
            save_file(extras, str(tmp / extras_file))
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def warmup() -> None:
    """JIT-build DeepSpeed's CPU shm comm op once (~40 s; cached in ~/.cache/torch_extensions) at `make setup`."""
    device = Device("cpu")
    device.setup_process()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    init_distributed(device, 0, 1, "127.0.0.1", port)
    dist.destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", action="store_true", help="build the CPU comm op and exit")
    if parser.parse_args().warmup:
        warmup()
