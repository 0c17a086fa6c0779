"""Cost of an encoder: parameters, GFLOPs per image and forward throughput.

GFLOPs follow the papers' (fvcore / VMamba README) convention: one multiply-add counts as one
FLOP, so the value is half of what ``torch.utils.flop_counter`` reports. Operations the counter
does not know (e.g. a custom selective scan written from elementwise ops) are not counted, which
the table notes.
"""

from __future__ import annotations

import time

import pandas as pd
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(module: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def gflops(encoder: nn.Module, img_size: int, in_chans: int | None = None) -> float:
    """Multiply-adds (in G) of one pooled forward pass on a (1, C, S, S) image."""
    c = in_chans or int(getattr(encoder, "in_chans", 1))
    was = encoder.training
    encoder.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        encoder(torch.zeros(1, c, img_size, img_size))
    encoder.train(was)
    return counter.get_total_flops() / 2 / 1e9


@torch.no_grad()
def throughput(
    encoder: nn.Module, img_size: int, *, batch_size: int = 16, repeats: int = 3
) -> float:
    """Images per second of the pooled forward pass (eval mode, no grad, best of ``repeats``)."""
    c = int(getattr(encoder, "in_chans", 1))
    was = encoder.training
    encoder.eval()
    x = torch.rand(batch_size, c, img_size, img_size)
    encoder(x)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        encoder(x)
        best = min(best, time.perf_counter() - t0)
    encoder.train(was)
    return batch_size / best


def cost_row(
    name: str,
    encoder: nn.Module,
    img_size: int,
    *,
    flops_img_size: int | None = None,
    batch_size: int = 16,
) -> dict:
    """Cost of one encoder.

    Args:
        name: label of the row.
        encoder: the backbone.
        img_size: image side for the throughput measurement.
        flops_img_size: image side for GFLOPs (default ``img_size``; the papers quote 224);
            encoders fixed to one size (``uslib.models.adapter.EncoderAdapter``) are counted at
            that size.
        batch_size: throughput batch.

    Returns:
        ``{backbone, params_m, gflops, gflops_img_size, images_per_s, img_size, threads}``.
    """
    fixed = getattr(encoder, "size", None)  # an EncoderAdapter: the size it was built for
    fsize = int(fixed[0]) if fixed else (flops_img_size or img_size)
    return {
        "backbone": name,
        "params_m": count_params(encoder) / 1e6,
        "gflops": gflops(encoder, fsize),
        "gflops_img_size": fsize,
        "images_per_s": throughput(encoder, img_size, batch_size=batch_size),
        "img_size": img_size,
        "threads": torch.get_num_threads(),
    }


def cost_table(
    encoders: dict[str, nn.Module],
    img_size: int,
    *,
    flops_img_size: int | None = None,
    batch_size: int = 16,
) -> pd.DataFrame:
    """Cost rows (``cost_row``) of several encoders, one per architecture."""
    rows = [
        cost_row(n, e, img_size, flops_img_size=flops_img_size, batch_size=batch_size)
        for n, e in encoders.items()
    ]
    return pd.DataFrame(rows)
