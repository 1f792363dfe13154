"""Plumbing shared by the training commands: device and DDP setup, seeding, atomic
checkpoints, and progress logging."""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)


def setup(device: str = "auto", seed: int = 0) -> Runtime:
    """Pick the device; join a torchrun process group when WORLD_SIZE > 1 (DDP, no code change)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        dev = torch.device("cpu")
    if world > 1:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed + rank)
    return Runtime(dev, rank, world, local)


def save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


class Progress:
    """Prints step, losses and throughput every `every` seconds (rank 0 only)."""

    def __init__(self, rt: Runtime, every: float = 30.0):
        self.rt, self.every = rt, every
        self.t0 = self.last = time.time()
        self.items = 0
        self.acc: dict[str, float] = {}
        self.cnt: dict[str, int] = {}

    def update(self, step: int, items: int, **losses: float) -> None:
        self.items += items
        for k, v in losses.items():
            self.acc[k] = self.acc.get(k, 0.0) + float(v)
            self.cnt[k] = self.cnt.get(k, 0) + 1
        now = time.time()
        if now - self.last >= self.every and self.rt.main:
            rate = self.items / (now - self.last)
            parts = " ".join(f"{k} {v / self.cnt[k]:.4f}" for k, v in self.acc.items())
            print(f"step {step} {parts} | {rate:.1f} items/s | {now - self.t0:.0f}s", flush=True)
            self.last, self.items, self.acc, self.cnt = now, 0, {}, {}


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model
