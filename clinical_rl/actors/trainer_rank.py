"""What every DeepSpeed trainer rank (policy, critic, SFT) does the same way: process setup, joining the trainer
group, and saving / restoring its full training state.

Subclasses build `self.engine` (`deepspeed_engine.build_engine`) after calling `TrainerRank.__init__`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clinical_rl.actors.deepspeed_engine import init_distributed, save_hf
from clinical_rl.config import TrainerConfig
from clinical_rl.device import Device


@dataclass(frozen=True)
class GroupRank:
    """This rank's place in its trainer group and the group's rendezvous (rank 0's node)."""

    rank: int
    world_size: int
    master_address: str
    master_port: int


class TrainerRank:
    """One data-parallel rank: `setup_process` before anything imports DeepSpeed, seeded, in the trainer group."""

    engine: Any  # the DeepSpeed engine, built by the subclass

    def __init__(self, cfg: TrainerConfig, device: Device, model_path: str, group: GroupRank, seed: int) -> None:
        device.setup_process()
        torch.manual_seed(seed)
        self.cfg, self.device, self.model_path = cfg, device, model_path
        self.rank, self.world_size = group.rank, group.world_size
        self.torch_device = device.torch_device()
        init_distributed(device, group.rank, group.world_size, group.master_address, group.master_port)

    def ready(self) -> bool:
        return True

    def save_checkpoint(self, directory: str, tag: str) -> None:
        """Weights, optimizer (ZeRO shards per rank) and scheduler in DeepSpeed's format under `directory/tag`.
        Collective: every rank calls it."""
        self.engine.save_checkpoint(directory, tag=tag, save_latest=False)

    def load_checkpoint(self, directory: str, tag: str) -> int:
        """Restore what `save_checkpoint` wrote; returns the optimizer steps taken so far. Collective."""
        if not (Path(directory) / tag).is_dir():
            raise FileNotFoundError(f"no trainer checkpoint at {Path(directory) / tag}")
        path, _ = self.engine.load_checkpoint(directory, tag=tag, load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint at {Path(directory) / tag}")
        # DeepSpeed restores the saved optimizer hyperparameters; a resume that accepted new ones
        # (resume_accept_changes) must train with the config's. Group 0 is the decayed one (`_param_groups`).
        for i, group in enumerate(self.engine.optimizer.param_groups):
            group["lr"] = self.cfg.lr
            group["weight_decay"] = self.cfg.weight_decay if i == 0 else 0.0
        return self.optimizer_steps()

    def optimizer_steps(self) -> int:
        return int(self.engine.global_steps)

    def save_pretrained(self, out_dir: str) -> None:
        """Write a HF directory (weights, config, tokenizer). Collective: call every rank; rank 0 writes."""
        from transformers import AutoTokenizer

        has_tokenizer = (Path(self.model_path) / "tokenizer_config.json").is_file()
        tokenizer = AutoTokenizer.from_pretrained(self.model_path) if has_tokenizer and self.rank == 0 else None
        save_hf(self.engine, tokenizer, out_dir, self.cfg.zero_stage)
