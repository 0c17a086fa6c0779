"""Frozen-encoder feature maps computed once, and the decoder trained on them.

With the encoder frozen (eval mode) and no augmentation its feature maps are identical every
epoch, so ``train_segmentation`` computes them once (``cache_feature_maps``) and trains only the
decoder (``DecoderOnMaps``) through ``uslib.engine.fit``: the same optimisation as
``SegmentationMethod(mode="frozen")`` without one encoder pass per item and epoch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from uslib.evaluation.records import collate_records
from uslib.methods.base import Method

_IGNORE = -100  # target of items without a mask (as in ``segmentation``)


class DecoderOnMaps(Method):
    """The decoder of a frozen-encoder segmenter, trained on cached encoder feature maps.

    With the encoder frozen (eval mode) and no augmentation, its feature maps are the same every
    epoch, so they are computed once (``cache_feature_maps``); the result equals training
    ``SegmentationMethod(mode="frozen")`` at a fraction of the cost.
    """

    def __init__(self, decoder: nn.Module) -> None:
        """Wrap the decoder to train."""
        super().__init__()
        self.decoder = decoder

    def logits(self, feats: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """Feature maps -> (B, num_classes, *size) logits."""
        out = self.decoder(feats)
        if tuple(out.shape[-2:]) != tuple(size):
            out = nn.functional.interpolate(out, size=size, mode="bilinear", align_corners=False)
        return out

    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Pixel cross-entropy over the items that have a mask."""
        target = batch["mask"].clone()
        target[~batch["has_mask"].bool()] = _IGNORE
        logits = self.logits(batch["feats"], tuple(target.shape[-2:]))
        return {"loss": nn.functional.cross_entropy(logits, target, ignore_index=_IGNORE)}

    @property
    def encoder(self) -> nn.Module:
        """No encoder of its own (it lives outside, frozen)."""
        return nn.Identity()


@torch.no_grad()
def cache_feature_maps(encoder: nn.Module, dataset: Any, batch_size: int = 32) -> list[dict]:
    """``[{"feats": [(C_i, H_i, W_i), ...], "mask", "has_mask"}]`` per item (eval mode)."""
    was = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    out = []
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_records):
        maps = encoder.forward_features(batch["image"].to(device))
        for i in range(len(batch["image"])):
            out.append(
                {
                    "feats": [m[i].cpu() for m in maps],
                    "mask": batch["mask"][i],
                    "has_mask": batch["has_mask"][i],
                }
            )
    encoder.train(was)
    return out


@torch.no_grad()
def predict_cached(method: Method, cached: list[dict], batch_size: int = 64) -> dict[str, Any]:
    """``{"pred", "mask", "has_mask"}`` arrays of cached items (eval mode, no grad)."""
    assert isinstance(method, DecoderOnMaps)
    was = method.training
    method.eval()
    device = next(method.parameters()).device
    preds = []
    for k in range(0, len(cached), batch_size):
        chunk = cached[k : k + batch_size]
        feats = [
            torch.stack([c["feats"][j] for c in chunk]).to(device)
            for j in range(len(chunk[0]["feats"]))
        ]
        preds.append(method.logits(feats, tuple(chunk[0]["mask"].shape)).argmax(1).cpu())
    method.train(was)
    return {
        "pred": torch.cat(preds).numpy(),
        "mask": torch.stack([c["mask"] for c in cached]).numpy(),
        "has_mask": torch.stack([c["has_mask"] for c in cached]).numpy(),
    }
