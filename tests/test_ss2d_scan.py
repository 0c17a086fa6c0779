"""The fused SS2D scan (numba CPU kernel) against its definition: cross-scan -> sequential
selective scan -> cross-merge, values and every gradient; SS2D's dispatch; bad input."""

from __future__ import annotations

import pytest
import torch

from uslib.models import create_backbone
from uslib.models import vmamba as vm
from uslib.ops import ss2d_scan
from uslib.ops.selective_scan import selective_scan_ref
from uslib.ops.ss2d_scan import fused_scan_available, scan_orders, ss2d_scan_fused

pytestmark = pytest.mark.skipif(not fused_scan_available(), reason="numba is not installed")


def _inputs(b, di, H, W, dtype=torch.float32, seed=0, bias=True):
    g, L = torch.Generator().manual_seed(seed), H * W

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    A = -(torch.rand(4 * di, 1, generator=g, dtype=dtype) + 0.2)
    ts = [r(b, L, di), 0.5 * r(4, b, L, di), A, r(b, L, 4), r(b, L, 4), r(4 * di),
          r(4 * di) - 2 if bias else None]  # fmt: skip
    return [t.requires_grad_() if t is not None else None for t in ts]


def _definition(u, delta, A, B, C, D, bias, H, W):
    """The same maths the unfused way: per-direction sequences, ``selective_scan_ref``, merge."""
    b, L, di = u.shape
    order = scan_orders(H, W)
    xs = vm.cross_scan(u.transpose(1, 2).reshape(b, di, H, W)).flatten(1, 2)
    ds = torch.stack([delta[k].transpose(1, 2)[..., order[k]] for k in range(4)], 1)
    Bs = torch.stack([B[:, :, k][..., order[k]] for k in range(4)], 1).unsqueeze(2)
    Cs = torch.stack([C[:, :, k][..., order[k]] for k in range(4)], 1).unsqueeze(2)
    y = selective_scan_ref(xs, ds.flatten(1, 2), A, Bs, Cs, D, delta_bias=bias, delta_softplus=True)
    return vm.cross_merge(y.view(b, 4, di, L), H, W).transpose(1, 2)


@pytest.mark.parametrize(
    "b,di,H,W,threads,bias",
    [
        (2, 5, 3, 4, 1, True),
        (1, 40, 4, 2, 2, True),
        (2, 33, 5, 5, 2, False),
        (1, 16, 1, 7, 2, True),
    ],
)
def test_fused_matches_definition_values_and_gradients(b, di, H, W, threads, bias, monkeypatch):
    # di = 40 and 33 with 2 threads: two workers over channel ranges (partial B / C gradients)
    monkeypatch.setattr(ss2d_scan, "MIN_ELEMS_PER_WORKER", 1)
    ts = _inputs(b, di, H, W, bias=bias)
    ref = [t.detach().double().requires_grad_() if t is not None else None for t in ts]
    gy = torch.randn(b, H * W, di, generator=torch.Generator().manual_seed(1))
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y = ss2d_scan_fused(*ts, H, W)
        y.backward(gy)
    finally:
        torch.set_num_threads(old)
    want = _definition(*ref, H, W)
    want.backward(gy.double())
    assert y.dtype == torch.float32 and y.shape == (b, H * W, di)
    torch.testing.assert_close(y.detach().double(), want.detach(), rtol=1e-5, atol=1e-5)
    for name, t, r in zip(["u", "delta", "A", "B", "C", "D", "delta_bias"], ts, ref):
        if t is None:
            continue
        scale = float(r.grad.abs().max())
        err = float((t.grad.double() - r.grad).abs().max()) / scale
        assert err < 1e-5, f"gradient of {name}: relative error {err:.1e}"


def test_thread_count_does_not_change_the_result(monkeypatch):
    monkeypatch.setattr(ss2d_scan, "MIN_ELEMS_PER_WORKER", 1)
    ts = [t.detach() if t is not None else None for t in _inputs(2, 64, 4, 4)]
    old, outs = torch.get_num_threads(), []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            outs.append(ss2d_scan_fused(*ts, 4, 4))
    finally:
        torch.set_num_threads(old)
    assert ss2d_scan._workers(64, 8192) == min(old, 4)
    monkeypatch.setattr(ss2d_scan, "MIN_ELEMS_PER_WORKER", 8192)
    assert ss2d_scan._workers(64, 8192) == 1  # too little work to split
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)  # channels are independent


def test_ss2d_auto_takes_the_fused_kernel_on_cpu_float32(monkeypatch):
    calls = []
    real = vm.ss2d_scan_fused
    monkeypatch.setattr(vm, "ss2d_scan_fused", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    auto = create_backbone("vmamba_smoke", drop_path_rate=0.0)
    fast = create_backbone("vmamba_smoke", drop_path_rate=0.0, scan_impl="fast")
    fast.load_state_dict(auto.state_dict())
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    w = torch.randn(2, 128, generator=torch.Generator().manual_seed(1))
    (auto(x) * w).sum().backward()
    assert len(calls) == 4  # one SS2D block per stage of vmamba_smoke
    (fast(x) * w).sum().backward()
    assert len(calls) == 4  # scan_impl="fast" keeps the PyTorch path
    torch.testing.assert_close(auto(x), fast(x), rtol=1e-5, atol=1e-5)
    pa, pf = dict(auto.named_parameters()), dict(fast.named_parameters())
    for k, p in pf.items():
        assert (p.grad is None) == (pa[k].grad is None), k
        if p.grad is None:  # the earlier stages' output norms: unused by the pooled feature
            continue
        scale = float(p.grad.abs().max()) or 1.0
        assert float((pa[k].grad - p.grad).abs().max()) / scale < 1e-4, k
    calls.clear()
    auto.double()(x.double())  # float64: the PyTorch path (the kernel is float32)
    assert not calls


def test_d_state_above_one_keeps_the_pytorch_path():
    blk = vm.SS2D(16, d_state=2)
    x = torch.randn(1, 4, 4, 16)
    assert not blk._use_fused(x)
    blk.scan_impl = "fused"
    with pytest.raises(RuntimeError, match="d_state 1"):
        blk(x)


def test_bad_input_names_the_tensor():
    u, delta, A, B, C, D, bias = (t.detach() for t in _inputs(1, 8, 2, 3))
    with pytest.raises(ValueError, match="L = 6 tokens; the map is 3x3"):
        ss2d_scan_fused(u, delta, A, B, C, D, bias, 3, 3)
    with pytest.raises(ValueError, match="delta of shape"):
        ss2d_scan_fused(u, delta[:3], A, B, C, D, bias, 2, 3)
    with pytest.raises(ValueError, match="d_state 1"):
        ss2d_scan_fused(u, delta, A.expand(-1, 2), B, C, D, bias, 2, 3)
    with pytest.raises(ValueError, match="C of shape"):
        ss2d_scan_fused(u, delta, A, B, C[..., :2], D, bias, 2, 3)
    with pytest.raises(ValueError, match="delta_bias"):
        ss2d_scan_fused(u, delta, A, B, C, D, bias[:-1], 2, 3)


def test_nan_propagates():
    u, delta, A, B, C, D, bias = (t.detach() for t in _inputs(1, 8, 2, 3))
    u[0, 2, 3] = float("nan")
    y = ss2d_scan_fused(u, delta, A, B, C, D, bias, 2, 3)
    assert torch.isnan(y[0, :, 3]).any() and torch.isfinite(y[0, :, :3]).all()
