"""The encoder input adapter: feeds a backbone the input convention of its pretraining.

Evaluation builds encoders from ``encoder.yaml`` (backbone, kwargs, ``input_norm``) and feeds them
[0, 1] images of one evaluation size; ``adapt_encoder`` wraps an encoder that needs a resize (fixed
token grid) or a normalisation (e.g. USCL's ``(x - 0.5) / 0.25``) so every protocol sees one
contract: ``forward(x in [0, 1]) -> (B, num_features)``.
"""

from __future__ import annotations

import torch
from torch import nn


class EncoderAdapter(nn.Module):
    """Feeds an encoder its pretraining input convention: optional resize to the size it was
    built for (USFM's relative-position tables fix the grid) and optional normalisation
    ``(x - mean) / std`` (e.g. USCL's 0.5 / 0.25, recorded as ``input_norm`` in ``encoder.yaml``).
    Everything else (``num_features``, ``feature_info``, ``last_block``) passes through."""

    def __init__(
        self,
        inner: nn.Module,
        size: tuple[int, int] | None = None,
        norm: tuple[float, float] | None = None,
    ) -> None:
        """Wrap ``inner``; ``size`` (H, W) and ``norm`` (mean, std) are each optional."""
        super().__init__()
        self.inner = inner
        self.size = tuple(size) if size is not None else None
        self.norm = (float(norm[0]), float(norm[1])) if norm is not None else None
        self.num_features, self.in_chans = inner.num_features, inner.in_chans
        self.feature_info = inner.feature_info
        # Adopt the wrapped encoder's mode: a fresh module is in train mode, and callers that
        # restore the mode they found (extract_features) would otherwise flip a frozen encoder.
        self.train(inner.training)

    def _fit(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = nn.functional.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        if self.norm is not None:
            x = (x - self.norm[0]) / self.norm[1]
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> (B, num_features)."""
        return self.inner(self._fit(x))

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of the adapted input."""
        return self.inner.forward_features(self._fit(x))

    def last_block(self) -> nn.Module:
        """The wrapped encoder's last block."""
        return self.inner.last_block()


def adapt_encoder(
    encoder: nn.Module, img_size: int | None = None, norm: tuple[float, float] | None = None
) -> nn.Module:
    """``encoder`` wrapped in an ``EncoderAdapter`` when it needs one.

    Args:
        encoder: a backbone.
        img_size: evaluation image side; when the encoder rejects it, inputs are resized to the
            size its patch embedding was built for.
        norm: ``(mean, std)`` input normalisation of its pretraining, or None.

    Returns:
        ``encoder`` itself, or the adapter around it.
    """
    size = None
    if img_size is not None:
        try:
            with torch.no_grad():
                encoder.eval()(torch.zeros(1, int(encoder.in_chans), img_size, img_size))
        except (ValueError, RuntimeError, AssertionError):
            size = getattr(getattr(encoder, "patch_embed", None), "img_size", None)
            if size is None:
                raise
    if size is None and norm is None:
        return encoder
    return EncoderAdapter(encoder, size, norm)
