"""Loss functions shared by the methods, one module per family.

Each loss is a plain function on tensors, checked in ``tests/test_losses.py`` (and the method
tests) against a hand-written reference. Methods choose and weight them; no loss lives on a
model. Families: ``contrastive`` (NT-Xent, InfoNCE, masked CE), ``reconstruction`` (masked
pixel MSE with per-patch normalised targets); methods add theirs as new modules
(self-distillation, feature distillation, token prediction) and export them here.
"""

from uslib.losses.contrastive import info_nce, masked_cross_entropy, nt_xent
from uslib.losses.reconstruction import masked_mse

__all__ = ["info_nce", "masked_cross_entropy", "masked_mse", "nt_xent"]
