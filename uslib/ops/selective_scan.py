"""Selective scan (Mamba's S6 recurrence): sequential reference, chunked pure-PyTorch fast path.

``selective_scan_fn`` is the one public entry point: it calls mamba-ssm's CUDA kernel when
``mamba_ssm`` is importable and the tensors live on a GPU, and the chunked pure-PyTorch path
(:func:`selective_scan_fast`) otherwise. :func:`selective_scan_ref` is the definition (a Python
loop over positions) that both are tested against.

For every batch element b, channel d, state n and position t (mamba-ssm semantics)::

    dt[b,d,t]  = softplus(delta[b,d,t] + delta_bias[d])     (softplus only if delta_softplus)
    h[b,d,n,t] = exp(dt[b,d,t] A[d,n]) h[b,d,n,t-1] + dt[b,d,t] B[b,g(d),n,t] u[b,d,t]
    y[b,d,t]   = sum_n C[b,g(d),n,t] h[b,d,n,t] + D[d] u[b,d,t]
    out        = y * silu(z)                                 (only if z is given)

with h[b,d,n,-1] = 0 and g(d) = d // (D / G) the group of channel d when B, C are grouped
(B, G, N, L); VMamba's SS2D uses G = 4 groups, one per scan direction (Ref: OpenUS notes §1.1
"SS2D forward").

Why a chunked fast path (ARCHITECTURE.md, "Engine and scale"): a loop that indexes a tensor at every
position makes autograd zero-fill a full-size gradient per step, so its backward is quadratic in L.
The fast path uses whole-tensor operations inside chunks of T positions and a short loop over chunks
that carries the state. Within a chunk, with S_t = sum_{s<=t} dt_s A (cumulative log-decay),
``h_t = exp(S_t) (h_in + sum_{s<=t} exp(-S_s) b_s)`` is a cumulative sum in log space; it is used
while |S| stays below a bound in every chunk (no overflow), with halved chunks otherwise, and the
fully stable ``h_t = sum_{s<=t} exp(S_t - S_s) b_s`` (exp of cumulative log-decay differences) as
the last resort. Each is linear in L (for a fixed chunk size), forward and backward.

Forward-only calls (``torch.no_grad()`` / ``torch.inference_mode()``, or no input that requires
grad: teachers, evaluation) take a leaner path, :func:`_selective_scan_nograd`: nothing is kept
for a backward, so it works in place on a few (B, D, L) buffers, builds the log-decays from one
cumulative sum of dt shared by all N states (S = A cumsum(dt), A being time-invariant), checks the
log-space bound on the chunk ends only (S is monotone when dt >= 0), and adds the carried state
before the one multiplication by exp(S). Both paths compute softplus with exp and log (an
accurate log1p, about 3x faster than ``F.softplus`` on CPU, whose log1p is not vectorised); the
reference keeps ``F.softplus``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "selective_scan_ref",
    "selective_scan_fast",
    "selective_scan_fn",
    "selective_scan_attention",
    "linear_scan_chunked",
    "mamba_ssm_available",
]

# |S| bound inside a chunk for the log-space cumsum form: exp(+-40) ~ 2e17 keeps float32 far from
# overflow (3e38) and costs at most ~40 * 6e-8 relative accuracy; float64 has exp range ~709.
_LOGSPACE_BOUND = {torch.float64: 300.0}
_LOGSPACE_BOUND_DEFAULT = 40.0
_MIN_LOGSPACE_CHUNK = 8
_SEGSUM_CHUNK = 16
# default chunk lengths: with autograd (fewer, longer chunks: fewer saved carries) and forward-only
# (the in-place cumsums are as fast at 64 as at 256, and shorter chunks keep |S| inside the bound
# for ~4x larger decays before any halving)
_GRAD_CHUNK = 256
_NOGRAD_CHUNK = 64


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # half/bfloat16 inputs are computed in float32 (as mamba-ssm does); float64 stays float64.
    return torch.float64 if dtype == torch.float64 else torch.float32


def _as_5d_bc(M: Tensor, name: str, b: int, d: int, n: int, L: int) -> Tensor:
    """B or C as a tensor broadcastable to (b, G, D/G, N, L)."""
    if M.dim() == 2:  # (D, N): time-invariant
        if tuple(M.shape) != (d, n):
            raise ValueError(f"{name} of shape {tuple(M.shape)}: expected (D, N) = {(d, n)}")
        return M.reshape(1, 1, d, n, 1)
    if M.dim() == 3:  # (B, N, L): shared by all channels
        if tuple(M.shape) != (b, n, L):
            raise ValueError(f"{name} of shape {tuple(M.shape)}: expected (B, N, L) = {(b, n, L)}")
        return M.unsqueeze(1).unsqueeze(1)
    if M.dim() == 4:  # (B, G, N, L): channel d uses group d // (D / G)
        g = M.shape[1]
        if M.shape[0] != b or M.shape[2:] != (n, L) or g < 1 or d % g:
            raise ValueError(
                f"{name} of shape {tuple(M.shape)}: expected (B, G, N, L) = ({b}, G, {n}, {L}) "
                f"with G dividing D = {d}"
            )
        return M.unsqueeze(2)
    raise ValueError(f"{name} must be (D, N), (B, N, L) or (B, G, N, L); got {tuple(M.shape)}")


def _softplus_(x: Tensor) -> Tensor:
    """softplus(x) = max(x, 0) + log1p(exp(-|x|)) computed in place in ``x`` (returned).

    log1p(e) is log(w) + (e - (w - 1)) with w = fl(1 + e): w - 1 is exact for w in [1, 2], so
    e - (w - 1) is the rounding error of 1 + e and the sum is log1p(e) to about one ulp, also where
    e < eps and w = 1 (then log1p(e) = e). No overflow for any x (exp of a non-positive number).
    Same accuracy as ``F.softplus`` in float32 and float64, ~3x faster on CPU (exp, log and plain
    arithmetic are vectorised; torch's log1p is not).
    """
    e = torch.abs(x).neg_().exp_()  # exp(-|x|) in (0, 1]
    w = e + 1
    e.sub_(w.sub_(1))  # e - (w - 1): the rounding error of 1 + e (w - 1 is exact)
    w.add_(1).log_()  # (w - 1) + 1 = w again, exactly
    return x.clamp_(min=0).add_(w).add_(e)


class _Softplus(torch.autograd.Function):
    """softplus with the fast forward of :func:`_softplus_`; d softplus(x) / dx = sigmoid(x)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return _softplus_(x.clone())

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.sigmoid(x)


def _softplus_fast(x: Tensor) -> Tensor:
    """softplus(x) as :func:`_softplus_` (out of place), differentiable."""
    return _Softplus.apply(x)


def _dt(
    delta: Tensor,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    dtype: torch.dtype,
    softplus: Callable[[Tensor], Tensor] = F.softplus,
) -> Tensor:
    """Step sizes dt = softplus?(delta + delta_bias) in the compute dtype, (B, D, L)."""
    d = delta.shape[1]
    dt = delta.to(dtype)
    if delta_bias is not None:
        if delta_bias.shape != (d,):
            raise ValueError(f"delta_bias must be (D,) = ({d},); got {tuple(delta_bias.shape)}")
        dt = dt + delta_bias.to(dtype)[:, None]
    return softplus(dt) if delta_softplus else dt


def _check(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor
) -> tuple[torch.dtype, Tensor, Tensor, int]:
    """Check shapes; returns the compute dtype, ``B5``, ``C5`` (broadcastable to the 5-D layout
    (b, G, D/G, N, L), in the compute dtype) and the group count G."""
    if u.dim() != 3:
        raise ValueError(f"u must be (B, D, L); got shape {tuple(u.shape)}")
    b, d, L = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta of shape {tuple(delta.shape)} must match u {tuple(u.shape)}")
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"A must be (D, N) with D = {d}; got shape {tuple(A.shape)}")
    if A.is_complex():
        raise ValueError("complex A is not supported (VMamba and Mamba-1 vision models use real A)")
    n = A.shape[1]
    cdt = _compute_dtype(u.dtype)
    B5 = _as_5d_bc(B, "B", b, d, n, L).to(cdt)
    C5 = _as_5d_bc(C, "C", b, d, n, L).to(cdt)
    g = max(B5.shape[1], C5.shape[1])
    if B5.shape[1] not in (1, g) or C5.shape[1] not in (1, g):
        raise ValueError(f"B and C have different group counts: {B5.shape[1]} vs {C5.shape[1]}")
    return cdt, B5, C5, g


def _prepare(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    softplus: Callable[[Tensor], Tensor] = F.softplus,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Check shapes and build the recurrence terms in the 5-D layout (b, G, D/G, N, L).

    Returns ``la = dt A`` (log-decays), ``bu = dt B u`` (drive), ``B5`` and ``C5`` (broadcastable
    to that layout) and ``u`` in the compute dtype, (B, D, L).
    """
    cdt, B5, C5, g = _check(u, delta, A, B, C)
    (b, d, L), n = u.shape, A.shape[1]
    uc = u.to(cdt)
    dt5 = _dt(delta, delta_bias, delta_softplus, cdt, softplus).view(b, g, d // g, 1, L)
    la = dt5 * A.to(cdt).view(1, g, d // g, n, 1)
    bu = (dt5 * uc.view(b, g, d // g, 1, L)) * B5
    return la, bu, B5, C5, uc


def _finish(
    y: Tensor, uc: Tensor, D: Tensor | None, z: Tensor | None, out_dtype: torch.dtype
) -> Tensor:
    """out = (y + D u) * silu(z) for y, u of shape (B, D, L)."""
    d = uc.shape[1]
    if D is not None:
        if D.shape != (d,):
            raise ValueError(f"D must be (D,) = ({d},); got {tuple(D.shape)}")
        y = torch.addcmul(y, uc, D.to(uc.dtype)[:, None])
    if z is not None:
        if z.shape != uc.shape:
            raise ValueError(f"z of shape {tuple(z.shape)} must match u {tuple(uc.shape)}")
        y = y * F.silu(z.to(uc.dtype))
    return y.to(out_dtype)


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan by its definition: a sequential loop over the L positions.

    Same signature and semantics as mamba-ssm's ``selective_scan_ref`` (real A only). Slow by
    design: the loop indexes one position per step, so autograd's backward zero-fills a full
    gradient at every step (quadratic in L); it is the test oracle and the "naive" benchmark arm.

    Args:
        u: inputs, (B, D, L).
        delta: step sizes before bias/softplus, (B, D, L).
        A: state matrix (diagonal per channel), (D, N); negative for a decaying state.
        B: input projection, (D, N), (B, N, L) or grouped (B, G, N, L).
        C: output projection, same layouts as ``B``.
        D: skip weight, (D,), or None.
        z: gate, (B, D, L), or None (output times silu(z) when given).
        delta_bias: (D,) added to ``delta`` before the softplus, or None.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        return_last_state: also return the final state h[..., L-1].

    Returns:
        out (B, D, L) in u's dtype, and the last state (B, D, N) in the compute dtype (float32,
        or float64 for float64 inputs) when ``return_last_state``. (mamba-ssm's reference
        computes float64 inputs in float32; keeping float64 lets tests compare to 1e-10.)

    Ref: Mamba (Gu & Dao 2023) Alg. 2; OpenUS notes §1.1 (SS2D recurrence).
    """
    la, bu, _, C5, uc = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    b, d, L = u.shape
    decay = la.exp().expand_as(bu)
    C5 = C5.expand(-1, -1, -1, -1, L)
    h = bu.new_zeros(bu.shape[:-1])  # (b, G, D/G, N)
    ys = []
    for t in range(L):
        h = decay[..., t] * h + bu[..., t]
        ys.append((h * C5[..., t]).sum(-1))
    out = _finish(torch.stack(ys, -1).reshape(b, d, L), uc, D, z, u.dtype)
    if return_last_state:
        return out, h.reshape(b, d, -1)
    return out


def _chunk_logspace(S: Tensor, bb: Tensor) -> tuple[Tensor, Tensor]:
    """Within-chunk scan in log space: returns (exp(S), sum_{s<=t} exp(-S_s) b_s)."""
    eS = S.exp()
    return eS, torch.cumsum(bb / eS, -1)


def _chunk_segsum(S: Tensor, bb: Tensor) -> Tensor:
    """Within-chunk scan from exp(S_t - S_s) for s <= t (stable for any decay); (..., nC, T)."""
    T = S.shape[-1]
    diff = S.unsqueeze(-1) - S.unsqueeze(-2)  # [..., t, s] = S_t - S_s
    upper = torch.ones(T, T, dtype=torch.bool, device=S.device).triu(1)
    W = diff.masked_fill(upper, float("-inf")).exp()
    return (W * bb.unsqueeze(-2)).sum(-1)


def _carry(decay: Tensor, h_end: Tensor) -> tuple[Tensor, Tensor]:
    """State entering each chunk: h_in[c] = decay[c-1] h_in[c-1] + h_end[c-1]; (..., nC)."""
    h = torch.zeros_like(h_end[..., 0])
    carries = []
    # unbind/stack: one gradient buffer for the whole loop, not one zero-filled buffer per step
    for dc, he in zip(decay.unbind(-1), h_end.unbind(-1)):
        carries.append(h)
        h = dc * h + he
    return torch.stack(carries, -1), h


def _chunk_len(L: int, T: int) -> int:
    """A chunk length <= T: a divisor of L in [T/2, T] when there is one (no padding), else
    the least-padding length for ceil(L / T) chunks (L = 3136, 256 -> 224; 257, 256 -> 129)."""
    T = max(1, min(T, L))
    for t in range(T, T // 2, -1):
        if L % t == 0:
            return t
    return -(-L // -(-L // T))


def _split(x: Tensor, T: int) -> Tensor:
    """(..., L) -> (..., ceil(L / T), T), zero-padded at the end."""
    pad = (-x.shape[-1]) % T
    # padding with la = 0, bu = 0 leaves the state unchanged, so the last carry is h_{L-1}
    return (F.pad(x, (0, pad)) if pad else x).unflatten(-1, (-1, T))


def linear_scan_chunked(la: Tensor, bu: Tensor, chunk_size: int = 256) -> tuple[Tensor, Tensor]:
    """h_t = exp(la_t) h_{t-1} + bu_t along the last axis, h_{-1} = 0, chunked and parallel.

    Args:
        la: log-decays, any shape (..., L), broadcastable with ``bu``.
        bu: inputs, (..., L).
        chunk_size: positions per chunk (the largest one tried; halved while the log-space form
            would leave its safe range |S| <= 40 (float32) / 300 (float64), then the stable
            exp-of-differences form is used with chunks of 16).

    Returns:
        (h of shape (..., L), last state h_{L-1} of shape (...)).
    """
    la, bu = torch.broadcast_tensors(la, bu)
    L = la.shape[-1]
    bound = _LOGSPACE_BOUND.get(la.dtype, _LOGSPACE_BOUND_DEFAULT)
    T, logspace = _chunk_len(L, chunk_size), True
    while True:
        S = _split(la, T).cumsum(-1)  # (..., nC, T) cumulative log-decay within each chunk
        lo, hi = torch.aminmax(S.detach())
        if max(-float(lo), float(hi)) <= bound:
            break
        if T <= _MIN_LOGSPACE_CHUNK:
            logspace, T = False, _chunk_len(L, _SEGSUM_CHUNK)
            S = _split(la, T).cumsum(-1)
            break
        T = _chunk_len(L, T // 2)
    bb = _split(bu, T)
    if logspace:
        eS, acc = _chunk_logspace(S, bb)
        h_in, last = _carry(eS[..., -1], eS[..., -1] * acc[..., -1])
        h = eS * (acc + h_in.unsqueeze(-1)) if h_in.shape[-1] > 1 else eS * acc
    else:
        eS, hloc = S.exp(), _chunk_segsum(S, bb)
        h_in, last = _carry(eS[..., -1], hloc[..., -1])
        h = hloc + eS * h_in.unsqueeze(-1)
    return h.flatten(-2)[..., :L], last


def _needs_grad(*ts: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


def _logspace_chunks(
    dt: Tensor, a_max: Tensor, T: int, dt_nonneg: bool
) -> tuple[Tensor, Tensor] | None:
    """Chunk the step sizes for :func:`_scan_logspace`.

    Args:
        dt: step sizes (B, D, L) (not differentiated here); a_max: max_n |A[d, n]|, (D, 1);
        T: the longest chunk to try; dt_nonneg: dt >= 0 (softplus), so that cumsum(dt) is
        monotone within a chunk.

    Returns:
        dt zero-padded to (B, D, nC * T') (``dt`` itself when T' divides L) and its within-chunk
        cumulative sum (B, D, nC, T'), for the longest chunk T' <= T (halving) whose log-decays
        S = A cumsum(dt) stay in the log-space bound; None when even ``_MIN_LOGSPACE_CHUNK``
        positions exceed it (or on NaN).
    """
    b, d, L = dt.shape
    bound = _LOGSPACE_BOUND.get(dt.dtype, _LOGSPACE_BOUND_DEFAULT)
    T = _chunk_len(L, T)
    while True:
        pad = (-L) % T
        # padding with dt = 0 leaves the state unchanged (decay 1, no drive)
        dtp = F.pad(dt, (0, pad)) if pad else dt
        cum = dtp.view(b, d, -1, T).cumsum(-1)
        # |S_t| <= max_n |A| |cum_t|; with dt >= 0, cum is monotone: the chunk end is its maximum
        ends = cum[..., -1] if dt_nonneg else cum.abs().amax(-1)
        if float((ends * a_max).amax()) <= bound:  # False for NaN
            return dtp, cum
        if T <= _MIN_LOGSPACE_CHUNK:
            return None
        T = _chunk_len(L, T // 2)


def _scan_logspace(
    u: Tensor, work: Tensor, cum: Tensor, A: Tensor, B5: Tensor, C5: Tensor, g: int, keep: bool
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
    """y = sum_n C h (no D, no gate) of the selective scan, in the log-space chunked form.

    Per chunk of T positions, with cum_t = sum_{s<=t} dt_s (one cumsum shared by all N states,
    A being time-invariant), S_t = A cum_t and b_s = dt_s B_s u_s::

        h_t = exp(S_t) (h_in + sum_{s<=t} exp(-S_s) b_s)

    computed in place in ``work``: dt u, times B (b), divided by exp(S), cumsum'd, plus the state
    h_in carried into the chunk (a loop over the chunks on the (B, D, N) state), times exp(S).
    exp(S) is built in ``cum``'s buffer when N = 1.

    Args:
        u: inputs (B, D, L); work: dt zero-padded to (B, D, nC T), consumed; cum: its chunked
            cumsum (B, D, nC, T), consumed; A (D, N); B5, C5: broadcastable to (B, G, D/G, N, L);
            g: the group count G; keep: leave h intact (y computed out of place).

    Returns:
        y (B, D, L), the last state h_{L-1} (B, D, N), and (exp(S) of shape (B, G, D/G, N, nC, T),
        h of shape (B, G, D/G, N, nC T)); h holds h C when not ``keep``.
    """
    b, d, L = u.shape
    n, (nC, T), dg = A.shape[1], cum.shape[2:], d // g
    work[..., :L].mul_(u)  # dt u; the padding stays 0 (dt = 0 there)
    cum6, A6 = cum.view(b, g, dg, 1, nC, T), A.view(1, g, dg, n, 1, 1)
    eS = cum6.mul_(A6).exp_() if n == 1 else torch.mul(cum6, A6).exp_()  # exp(S)
    w = work.view(b, g, dg, 1, nC * T)
    if n > 1:
        w = w.expand(-1, -1, -1, n, -1).clone()
    w[..., :L].mul_(B5)  # b = dt B u
    wc = w.view(b, g, dg, n, nC, T)
    wc.div_(eS).cumsum_(-1)  # sum_{s<=t} exp(-S_s) b_s
    dec, h_end = eS[..., -1], eS[..., -1] * wc[..., -1]  # per chunk: decay, end state
    h, h_in = torch.zeros_like(dec[..., 0]), []
    for c in range(nC):  # the state entering each chunk
        h_in.append(h)
        h = torch.addcmul(h_end[..., c], dec[..., c], h)
    if nC > 1:
        wc.add_(torch.stack(h_in, -1).unsqueeze(-1))
    hs = wc.mul_(eS).view(b, g, dg, n, nC * T)  # h_t
    hC = hs[..., :L] * C5 if keep else hs[..., :L].mul_(C5)
    y = (hC[:, :, :, 0] if n == 1 else hC.sum(3)).reshape(b, d, L).contiguous()  # copy if padded
    # the padding leaves the state unchanged: h after the last chunk is h_{L-1}
    return y, h.reshape(b, d, n), (eS, hs)


class _ScanLogspace(torch.autograd.Function):
    """:func:`_scan_logspace` with a hand-written backward (the adjoint recurrence).

    With lambda_t = dLoss/dh_t (all later positions included), e_t = C_t dLoss/dy_t and
    a_t = exp(dt_t A)::

        lambda_t = e_t + a_{t+1} lambda_{t+1},   lambda_{L-1} = e_{L-1} + dLoss/dh_{L-1}

    a reverse scan with the same decays, chunked with the same exp(S): within a chunk
    lambda_t = exp(-S_t) (sum_{s>=t} exp(S_s) e_s + exp(S_{T-1}) mu), mu being the gradient
    entering the chunk from its right, carried over the chunks from the last one. Then
    dB = sum_group lambda dt u, dC = sum_group dLoss/dy h, d(dt u) = sum_n lambda B, and the
    log-decays get lambda_t a_t h_{t-1} = lambda_t (h_t - b_t), whence dA and the rest of d(dt).
    """

    @staticmethod
    def forward(
        ctx: Any,
        u: Tensor,
        dt: Tensor,
        A: Tensor,
        B5: Tensor,
        C5: Tensor,
        work: Tensor,
        cum: Tensor,
        g: int,
    ) -> tuple[Tensor, Tensor]:
        if work.data_ptr() == dt.data_ptr():  # the unpadded chunking returns dt itself
            work = work.clone()
        y, last, (eS, hs) = _scan_logspace(u, work, cum, A, B5, C5, g, keep=True)
        ctx.save_for_backward(u, dt, A, B5, C5, eS, hs)
        ctx.g = g
        return y, last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, gy: Tensor, glast: Tensor) -> tuple[Tensor | None, ...]:
        u, dt, A, B5, C5, eS, hs = ctx.saved_tensors
        need_u, need_dt, need_A, need_B, need_C = ctx.needs_input_grad[:5]
        (b, d, L), n, g = u.shape, A.shape[1], ctx.g
        dg, (nC, T) = d // g, eS.shape[-2:]
        gy5, hL = gy.reshape(b, g, dg, 1, L), hs[..., :L]
        gC = (gy5 * hL).sum_to_size(C5.shape) if need_C else None
        # lambda, the gradient of each state: a reverse scan of e = C dLoss/dy
        v = gy5 * C5  # (b, G, D/G, N, L)
        if nC * T > L:
            v = F.pad(v, (0, nC * T - L))
        R = v.view(b, g, dg, n, nC, T).mul_(eS).flip(-1).cumsum_(-1).flip(-1)
        dec, mu, mus = eS[..., -1], glast.reshape(b, g, dg, n).to(v.dtype), []
        for c in range(nC - 1, -1, -1):  # the gradient entering each chunk from its right
            mus.append(mu)
            mu = torch.addcmul(R[..., c, 0], dec[..., c], mu)
        R.add_((dec * torch.stack(mus[::-1], -1)).unsqueeze(-1)).div_(eS)
        lam = R.view(b, g, dg, n, nC * T)[..., :L]
        dt5, u5 = dt.view(b, g, dg, 1, L), u.view(b, g, dg, 1, L)
        du = dt5 * u5
        gB = (lam * du).sum_to_size(B5.shape) if need_B else None
        lamB = lam * B5
        s = lamB[:, :, :, 0] if n == 1 else lamB.sum(3)  # dLoss/d(dt u), (b, G, D/G, L)
        g_u = (s * dt5[:, :, :, 0]).reshape(b, d, L) if need_u else None
        g_dt = g_A = None
        if need_dt or need_A:
            gla = torch.sub(hL, du * B5).mul_(lam)  # dLoss/d(dt A) = lambda_t a_t h_{t-1}
            if need_dt:
                g_dt = s.mul_(u5[:, :, :, 0])
                if n == 1:
                    g_dt.addcmul_(gla[:, :, :, 0], A.view(1, g, dg, 1))
                else:
                    g_dt.add_((gla * A.view(1, g, dg, n, 1)).sum(3))
                g_dt = g_dt.reshape(b, d, L)
            if need_A:
                g_A = (gla * dt5).sum((0, 4)).reshape(d, n)
        return g_u, g_dt, g_A, gB, gC, None, None, None


@torch.no_grad()
def _selective_scan_nograd(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    chunk_size: int,
) -> tuple[Tensor, Tensor]:
    """Forward-only selective scan: (out (B, D, L) in u's dtype, last state (B, D, N)).

    :func:`_scan_logspace` without keeping anything for a backward: the buffer that holds dt
    becomes dt u, b, h and y in turn, and for N = 1 (VMamba) exp(S) is built in the cumsum's
    buffer, so the whole scan uses three (B, D, L) buffers; + D u and * silu(z) in place. When
    no chunk length >= 8 keeps |S| within the log-space bound, the general path
    (:func:`linear_scan_chunked`, exp-of-differences form) is used.
    """
    cdt, B5, C5, g = _check(u, delta, A, B, C)
    (b, d, L), n = u.shape, A.shape[1]
    for name, v, shape in (("D", D, (d,)), ("delta_bias", delta_bias, (d,)), ("z", z, u.shape)):
        if v is not None and v.shape != shape:
            raise ValueError(f"{name} must be of shape {tuple(shape)}; got {tuple(v.shape)}")
    dt = delta.to(cdt, copy=True)  # this call's own buffer: worked on in place
    if delta_bias is not None:
        dt.add_(delta_bias.to(cdt)[:, None])
    if delta_softplus:
        _softplus_(dt)
    Ac = A.to(cdt)
    chunks = _logspace_chunks(dt, Ac.abs().amax(1, keepdim=True), chunk_size, delta_softplus)
    if chunks is None:  # decays too strong for the log-space form at any chunk length
        la, bu, _, C5, uc = _prepare(u, delta, A, B, C, delta_bias, delta_softplus, _softplus_fast)
        h, last = linear_scan_chunked(la, bu, _GRAD_CHUNK)
        y = (h * C5).sum(-2).reshape(b, d, L)
        return _finish(y, uc, D, z, u.dtype), last.reshape(b, d, n)
    uc = u.to(cdt)
    y, last, _ = _scan_logspace(uc, chunks[0], chunks[1], Ac, B5, C5, g, keep=False)
    if D is not None:
        y.addcmul_(uc, D.to(cdt)[:, None])
    if z is not None:
        y.mul_(F.silu(z.to(cdt)))
    return y.to(u.dtype), last


def selective_scan_fast(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    *,
    chunk_size: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan as a chunked parallel scan in pure PyTorch (CPU path and GPU fallback).

    Same arguments, shapes and results as :func:`selective_scan_ref` (see the module docstring
    for the recurrence): whole-tensor operations inside each chunk of ``chunk_size`` positions
    and a loop over the L / chunk_size chunks carrying the (B, D, N) state, forward and
    backward linear in L. The log-space form (:func:`_scan_logspace`) runs with the adjoint
    recurrence as its backward (:class:`_ScanLogspace`); decays too strong for it at any chunk
    length >= 8 go through :func:`linear_scan_chunked` and autograd.

    When autograd has nothing to record (grad mode off, e.g. under ``torch.no_grad()`` or
    ``torch.inference_mode()``, or no input requires grad), :func:`_selective_scan_nograd`
    computes the same values in place.

    Args:
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state: as in
            :func:`selective_scan_ref`.
        chunk_size: positions per chunk, the longest tried (keyword only); None: 256 with
            autograd, 64 without.

    Returns:
        out (B, D, L), and the last state (B, D, N) when ``return_last_state``.

    Ref: Mamba (Gu & Dao 2023) §3.3; ARCHITECTURE.md "Engine and scale".
    """
    if not _needs_grad(u, delta, A, B, C, D, z, delta_bias):
        out, last = _selective_scan_nograd(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size or _NOGRAD_CHUNK
        )
        return (out, last) if return_last_state else out
    cdt, B5, C5, g = _check(u, delta, A, B, C)
    (b, d, L), n = u.shape, A.shape[1]
    uc, Ac = u.to(cdt), A.to(cdt)
    dt = _dt(delta, delta_bias, delta_softplus, cdt, _softplus_fast)
    a_max = Ac.detach().abs().amax(1, keepdim=True)
    with torch.no_grad():
        chunks = _logspace_chunks(dt.detach(), a_max, chunk_size or _GRAD_CHUNK, delta_softplus)
    if chunks is not None:
        y, last = _ScanLogspace.apply(uc, dt, Ac, B5, C5, chunks[0], chunks[1], g)
    else:  # strong decays: the general chunked scan (exp-of-differences form) under autograd
        dt5 = dt.view(b, g, d // g, 1, L)
        la, bu = dt5 * Ac.view(1, g, d // g, n, 1), (dt5 * uc.view(b, g, d // g, 1, L)) * B5
        h, last = linear_scan_chunked(la, bu, chunk_size or _GRAD_CHUNK)
        y = (h * C5).squeeze(-2) if n == 1 else (h * C5).sum(-2)  # sum over the N states
    out = _finish(y.reshape(u.shape), uc, D, z, u.dtype)
    if return_last_state:
        return out, last.reshape(b, d, -1)
    return out


@functools.lru_cache(maxsize=1)
def _mamba_ssm_kernel() -> Callable[..., Any] | None:
    try:  # optional accelerator: the `gpu` extra (mamba-ssm wheels need a matching CUDA/torch)
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as kernel
    except Exception:  # noqa: BLE001 - ImportError or a broken wheel (undefined symbol): fall back
        return None
    return kernel


def mamba_ssm_available() -> bool:
    """True when mamba-ssm's CUDA selective-scan kernel can be imported."""
    return _mamba_ssm_kernel() is not None


def selective_scan_fn(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    *,
    impl: str = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan, dispatched to the fastest available implementation.

    Args:
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state: as in
            :func:`selective_scan_ref` (shapes (B, D, L), (D, N), (B, G, N, L)...).
        impl: ``"auto"`` (mamba-ssm's CUDA kernel when importable, on CUDA tensors and not
            float64; else :func:`selective_scan_fast`), ``"fast"``, ``"ref"`` or ``"cuda"``
            (mamba-ssm, raising if unavailable).

    Returns:
        out (B, D, L), and the last state (B, D, N) when ``return_last_state``.
    """
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if impl == "ref":
        return selective_scan_ref(*args)
    if impl == "fast":
        return selective_scan_fast(*args)
    if impl not in ("auto", "cuda"):
        raise ValueError(f"impl must be 'auto', 'fast', 'ref' or 'cuda'; got {impl!r}")
    kernel = _mamba_ssm_kernel()
    usable = kernel is not None and u.is_cuda and u.dtype != torch.float64
    if impl == "cuda" and not usable:
        raise RuntimeError("impl='cuda' needs mamba_ssm importable and non-float64 CUDA tensors")
    if not usable:
        return selective_scan_fast(*args)
    assert kernel is not None
    A, D = A.float(), (D.float() if D is not None else None)
    delta_bias = delta_bias.float() if delta_bias is not None else None
    return kernel(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def selective_scan_attention(
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    max_elems: int = 2**24,
) -> Tensor:
    """Implicit ("hidden") attention of a selective scan, averaged over channels.

    For group g (a VMamba scan direction) with channels d in g::

        attn[b, g, i, j] = mean_d sum_n C[b,g,n,i] B[b,g,n,j] exp(sum_{j<t<=i} dt[b,d,t] A[d,n])

    for i >= j and 0 above the diagonal: the "CwBw" mode of OpenUS (no dt_j factor on B).

    Args:
        delta: (B, D, L) step sizes before bias/softplus, as passed to the scan.
        A: (D, N). B, C: (B, N, L) or grouped (B, G, N, L).
        delta_bias: (D,) or None. delta_softplus: as in the scan.
        max_elems: memory bound for the (B, G, d_chunk, N, L, L) block of exp terms.

    Returns:
        (B, G, L, L) attention, lower-triangular (G = 1 for ungrouped B/C).

    Ref: OpenUS notes §1.3.1 steps 1-4.
    """
    b, d, L = delta.shape
    u0 = torch.zeros(b, d, L, dtype=delta.dtype, device=delta.device)
    la, _, B5, C5, _ = _prepare(u0, delta, A, B, C, delta_bias, delta_softplus)
    S = la.cumsum(-1)  # (b, G, d/G, N, L), inclusive
    g, h, n = S.shape[1:4]
    causal = torch.ones(L, L, dtype=torch.bool, device=S.device).tril()
    step = max(1, max_elems // max(1, b * g * n * L * L))
    acc = S.new_zeros(b, g, n, L, L)
    for s in S.split(step, dim=2):  # chunk over channels to bound memory
        diff = s.unsqueeze(-1) - s.unsqueeze(-2)  # [..., i, j] = S_i - S_j
        acc = acc + diff.masked_fill(~causal, float("-inf")).exp().sum(2)
    Cg, Bg = C5[:, :, 0].expand(b, g, n, L), B5[:, :, 0].expand(b, g, n, L)
    return torch.einsum("bgnij,bgni,bgnj->bgij", acc / h, Cg, Bg)
