"""TinyUSFM method pieces: consistency weights on a planted case, the frozen teacher, the
proxy's closed-form per-sample gradient norm, teacher loading errors, the paper facts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from uslib.engine import fit
from uslib.losses.dynamic_distillation import (
    consistency,
    consistency_weights,
    feature_mse,
    frequency_loss,
)
from uslib.methods import tinyusfm
from uslib.methods.base import Progress
from uslib.methods.tinyusfm_coreset import ProxyStudent
from uslib.models import create_backbone


def _planted_tokens() -> tuple[torch.Tensor, torch.Tensor]:
    """4 samples: the first two agree across masks (c = 1), the last two disagree."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 5, 8, generator=g)
    b = a.clone()
    b[2:] = torch.randn(2, 5, 8, generator=g)
    return a, b


@pytest.mark.parametrize("mode", ["softmax", "power"])
def test_weights_larger_for_consistent_samples(mode: str) -> None:
    a, b = _planted_tokens()
    c = consistency(a, b)
    assert torch.allclose(c[:2], torch.ones(2))
    w = consistency_weights(c, mode, temperature=0.1, gamma=2.0, strength=1.0)
    assert torch.isfinite(w).all() and (w >= 0).all()
    assert w[:2].min() > w[2:].max()
    assert float(w.mean()) == pytest.approx(1.0, rel=1e-5)
    # strength 0 is plain distillation; strength 0.5 mixes halfway
    assert torch.allclose(consistency_weights(c, mode, strength=0.0), torch.ones(4))
    mid = consistency_weights(c, mode, temperature=0.1, strength=0.5)
    assert torch.allclose(mid, 0.5 + 0.5 * w)


def test_softmax_weights_by_hand() -> None:
    c = torch.tensor([0.0, 0.1])
    w = consistency_weights(c, "softmax", temperature=0.1)
    e = torch.exp(torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(w, 2 * e / e.sum())
    with pytest.raises(ValueError, match="weighting"):
        consistency_weights(c, "nope")


def test_feature_mse_and_frequency_loss() -> None:
    t = torch.randn(2, 3, 4)
    assert torch.allclose(feature_mse(t, t, "none"), torch.zeros(2))
    ln = torch.nn.functional.layer_norm(t, (4,))
    torch.testing.assert_close(feature_mse(torch.zeros_like(t), t), (ln**2).mean(dim=(1, 2)))
    x = torch.rand(2, 1, 8, 8)
    y = x + 0.5  # adds 0.5 * 8 (orthonormal DFT) to the DC bin only
    assert float(frequency_loss(y, x)) == pytest.approx(4.0 / 64, rel=1e-5)


def test_teacher_frozen_and_student_trained() -> None:
    cfg = tinyusfm.TinyUSFMConfig()
    method = tinyusfm.build(cfg).train()
    assert not method.teacher.training
    method.set_progress(Progress(step=5, total_steps=10))
    out = method.training_step({"image": torch.rand(4, 1, 32, 32)})
    out["loss"].backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    assert all(p.grad is not None for p in method.projectors.parameters())
    assert method.student.patch_embed.proj.weight.grad is not None
    assert float(out["strength"]) == pytest.approx(0.5)  # cosine ramp 0 -> 1 at half-way
    assert {"kd", "rec_pix", "rec_freq", "consistency_b1", "consistency_b2"} <= set(out)


def test_proxy_gradient_norm_is_exact() -> None:
    torch.manual_seed(0)
    proxy = ProxyStudent(create_backbone("vit_smoke"), 6, n_items=3, epochs=1)
    batch = {
        "image": torch.rand(3, 1, 32, 32),
        "index": torch.arange(3),
        "target": torch.randn(3, 6),
    }
    proxy.training_step(batch)
    for i in range(3):  # autograd per sample on the head (W, b)
        proxy.zero_grad()
        h = proxy.backbone(batch["image"][i : i + 1]).detach()
        loss = ((proxy.head(h) - batch["target"][i : i + 1]) ** 2).mean()
        loss.backward()
        g = torch.sqrt(proxy.head.weight.grad.pow(2).sum() + proxy.head.bias.grad.pow(2).sum())
        assert float(proxy.curves[i, 0]) == pytest.approx(float(g), rel=1e-4)


def test_teacher_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="teacher_checkpoint.*USFM"):
        tinyusfm.build(tinyusfm.TinyUSFMConfig(teacher_format="usfm"))
    missing = tmp_path / "USFM_latest.pth"
    with pytest.raises(FileNotFoundError, match="teacher_checkpoint.*USFM_latest.pth"):
        tinyusfm.build(tinyusfm.TinyUSFMConfig(teacher_checkpoint=str(missing)))


def test_paper_facts() -> None:
    cfg = tinyusfm.TinyUSFMConfig.preset("paper")
    assert cfg.student_blocks == (4, 8, 12) and cfg.teacher_backbone == "usfm_vit_base"
    student = create_backbone(cfg.backbone, in_chans=3)
    assert sum(p.numel() for p in student.parameters()) == 5_524_416
    assert student.blocks[0].attn.num_heads == 12


def test_coreset_in_train_data_respects_budget() -> None:
    cfg = tinyusfm.TinyUSFMConfig()
    method = tinyusfm.build(cfg)
    data = tinyusfm.train_data(cfg, method, fit=fit)
    n_pool = len(data.train.pool)
    assert len(data.train) == round(cfg.coreset_budget * n_pool)
    assert data.train.selection.per_cluster.tolist() == [4, 4, 4]  # 12 over 3 clusters
    assert data.train.selection.scores["curves"].shape == (n_pool, cfg.coreset_warmup_epochs)
    again = tinyusfm.train_data(cfg, tinyusfm.build(cfg), fit=fit)
    assert again.train.indices.tolist() == data.train.indices.tolist()


def test_teacher_blocks_follow_student_depth_fractions() -> None:
    assert tinyusfm.proportional_blocks((4, 8, 12), 12, 12) == (4, 8, 12)
    assert tinyusfm.proportional_blocks((4, 8, 12), 12, 8) == (3, 5, 8)  # 2.67, 5.33, 8
    assert tinyusfm.proportional_blocks((1, 2), 2, 4) == (2, 4)
    cfg = tinyusfm.TinyUSFMConfig(teacher_backbone="vit_mae_smoke_large")  # 4 blocks
    method = tinyusfm.build(cfg)
    assert method.teacher_blocks == (2, 4) and method.teacher_idx == [1, 3]


def test_image_pool_skips_masks_by_the_layouts_rule(tmp_path: Path) -> None:
    """A plain folder as TinyUSFM's pool: BUSI ``_mask`` / ``_mask_1`` files and ``masks/``
    folders are not pool images (``items.is_mask_file``); a name merely holding "mask" is."""
    import numpy as np
    from PIL import Image

    from uslib.data.items import is_mask_file
    from uslib.methods.tinyusfm_data import ImagePool

    names = ["a/x (1).png", "a/x (1)_mask.png", "a/x (1)_Mask_1.png", "masks/001_HC.png",
             "images/001_HC.png", "b/maskless scan.png", "b/c.webp", "b/.hidden.png"]  # fmt: skip
    for n in names:
        (tmp_path / n).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((10, 12), 128, np.uint8)).save(tmp_path / n)
    pool = ImagePool(tmp_path, img_size=8)
    kept = {f.relative_to(tmp_path).as_posix() for f in pool.files}
    # every extension of media.IMAGE_EXTS (.webp included); hidden files skipped as by the loaders
    assert kept == {"a/x (1).png", "images/001_HC.png", "b/maskless scan.png", "b/c.webp"}
    (tmp_path / "b/notes.txt").write_text("not an image")
    assert len(ImagePool(tmp_path, img_size=8)) == len(kept)
    assert [n for n in names if is_mask_file(tmp_path / n)] == [
        "a/x (1)_mask.png", "a/x (1)_Mask_1.png", "masks/001_HC.png"]  # fmt: skip
    item = pool[0]
    assert item["image"].shape == (1, 8, 8) and item["index"] == 0
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        ImagePool(tmp_path / "empty", img_size=8)
