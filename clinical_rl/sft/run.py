"""The SFT stage: synthesised long-CoT rows -> packed batches -> SFTTrainer ranks (Ray actors) -> HF checkpoint.

    rows    = load_rows(synthesis output)                 # only items whose search succeeded
    samples = encode_rows(rows)                            # chat template; loss on thinking + response only
    for epoch in epochs:
        batches = shuffle(make_batches(samples))           # packed, cross-sample attention blocked
        trainers.train_steps(batches sharded over ranks)   # DeepSpeed, cosine schedule with warmup; W&B
    trainers.save_pretrained(output_dir / sft)             # loads in transformers and vLLM
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

from tqdm import tqdm

from clinical_rl.config import RunConfig
from clinical_rl.device import Device
from clinical_rl.launch.placement import create_placement_group, plan_group
from clinical_rl.sft.dataset import SFTSample, encode_rows, load_rows
from clinical_rl.sft.packing import PackedBatch, make_batches
from clinical_rl.tracking import Tracker

log = logging.getLogger(__name__)
STEPS_PER_CALL = 8


def run_sft(cfg: RunConfig, data_path: Path, model_path: Path, out_dir: Path) -> Path:
    """Fine-tune `model_path` on the rows of `data_path`; returns `out_dir` (HF format)."""
    import ray
    from ray.util.placement_group import remove_placement_group
    from transformers import AutoTokenizer

    from clinical_rl.actors.sft_trainer import SFTTrainer
    from clinical_rl.launch.actors import kill_all, trainer_group

    sft = cfg.sft
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.model.trust_remote_code)
    loaded = load_rows(data_path)
    encoded = encode_rows(tokenizer, loaded.rows, sft.max_len, cfg.data.system_prompt)
    log.info("SFT rows: %d usable, %d not done, %d truncated, %d dropped (prompt longer than max_len)",
             len(encoded.samples), loaded.not_done, encoded.truncated, encoded.dropped)
    if not encoded.samples:
        raise ValueError(f"{data_path}: no SFT rows to train on ({loaded.not_done} items without a 'done' row)")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    steps = len(epoch_batches(encoded.samples, cfg, pad_id, 0)) // sft.world_size
    if steps == 0:
        raise ValueError(f"{len(encoded.samples)} SFT rows make fewer batches than sft.world_size={sft.world_size}")
    device = Device(cfg.device)
    plan = plan_group("sft", sft.world_size, sft.num_cpus, device, strategy=cfg.placement.strategy)
    pg, _ = create_placement_group(plan, cfg.placement.ready_timeout_s)
    ranks: list = []
    try:
        ranks = trainer_group(SFTTrainer, plan.slots, pg, cfg.model, sft, device, model_path=str(model_path),
                              steps_per_epoch=steps, seed=cfg.seed)
        tracker = Tracker(cfg.tracking.model_copy(update={"run_name": f"{cfg.tracking.run_name or 'run'}-sft"}),
                          out_dir.parent, cfg.model_dump(mode="json"))
        with tqdm(total=sft.epochs * steps, desc="sft", unit="step") as bar:
            for epoch in range(sft.epochs):
                batches = epoch_batches(encoded.samples, cfg, pad_id, epoch)
                for start in range(0, steps, STEPS_PER_CALL):  # calls of a few steps, so progress shows
                    metrics = ray.get([r.train_steps.remote(batches[i::sft.world_size][start:start + STEPS_PER_CALL])
                                       for i, r in enumerate(ranks)])[0]
                    bar.update(min(STEPS_PER_CALL, steps - start))
                    bar.set_postfix(epoch=epoch + 1, loss=f"{metrics['sft/loss']:.3f}")
                    tracker.log({**metrics, "sft/epoch": epoch + 1}, bar.n, console=False)
        ray.get([r.save_pretrained.remote(str(out_dir)) for r in ranks])
        tracker.finish()
    finally:
        kill_all(ranks)
        remove_placement_group(pg)
    return out_dir


def epoch_batches(samples: list[SFTSample], cfg: RunConfig, pad_id: int, epoch: int) -> list[PackedBatch]:
    """Packed batches in a fresh seeded order every epoch (packing itself is by length, so it is fixed)."""
    batches = make_batches(samples, cfg.sft.max_len, cfg.sft.micro_batch_size, cfg.sft.pack, pad_id)
    random.Random(cfg.seed * 1000 + epoch).shuffle(batches)
    return batches
