"""Run by test_distributed.py under torchrun: one fit per rank, weights saved per rank."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from engine_toys import ToyImages, ToyRegressor

from uslib.config import OptimConfig
from uslib.engine import fit

if __name__ == "__main__":
    out, per_rank_batch = Path(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(1)
    method = ToyRegressor(noise=0.0)
    opt = OptimConfig(lr=3e-3, weight_decay=0.01, batch_size=per_rank_batch, epochs=3)
    fit(method, ToyImages(16), opt, progress=False)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else "none"
    torch.save({"state": method.state_dict(), "backend": backend}, out / f"rank{rank}.pt")
