"""SS2D's four-direction selective scan fused into one CPU kernel (numba), forward and backward.

VMamba's SS2D (OpenUS notes §1.1 "SS2D forward") unfolds a map into four token orders
(:func:`scan_orders`: row-major, column-major and their reverses), runs one selective scan per
direction and sums the four outputs back in row-major order. Done with whole-tensor PyTorch ops
(``cross_scan`` -> ``selective_scan_fn`` -> ``cross_merge``) that costs a stacked copy of the map,
flips, a merge, and a chunked scan of about twenty elementwise passes over (B, 4 D, L) buffers,
each of them again in the backward.

:func:`ss2d_scan_fused` does the same maths in one pass per direction, for d_state 1 (VMamba v2
and OpenUS): over channel-last buffers, with the channels as the SIMD axis, it walks the L tokens
of each direction in that direction's order (an index table, no copies) and runs the recurrence
of :mod:`uslib.ops.selective_scan` (mamba-ssm semantics, softplus on delta + delta_bias)::

    dt_t = softplus(delta[k,b,t,c] + delta_bias[k,c])
    h_t  = exp(dt_t A[k,c]) h_{t-1} + dt_t B[b,t,k] u[b,t,c]          (t in direction k's order)
    y[b,t,c] = sum_k (C[b,t,k] h_t + D[k,c] u[b,t,c])

with delta, B and C given in row-major token order (the x_proj / dt_proj matmuls act per token,
so SS2D computes them on the unpermuted map). The softplus, the decays exp(dt A) and the
softplus derivative are vectorised PyTorch passes; the kernels hold the sequential recurrence:
the backward recomputes a direction's states and runs the adjoint recurrence
``lambda_t = C_t g_t + exp(dt_{t+1} A) lambda_{t+1}`` in reverse order (the gradients of B and C,
sums over channels, go to one partial buffer per worker thread, then one sum).

The kernels are plain numba ``@njit(nogil=True)`` functions over a channel range, run on up to
``torch.get_num_threads()`` Python threads (no numba threading layer), a call being split only
when each thread gets at least ``MIN_ELEMS_PER_WORKER`` elements. numba is a dependency of the
package but the import is guarded: without it :func:`fused_scan_available` is False and SS2D
takes the PyTorch path. Tested against the composition cross-scan -> ``selective_scan_ref`` ->
cross-merge (values and every gradient) in ``tests/test_ss2d_scan.py``.

Ref: Mamba (Gu & Dao 2023) Alg. 2 and §3.3 (a fused, recomputing scan); VMamba (arXiv:2401.10166)
§3 (SS2D); OpenUS notes §1.1.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["scan_orders", "ss2d_scan_fused", "fused_scan_available"]

K_DIRECTIONS = 4  # SS2D's scan directions (OpenUS notes §1.1); VMamba imports it from here


def scan_orders(H: int, W: int, device: torch.device | None = None) -> Tensor:
    """Token order of each scan direction: ``orders[k, p]`` = row-major index of step p.

    k0 row-major, k1 column-major, k2 reversed k0, k3 reversed k1 (OpenUS notes §1.1).

    Returns:
        (4, H*W) long tensor; each row is a permutation of range(H*W).
    """
    rm = torch.arange(H * W, device=device)
    cm = rm.view(H, W).t().reshape(-1)
    return torch.stack([rm, cm, rm.flip(0), cm.flip(0)])


try:  # the package depends on numba; without it SS2D takes the PyTorch path
    import numba
except ImportError:  # pragma: no cover - bare environments
    numba = None


def _jit(fn: Callable[..., Any]) -> Callable[..., Any]:
    if numba is None:  # pragma: no cover
        return fn
    return numba.njit(
        nogil=True, cache=True, fastmath={"contract", "reassoc"}, error_model="numpy"
    )(fn)


# The kernels index 1-D row views (``dA[k, i, t, c0:c1]``...) in their inner loops: with an
# index that starts at 0 the compiler drops numba's negative-index wraparound and emits SIMD code
# (2.7x faster than indexing ``dA[k, i, t, c0 + j]``, measured at VMamba-S stage-1 shapes).


@_jit
def _skip_rows(out, Dsum, x, i, c0, c1):
    # out[i, t, c] = Dsum[c] x[i, t, c] for every token t and owned channel c: the D u term of
    # the output (forward) and of the input gradient (backward), summed over the 4 directions
    ds = Dsum[c0:c1]
    for t in range(x.shape[1]):
        o, r = out[i, t, c0:c1], x[i, t, c0:c1]
        for j in range(c1 - c0):
            o[j] = ds[j] * r[j]


@_jit
def _fwd_cols(u, dt, dA, Bs, Cs, Dsum, orders, y, c0, c1):
    # channel-last: u, y (b, L, di); dt, dA (K, b, L, di); Bs, Cs (b, L, K); Dsum (di,);
    # orders (K, L). This call owns channels c0 <= c < c1 (the inner loop is over them, SIMD).
    b, L = u.shape[0], u.shape[1]
    K, nc = dt.shape[0], c1 - c0
    h = np.zeros(nc, np.float32)
    for i in range(b):
        _skip_rows(y, Dsum, u, i, c0, c1)
        for k in range(K):
            h[:] = 0.0
            for p in range(L):
                t = orders[k, p]
                bb, cc = Bs[i, t, k], Cs[i, t, k]
                ar, xr = dA[k, i, t, c0:c1], dt[k, i, t, c0:c1]
                ur, yr = u[i, t, c0:c1], y[i, t, c0:c1]
                for j in range(nc):
                    hj = ar[j] * h[j] + xr[j] * bb * ur[j]
                    h[j] = hj
                    yr[j] += cc * hj


@_jit
def _bwd_cols(u, dt, dA, Bs, Cs, A, Dsum, orders, gy, gu, gdt, gA, gD, gB, gC, c0, c1):
    # outputs: gu (b, L, di); gdt (K, b, L, di) = dLoss/d dt; gA, gD (K, di) for the owned
    # channels; gB, gC (b, L, K): this call's partial sums over its channels
    b, L = u.shape[0], u.shape[1]
    K, nc = dt.shape[0], c1 - c0
    hs = np.zeros((L + 1, nc), np.float32)  # hs[p + 1] = h after step p; hs[0] = 0
    lam = np.zeros(nc, np.float32)
    for i in range(b):
        _skip_rows(gu, Dsum, gy, i, c0, c1)
        for k in range(K):
            Ak, gAk, gDk = A[k, c0:c1], gA[k, c0:c1], gD[k, c0:c1]
            for p in range(L):  # recompute the states of this direction
                t = orders[k, p]
                bb = Bs[i, t, k]
                ar, xr, ur = dA[k, i, t, c0:c1], dt[k, i, t, c0:c1], u[i, t, c0:c1]
                hp, hn = hs[p], hs[p + 1]
                for j in range(nc):
                    hn[j] = ar[j] * hp[j] + xr[j] * bb * ur[j]
            lam[:] = 0.0
            for p in range(L - 1, -1, -1):  # the adjoint recurrence, last step first
                t = orders[k, p]
                bb, cc = Bs[i, t, k], Cs[i, t, k]
                ar, xr, ur = dA[k, i, t, c0:c1], dt[k, i, t, c0:c1], u[i, t, c0:c1]
                gyr, gur, gdr = gy[i, t, c0:c1], gu[i, t, c0:c1], gdt[k, i, t, c0:c1]
                hp, hn = hs[p], hs[p + 1]
                sB = np.float32(0.0)
                sC = np.float32(0.0)
                for j in range(nc):
                    g, x, uu, a = gyr[j], xr[j], ur[j], ar[j]
                    sC += g * hn[j]
                    lt = lam[j] + cc * g  # dLoss/dh_t
                    sB += lt * x * uu
                    gla = lt * a * hp[j]  # dLoss/d(dt A) = lambda_t a_t h_{t-1}
                    gur[j] += lt * bb * x
                    gdr[j] = lt * bb * uu + gla * Ak[j]
                    gAk[j] += gla * x
                    gDk[j] += g * uu
                    lam[j] = a * lt
                gB[i, t, k] += sB
                gC[i, t, k] += sC


def _kernels() -> tuple[Callable[..., Any], Callable[..., Any]] | None:
    return None if numba is None else (_fwd_cols, _bwd_cols)


def fused_scan_available() -> bool:
    """True when numba imports, so :func:`ss2d_scan_fused` can run."""
    return _kernels() is not None


_POOL_LOCK = threading.Lock()
_POOL: dict[int, ThreadPoolExecutor] = {}


# elements (B L D per direction x 4) a worker thread must get before a call is split: below it
# the thread hand-off and the contention with torch's still-spinning OpenMP threads cost more
# than the second core gives (measured on vmamba_small, 2 threads)
MIN_ELEMS_PER_WORKER = int(os.environ.get("USLIB_SS2D_MIN_PER_WORKER", 2**22))


def _workers(n: int, elems: int) -> int:
    """Threads for a call over ``n`` channels and ``elems`` scan elements."""
    by_work = max(1, elems // MIN_ELEMS_PER_WORKER)
    return max(1, min(torch.get_num_threads(), n // 16 or 1, by_work))


def _run_cols(
    kernel: Callable[..., Any], n: int, workers: int, args_for: Callable[[int], tuple]
) -> None:
    """``kernel(*args_for(w), c0, c1)`` on :func:`_workers` threads over disjoint channel
    ranges (multiples of 16 floats, one AVX-512 register), the calling thread taking the first."""
    bounds = [
        min(n, -(-n * w // workers) // 16 * 16) if w < workers else n for w in range(workers + 1)
    ]
    if workers == 1:
        kernel(*args_for(0), 0, n)
        return
    with _POOL_LOCK:
        pool = _POOL.get(workers)
        if pool is None:
            pool = _POOL[workers] = ThreadPoolExecutor(workers - 1, thread_name_prefix="ss2d-scan")
    futures = [
        pool.submit(kernel, *args_for(w), bounds[w], bounds[w + 1]) for w in range(1, workers)
    ]
    kernel(*args_for(0), bounds[0], bounds[1])
    for f in futures:
        f.result()


def _check(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
           bias: Tensor | None, H: int, W: int) -> None:  # fmt: skip
    if u.dim() != 3:
        raise ValueError(f"u must be (B, L, D); got shape {tuple(u.shape)}")
    b, L, di = u.shape
    if L != H * W:
        raise ValueError(f"u has L = {L} tokens; the map is {H}x{W} = {H * W}")
    K = K_DIRECTIONS
    if delta.shape != (K, b, L, di):
        raise ValueError(f"delta of shape {tuple(delta.shape)}: expected {(K, b, L, di)}")
    if A.shape != (K * di, 1):
        raise ValueError(f"A must be (4 D, 1) = ({K * di}, 1) (d_state 1); got {tuple(A.shape)}")
    for name, M in (("B", B), ("C", C)):
        if M.shape != (b, L, K):
            raise ValueError(f"{name} of shape {tuple(M.shape)}: expected {(b, L, K)}")
    for name, v in (("D", D), ("delta_bias", bias)):
        if v is not None and v.shape != (K * di,):
            raise ValueError(f"{name} must be (4 D,) = ({K * di},); got {tuple(v.shape)}")
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C)):
        if t.device.type != "cpu":
            raise ValueError(f"ss2d_scan_fused is a CPU kernel; {name} is on {t.device}")


def _np(t: Tensor) -> np.ndarray:
    return t.detach().numpy()


class _FusedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, u, delta, A, B, C, D, bias, H: int, W: int) -> Tensor:  # noqa: ANN001
        fwd, _ = _kernels()  # type: ignore[misc]
        b, L, di = u.shape
        K, f32 = K_DIRECTIONS, torch.float32
        Ac = A.to(f32).reshape(K, 1, 1, di)
        pre = delta.to(f32) if bias is None else delta.to(f32) + bias.to(f32).reshape(K, 1, 1, di)
        dt = F.softplus(pre)
        dA = torch.mul(dt, Ac).exp_()  # the decays exp(dt A), vectorised here, not per element
        uc = u.to(f32).contiguous()
        Bc, Cc = B.to(f32).contiguous(), C.to(f32).contiguous()
        Dsum = D.to(f32).reshape(K, di).sum(0)
        orders = _orders_np(H, W)
        y = torch.empty(b, L, di, dtype=f32)
        arrays = [_np(t) for t in (uc, dt, dA, Bc, Cc, Dsum)]
        _run_cols(fwd, di, _workers(di, dt.numel()), lambda w: (*arrays, orders, y.numpy()))
        ctx.save_for_backward(uc, pre, dt, dA, Ac, Bc, Cc, Dsum)
        ctx.HW, ctx.no_bias, ctx.dtypes = (
            (H, W),
            bias is None,
            (u.dtype, delta.dtype, A.dtype, B.dtype, C.dtype, D.dtype),
        )
        return y.to(u.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, ...]:
        _, bwd = _kernels()  # type: ignore[misc]
        uc, pre, dt, dA, Ac, Bc, Cc, Dsum = ctx.saved_tensors
        (b, L, di), K = uc.shape, K_DIRECTIONS
        gyc = gy.to(torch.float32).contiguous()
        gu, gdt = torch.empty_like(uc), torch.empty_like(dt)
        gA, gD = uc.new_zeros(K, di), uc.new_zeros(K, di)
        workers = _workers(di, dt.numel())
        gB, gC = uc.new_zeros(workers, b, L, K), uc.new_zeros(workers, b, L, K)
        arrays = [_np(t) for t in (uc, dt, dA, Bc, Cc, Ac.reshape(K, di), Dsum)]
        outs = [_np(t) for t in (gyc, gu, gdt, gA, gD)]
        orders = _orders_np(*ctx.HW)
        _run_cols(bwd, di, workers, lambda w: (*arrays, orders, *outs, _np(gB[w]), _np(gC[w])))
        gdelta = gdt.mul_(torch.sigmoid(pre))  # d softplus(x) / dx = sigmoid(x)
        du, dd, dA_, dB, dC, dD = ctx.dtypes
        return (
            gu.to(du),
            gdelta.to(dd),
            gA.reshape(K * di, 1).to(dA_),
            gB.sum(0).to(dB),
            gC.sum(0).to(dC),
            gD.reshape(K * di).to(dD),
            None if ctx.no_bias else gdelta.sum((1, 2)).reshape(K * di),
            None,
            None,
        )


@functools.lru_cache(maxsize=32)
def _orders_np(H: int, W: int) -> np.ndarray:
    return scan_orders(H, W).to(torch.int64).numpy()


def ss2d_scan_fused(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor,
    delta_bias: Tensor | None,
    H: int,
    W: int,
) -> Tensor:
    """The four SS2D selective scans and their cross-merge in one CPU kernel (module docstring).

    Channel-last layout (the channels are the kernel's SIMD axis), d_state N = 1 (VMamba v2 /
    OpenUS; SS2D takes the PyTorch path for N > 1).

    Args:
        u: scan inputs (B, L, D), row-major tokens of the H x W map (L = H W).
        delta: step sizes before bias and softplus, (4, B, L, D): direction k's delta for
            row-major token t at [k, :, t].
        A: (4 D, 1) state matrix (negative), direction-major as SS2D's ``A_logs``.
        B, C: (B, L, 4) input / output projections per token and direction.
        D: (4 D,) skip weights; delta_bias: (4 D,), added to delta before the softplus, or None
            (SS2D adds it inside the dt projection's matmul).
        H, W: the map's height and width.

    Returns:
        (B, L, D): the sum over the four directions of each scan's output, row-major tokens,
        in u's dtype (computed in float32). Differentiable in every tensor argument.
    """
    if not fused_scan_available():
        raise RuntimeError("ss2d_scan_fused needs numba (a dependency of uslib: pip install numba)")
    _check(u, delta, A, B, C, D, delta_bias, H, W)
    return _FusedScan.apply(u, delta, A, B, C, D, delta_bias, H, W)
