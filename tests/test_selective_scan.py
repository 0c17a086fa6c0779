"""Selective scan: the reference against hand-computed cases, the fast path against it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from uslib.ops.selective_scan import (
    _softplus_,
    linear_scan_chunked,
    selective_scan_attention,
    selective_scan_fast,
    selective_scan_fn,
    selective_scan_ref,
)

TOL = {torch.float64: 1e-10, torch.float32: 1e-4}
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _inputs(b, d, L, n, layout, dtype, *, D=True, z=True, bias=True, scale_A=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)

    bc = {"const": (d, n), "shared": (b, n, L), "grouped": (b, 2, n, L)}[layout]
    t = {
        "u": r(b, d, L),
        "delta": r(b, d, L) * 0.5,
        "A": -(torch.rand(d, n, generator=g, dtype=torch.float64) * n + 0.2).to(dtype) * scale_A,
        "B": r(*bc),
        "C": r(*bc),
        "D": r(d) if D else None,
        "z": r(b, d, L) if z else None,
        "delta_bias": r(d) * 0.3 if bias else None,
    }
    return {k: v.requires_grad_() if v is not None else None for k, v in t.items()}


def _run(fn, t, softplus, **kw):
    out, last = fn(**t, delta_softplus=softplus, return_last_state=True, **kw)
    w = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)  # generic cotangent
    loss = (out * w).sum() + (last * 0.7).sum()
    live = [k for k in NAMES if t[k] is not None]
    return out, last, dict(zip(live, torch.autograd.grad(loss, [t[k] for k in live])))


def _close(a, b, dtype, what):
    tol = TOL[dtype]
    torch.testing.assert_close(
        a,
        b,
        rtol=tol,
        atol=tol * (1.0 + float(b.detach().abs().max())),
        msg=lambda m: f"{what}: {m}",
    )


def _compare(t, softplus, dtype, fn=selective_scan_fast, **kw):
    o_ref, l_ref, g_ref = _run(selective_scan_ref, t, softplus)
    o, last, g = _run(fn, t, softplus, **kw)
    _close(o, o_ref, dtype, "out")
    _close(last, l_ref, dtype, "last state")
    for k in g_ref:
        _close(g[k], g_ref[k], dtype, f"grad {k}")


# (L, N, layout, D, z, delta_bias, softplus): lengths 1..3136, d_state 1 and 16, every option
GRID = [
    (1, 1, "grouped", True, True, True, True),
    (2, 16, "shared", False, False, False, False),
    (3, 1, "const", True, False, True, False),
    (17, 16, "grouped", False, True, False, True),
    (64, 1, "shared", True, True, False, True),
    (100, 16, "const", False, False, True, True),
    (257, 1, "grouped", True, False, True, True),
    (784, 16, "grouped", True, True, True, True),
    (3136, 1, "grouped", True, True, True, True),
    (3136, 16, "shared", False, False, True, True),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("L,n,layout,D,z,bias,softplus", GRID)
def test_fast_matches_ref(L, n, layout, D, z, bias, softplus, dtype):
    # the reference is slow at L = 3136: tiny B, D there
    b, d = (1, 2 if layout == "grouped" else 1) if L > 1000 else (2, 4)
    t = _inputs(b, d, L, n, layout, dtype, D=D, z=z, bias=bias, seed=L + n)
    _compare(t, softplus, dtype)


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 1000])
def test_fast_chunk_sizes(chunk_size):
    t = _inputs(2, 4, 50, 2, "grouped", torch.float64, seed=3)
    _compare(t, True, torch.float64, chunk_size=chunk_size)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fast_strong_decay_uses_stable_form(dtype):
    # |dt A| up to ~100 per step: the log-space form would overflow, so chunks shrink and the
    # exp-of-differences (segsum) form takes over; results must not change.
    t = _inputs(2, 4, 300, 16, "grouped", dtype, scale_A=20.0, seed=5)
    _compare(t, True, dtype)


def _nograd_compare(t, softplus, dtype, mode=torch.no_grad, **kw):
    t = {k: v.detach() if v is not None else None for k, v in t.items()}
    o_ref, l_ref = selective_scan_ref(**t, delta_softplus=softplus, return_last_state=True)
    with mode():
        o, last = selective_scan_fast(**t, delta_softplus=softplus, return_last_state=True, **kw)
    assert not o.requires_grad and o.dtype == o_ref.dtype and o.is_contiguous()
    _close(o, o_ref, dtype, "out (no grad)")
    _close(last, l_ref, dtype, "last state (no grad)")


# the forward-only path at small sizes: every layout and option, padded and unpadded chunks
NOGRAD_GRID = [row for row in GRID if row[0] < 1000] + [
    (1000, 1, "grouped", True, True, True, True)
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("L,n,layout,D,z,bias,softplus", NOGRAD_GRID)
def test_nograd_matches_ref(L, n, layout, D, z, bias, softplus, dtype):
    t = _inputs(2, 4, L, n, layout, dtype, D=D, z=z, bias=bias, seed=L + n)
    _nograd_compare(t, softplus, dtype)


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 64, 1000])
@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_nograd_chunk_sizes_and_modes(chunk_size, mode):
    t = _inputs(2, 4, 257, 2, "grouped", torch.float64, seed=4)  # 257: padded chunks
    _nograd_compare(t, True, torch.float64, mode, chunk_size=chunk_size)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_nograd_strong_decay_falls_back(dtype):
    # |dt A| ~ 100 per step: no log-space chunk fits the bound; the general path takes over
    t = _inputs(2, 4, 300, 16, "grouped", dtype, scale_A=20.0, seed=5)
    _nograd_compare(t, True, dtype)


def test_nograd_without_grad_inputs_and_inputs_untouched():
    # grad mode on but no input requires grad: the forward-only path, inputs not written
    t = _inputs(2, 4, 40, 1, "grouped", torch.float32, bias=False, seed=6)
    t = {k: v.detach() if v is not None else None for k, v in t.items()}
    before = {k: v.clone() for k, v in t.items() if v is not None}
    for softplus in (False, True):
        out = selective_scan_fast(**t, delta_softplus=softplus)
        assert not out.requires_grad
        _close(out, selective_scan_ref(**t, delta_softplus=softplus), torch.float32, "out")
    for k, v in before.items():
        torch.testing.assert_close(t[k], v, rtol=0, atol=0)
    half = {k: v.bfloat16() if v is not None and v.dim() == 3 else v for k, v in t.items()}
    with torch.no_grad():
        out = selective_scan_fast(**half, delta_softplus=True)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), selective_scan_ref(**half, delta_softplus=True).float())


def test_nograd_bad_shapes_raise():
    t = _inputs(2, 4, 10, 3, "grouped", torch.float32)
    args = {k: t[k].detach() for k in NAMES}
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"B of shape \(2, 3, 3, 10\)"):
            selective_scan_fast(**{**args, "B": torch.randn(2, 3, 3, 10)})
        with pytest.raises(ValueError, match="D must be"):
            selective_scan_fast(**{**args, "D": torch.randn(3)})
        with pytest.raises(ValueError, match="z must be"):
            selective_scan_fast(**{**args, "z": torch.randn(2, 4, 9)})


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fast_softplus_accuracy(dtype):
    # float32: down to x = -80 (exp(-87) is the smallest normal float)
    x = torch.linspace(-80 if dtype == torch.float32 else -700, 80, 200_001, dtype=dtype)
    xd = x.double()
    want = xd.clamp(min=0) + torch.log1p(torch.exp(-xd.abs()))  # F.softplus returns x above 20
    got = _softplus_(x.clone())
    assert got.dtype == dtype and torch.isfinite(got).all()
    rel = float(((got.double() - want).abs() / want).max())
    assert rel < (1e-15 if dtype == torch.float64 else 3e-7), rel
    big = torch.tensor([-1e4, 0.0, 1e4, float("inf"), -float("inf")])
    torch.testing.assert_close(_softplus_(big.clone()), F.softplus(big))


@pytest.mark.parametrize("live", [("u",), ("delta_bias", "A"), ("B", "C"), ("z", "D")])
def test_grad_path_partial_requires_grad(live):
    # the hand-written backward computes only the gradients asked for, each matching the ref
    t = _inputs(2, 4, 70, 2, "grouped", torch.float64, seed=7)
    t = {k: (v.detach().requires_grad_(k in live) if v is not None else None) for k, v in t.items()}
    for fn in (selective_scan_ref, selective_scan_fast):
        out = fn(**t, delta_softplus=True)
        grads = torch.autograd.grad((out * out).sum(), [t[k] for k in live])
        if fn is selective_scan_ref:
            want = grads
    for k, a, b in zip(live, grads, want):
        _close(a, b, torch.float64, f"grad {k}")


def test_linear_scan_chunked_paths_agree():
    g = torch.Generator().manual_seed(0)
    la = -torch.rand(3, 500, generator=g, dtype=torch.float64) * torch.tensor([[0.01], [1], [60]])
    bu = torch.randn(3, 500, generator=g, dtype=torch.float64)
    h, hs = torch.zeros(3, dtype=torch.float64), []
    for t in range(500):  # the definition
        h = la[:, t].exp() * h + bu[:, t]
        hs.append(h)
    want = torch.stack(hs, -1)
    for chunk in (1, 7, 64, 512):
        got, last = linear_scan_chunked(la, bu, chunk)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(last, want[:, -1], rtol=1e-12, atol=1e-12)


def test_ref_hand_computed_L3():
    # one channel, d_state 1: h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t ; y_t = C_t h_t + D u_t
    u, dt, A, Bv, Cv, Dv = (
        [1.0, 2.0, -1.0],
        [0.5, 1.0, 2.0],
        -0.7,
        [1.0, -2.0, 0.5],
        [3.0, 1.0, 2.0],
        0.25,
    )
    h, ys = 0.0, []
    for t in range(3):
        h = math.exp(dt[t] * A) * h + dt[t] * Bv[t] * u[t]
        ys.append(Cv[t] * h + Dv * u[t])
    x = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    out, last = selective_scan_ref(
        x(u).view(1, 1, 3), x(dt).view(1, 1, 3), x([[A]]), x(Bv).view(1, 1, 3),
        x(Cv).view(1, 1, 3), x([Dv]), return_last_state=True,
    )  # fmt: skip
    torch.testing.assert_close(out.view(-1), x(ys))
    torch.testing.assert_close(last.view(-1), x([h]))
    # hand values (dt = [.5, 1, 2], A = -.7): h = [0.5, -3.7017..., -1.0913...]
    assert ys[0] == pytest.approx(1.75)
    assert ys[1] == pytest.approx(math.exp(-0.7) * 0.5 - 4.0 + 0.5)


def test_ref_hand_computed_L2_grouped_gate_bias_softplus():
    # 2 channels in 2 groups, d_state 2, delta_bias + softplus, gate z
    u = torch.tensor([[[1.0, 2.0], [0.5, -1.0]]], dtype=torch.float64)
    delta = torch.tensor([[[0.0, 1.0], [-1.0, 0.5]]], dtype=torch.float64)
    bias = torch.tensor([0.1, -0.2], dtype=torch.float64)
    A = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]], dtype=torch.float64)
    B = torch.arange(8, dtype=torch.float64).view(1, 2, 2, 2) / 4 - 0.5  # (b, G, N, L)
    C = torch.arange(8, dtype=torch.float64).flip(0).view(1, 2, 2, 2) / 3
    z = torch.tensor([[[0.3, -0.4], [1.0, 2.0]]], dtype=torch.float64)
    Dv = torch.tensor([0.5, -1.5], dtype=torch.float64)
    want = torch.zeros(1, 2, 2, dtype=torch.float64)
    for d in range(2):  # channel d uses group d
        h = [0.0, 0.0]
        for t in range(2):
            dt = math.log1p(math.exp(float(delta[0, d, t] + bias[d])))
            h = [math.exp(dt * A[d, n]) * h[n] + dt * B[0, d, n, t] * u[0, d, t] for n in range(2)]
            y = sum(C[0, d, n, t] * h[n] for n in range(2)) + Dv[d] * u[0, d, t]
            want[0, d, t] = y * z[0, d, t] * torch.sigmoid(z[0, d, t])
    got = selective_scan_ref(u, delta, A, B, C, Dv, z, bias, delta_softplus=True)
    torch.testing.assert_close(got, want)


def test_dispatch_and_dtypes():
    t = _inputs(2, 4, 40, 1, "grouped", torch.float32)
    args = [t[k] for k in NAMES]
    fast = selective_scan_fast(*args, delta_softplus=True)
    torch.testing.assert_close(selective_scan_fn(*args, delta_softplus=True), fast)
    torch.testing.assert_close(selective_scan_fn(*args, delta_softplus=True, impl="ref"), fast)
    with pytest.raises(ValueError, match="impl"):
        selective_scan_fn(*args, impl="triton")
    with pytest.raises(RuntimeError, match="mamba_ssm"):
        selective_scan_fn(*args, impl="cuda")  # CPU tensors
    half = [a.detach().bfloat16() if a is not None and a.dim() == 3 else a for a in args]
    out = selective_scan_fast(*half, delta_softplus=True)
    assert out.dtype == torch.bfloat16  # computed in float32, returned in u's dtype
    torch.testing.assert_close(out.float(), selective_scan_ref(*half, delta_softplus=True).float())


def test_bad_shapes_raise_clear_errors():
    t = _inputs(2, 4, 10, 3, "grouped", torch.float32)
    args = {k: t[k] for k in NAMES}
    with pytest.raises(ValueError, match=r"B of shape \(2, 3, 3, 10\)"):
        selective_scan_fast(**{**args, "B": torch.randn(2, 3, 3, 10)})  # 3 groups do not divide 4
    with pytest.raises(ValueError, match="delta of shape"):
        selective_scan_fast(**{**args, "delta": torch.randn(2, 4, 9)})
    with pytest.raises(ValueError, match="A must be"):
        selective_scan_fast(**{**args, "A": torch.randn(5, 3)})
    with pytest.raises(ValueError, match="D must be"):
        selective_scan_fast(**{**args, "D": torch.randn(3)})


def test_attention_matches_definition():
    b, d, L, n = 2, 4, 6, 2
    t = _inputs(b, d, L, n, "grouped", torch.float64, seed=9)
    t = {k: v.detach() if v is not None else None for k, v in t.items()}
    attn = selective_scan_attention(t["delta"], t["A"], t["B"], t["C"], t["delta_bias"], True)
    dt = F.softplus(t["delta"] + t["delta_bias"][:, None])
    want = torch.zeros(b, 2, L, L, dtype=torch.float64)
    for bb in range(b):
        for g in range(2):
            for i in range(L):
                for j in range(i + 1):
                    acc = 0.0
                    for c in range(g * 2, g * 2 + 2):  # the 2 channels of group g
                        for k in range(n):
                            decay = math.exp(float(dt[bb, c, j + 1 : i + 1].sum() * t["A"][c, k]))
                            acc += float(t["C"][bb, g, k, i] * t["B"][bb, g, k, j]) * decay
                    want[bb, g, i, j] = acc / 2
    torch.testing.assert_close(attn, want)
    small = selective_scan_attention(t["delta"], t["A"], t["B"], t["C"], t["delta_bias"], True, 1)
    torch.testing.assert_close(small, attn)  # channel chunking does not change the result


def test_against_mamba_ssm_cuda():
    pytest.importorskip("mamba_ssm")
    if not torch.cuda.is_available():
        pytest.skip("mamba-ssm's kernel needs a CUDA device")
    t = _inputs(2, 8, 300, 1, "grouped", torch.float32, seed=1)
    t = {k: v.detach().cuda().requires_grad_() if v is not None else None for k, v in t.items()}
    o_ref, l_ref, g_ref = _run(selective_scan_fast, t, True)
    o, last, g = _run(lambda **kw: selective_scan_fn(**kw, impl="cuda"), t, True)
    _close(o, o_ref, torch.float32, "out")
    _close(last, l_ref, torch.float32, "last state")
    for k in g_ref:
        torch.testing.assert_close(
            g[k], g_ref[k], rtol=1e-3, atol=1e-3 * float(g_ref[k].abs().max())
        )
