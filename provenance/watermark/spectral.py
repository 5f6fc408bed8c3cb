"""Spectral building blocks of the pixel watermark: keyed tile patterns, folding, phase correlation.

A tile is a ``T×T`` real pattern defined by its 2-D DFT. Every bin ``b = (k_y, k_x)`` with radial
frequency ``|b|/T`` inside the band gets a unit-magnitude coefficient with a keyed random phase
``φ_b`` (and ``F(−b) = conj F(b)``, so the pattern is real). The band bins are split, by a keyed
permutation, into disjoint groups: a share ``ρ`` of them forms the pilot, the rest are dealt
round-robin to the ``K`` payload bits. Because the groups are disjoint, the pilot and the payload
patterns are exactly orthogonal: the tile for bits ``s_k = ±1`` is

    tile = (pilot + Σ_k s_k W_k) / std,

and its spectrum has unit magnitude on the whole band whatever the bits are.

Detection folds a luma image into one tile, ``R(t) = mean{Y(u) : u ≡ t (mod T)}`` (a crop is a
cyclic shift of the fold), whitens it to phase only on the band, ``G = R̂ / |R̂|``, and correlates
with the pilot at all ``T²`` cyclic shifts in one inverse FFT, ``C = IFFT(G · conj(P̂))``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

LUMA = (0.299, 0.587, 0.114)  # BT.601; the weights sum to 1, so Δ on R, G, B moves Y by Δ


@dataclass(frozen=True)
class TilePatterns:
    """Keyed patterns of one ``(key, tile, band)``: spatial for embedding, spectra for detection."""

    tile: int
    pilot: Tensor  # (T, T) float64, spatial
    payload: Tensor  # (K, T, T) float64, spatial
    pilot_hat: Tensor  # (T, T) complex128, FFT of pilot
    payload_hat: Tensor  # (K, T, T) complex128
    band: Tensor  # (T, T) bool, the band mask
    std: float  # std of pilot + Σ s_k W_k (the same for every payload)

    def bins(self, which: str = "pilot") -> tuple[Tensor, Tensor]:
        """Flat indices ``(B,)`` of the pilot (or ``"band"``) bins and their frequencies
        ``(B, 2)`` in cycles/px. With unit-magnitude ``G`` on the ``B`` pilot bins the pilot
        correlation has ``mean C² = B / T⁴`` (Parseval), whatever the data."""
        mask = self.pilot_hat != 0 if which == "pilot" else self.band
        idx = torch.nonzero(mask.flatten())[:, 0]
        f = torch.fft.fftfreq(self.tile, dtype=torch.float64, device=idx.device)
        return idx, torch.stack([f[idx // self.tile], f[idx % self.tile]], 1)

    def to(self, device) -> TilePatterns:
        move = {k: getattr(self, k).to(device) for k in ("pilot", "payload", "band")}
        move.update(pilot_hat=self.pilot_hat.to(device), payload_hat=self.payload_hat.to(device))
        return TilePatterns(self.tile, std=self.std, **move)


def band_mask(tile: int, band: tuple[float, float]) -> Tensor:
    """``(T, T)`` bool: DFT bins whose radial frequency ``|b|/T`` (cycles/pixel) is in ``band``."""
    f = torch.fft.fftfreq(tile, dtype=torch.float64)
    r = torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    return (r >= band[0]) & (r <= band[1])


def key_seed(key: bytes, *labels: object) -> int:
    """63-bit seed from SHA-256 of the key and a domain label, for a CPU ``torch.Generator``."""
    h = hashlib.sha256(b"mdiff-pixel-v1\0" + key + b"\0" + repr(labels).encode())
    return int.from_bytes(h.digest()[:8], "big") >> 1


def make_patterns(
    key: bytes, tile: int, band: tuple[float, float], nbits: int, pilot_share: float
) -> TilePatterns:
    """Draw the pilot and ``nbits`` payload patterns on CPU in float64 (identical on every device).

    Bins are handled in conjugate pairs: each pair ``{b, −b}`` gets one phase and one group label.
    """
    g = torch.Generator().manual_seed(key_seed(key, "tile", tile, band, nbits, pilot_share))
    mask = band_mask(tile, band)
    ky, kx = torch.nonzero(mask, as_tuple=True)
    fy, fx = torch.where(ky > tile // 2, ky - tile, ky), torch.where(kx > tile // 2, kx - tile, kx)
    half = (fx > 0) | ((fx == 0) & (fy > 0))  # one representative per conjugate pair
    ky, kx = ky[half], kx[half]
    n = ky.numel()
    n_pilot = round(pilot_share * n)
    if n - n_pilot < nbits:
        raise ValueError(f"tile {tile} has {n} band bins: too few for {nbits} payload bits")
    order = torch.randperm(n, generator=g)
    label = torch.empty(n, dtype=torch.long)
    label[order[:n_pilot]] = -1  # pilot
    label[order[n_pilot:]] = torch.arange(n - n_pilot) % nbits
    phase = torch.rand(n, generator=g, dtype=torch.float64) * (2 * math.pi)

    def spectrum(select: Tensor) -> Tensor:  # (T, T) complex, Hermitian, unit magnitude on select
        spec = torch.zeros(tile, tile, dtype=torch.complex128)
        z = torch.polar(torch.ones_like(phase[select]), phase[select])
        spec[ky[select], kx[select]] = z
        spec[(-ky[select]) % tile, (-kx[select]) % tile] = z.conj()
        return spec

    pilot_hat = spectrum(label == -1)
    payload_hat = torch.stack([spectrum(label == k) for k in range(nbits)])
    pilot = torch.fft.ifft2(pilot_hat).real
    payload = torch.fft.ifft2(payload_hat).real
    std = math.sqrt(2 * n) / tile**2  # Parseval: 2n unit bins over T² pixels
    return TilePatterns(tile, pilot, payload, pilot_hat, payload_hat, mask, std)


# ----------------------------------------------------------------------------------------------
# Image operations (all batched over a leading dim, any device).
# ----------------------------------------------------------------------------------------------


def luma(frames: Tensor) -> Tensor:
    """uint8 ``(N, H, W, 3)`` → float32 luma ``(N, H, W)`` in 8-bit levels."""
    w = torch.tensor(LUMA, dtype=torch.float32, device=frames.device)
    return frames.float() @ w


def _box(y: Tensor, size: int) -> Tensor:
    """Mean over the ``size×size`` neighbourhood (odd ``size``) of ``(N, H, W)``, replicate pad."""
    r = size // 2
    h, w = y.shape[-2:]
    x = F.pad(y[:, None], (r, r, r, r), mode="replicate")[:, 0]
    rows = x[..., :, :w].clone()  # running sums of shifted slices (faster than avg_pool2d)
    for i in range(1, size):
        rows += x[..., :, i : i + w]
    out = rows[..., :h, :].clone()
    for i in range(1, size):
        out += rows[..., i : i + h, :]
    return out.div_(size * size)


def highpass(y: Tensor, sigma: float = 8.0) -> Tensor:
    """``Y − G_σ * Y`` (separable Gaussian, replicate pad): removes below ≈ ``1/(2πσ)`` c/px."""
    r = int(3 * sigma)
    t = torch.arange(-r, r + 1, dtype=torch.float32, device=y.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).view(1, 1, -1)
    x = F.pad(y[:, None], (r, r, r, r), mode="replicate")
    x = F.conv2d(F.conv2d(x, k[..., None, :]), k[..., :, None])
    return y - x[:, 0]


def highpass_fast(y: Tensor, sigma: float = 8.0, factor: int = 4) -> Tensor:
    """Approximate :func:`highpass` at a fraction of the cost, for the embedder's estimates.

    The Gaussian is applied at ``1/factor`` resolution (box-averaged, replicate pad) and
    upsampled bilinearly; the box and the interpolation add about ``factor²/4`` px² of blur
    variance, subtracted from ``σ²``. Frames smaller than ``4·factor`` px use the exact filter.
    """
    h, w = y.shape[-2:]
    if min(h, w) < 4 * factor:
        return highpass(y, sigma)
    ph, pw = -h % factor, -w % factor
    x = F.pad(y[:, None], (0, pw, 0, ph), mode="replicate")
    small = F.avg_pool2d(x, factor)[:, 0]
    s = math.sqrt(max(sigma**2 - factor**2 / 4, 1.0)) / factor
    r = max(1, int(3 * s))
    t = torch.arange(-r, r + 1, dtype=torch.float32, device=y.device)
    k = torch.exp(-0.5 * (t / s) ** 2)
    k = (k / k.sum()).view(1, 1, -1)
    z = F.pad(small[:, None], (r, r, r, r), mode="replicate")
    z = F.conv2d(F.conv2d(z, k[..., None, :]), k[..., :, None])
    up = F.interpolate(z, scale_factor=factor, mode="bilinear", align_corners=False)
    return y - up[:, 0, :h, :w]


def local_std(y: Tensor, size: int = 7) -> Tensor:
    """Standard deviation over the ``size×size`` neighbourhood of every pixel, ``(N, H, W)``."""
    m = _box(y, size)
    return (_box(y * y, size) - m * m).clamp_min(0).sqrt()


def activity_mask(y: Tensor, size: int = 7, lo: float = 0.3, hi: float = 2.0) -> Tensor:
    """Perceptual mask ``clip(σ_loc / median σ_loc, lo, hi)`` from the ``size²`` local std.

    ``y`` is ``(N, H, W)``; the median is per frame, floored at one
    level so flat frames get the plain strength instead of a division by zero.
    """
    s = local_std(y, size)  # (N, H, W)
    med = s.flatten(1).median(dim=1).values.clamp_min(1.0)
    return (s / med[:, None, None]).clamp(lo, hi)


def resample(y: Tensor, scale: float) -> Tensor:
    """Undo a resize by ``s``: ``out(u) = y(s·u)``, bilinear, ``(…, H, W)`` → ``(…, H/s, W/s)``
    (rounded down)."""
    if scale == 1.0:
        return y
    *lead, h, w = y.shape
    ho, wo = max(1, int(h / scale)), max(1, int(w / scale))
    gy = ((torch.arange(ho, device=y.device) + 0.5) * scale) * (2.0 / h) - 1
    gx = ((torch.arange(wo, device=y.device) + 0.5) * scale) * (2.0 / w) - 1
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)  # (ho, wo, 2) as (x, y)
    out = F.grid_sample(y.reshape(1, -1, h, w), grid[None].to(y.dtype), align_corners=False)
    return out[0].reshape(*lead, ho, wo)


def fold(y: Tensor, tile: int) -> Tensor:
    """Count-normalised fold of ``(..., H, W)`` into ``(..., T, T)``: mean over ``u ≡ t mod T``."""
    h, w = y.shape[-2:]
    ph, pw = -h % tile, -w % tile
    lead = y.shape[:-2]
    shape = ((h + ph) // tile, tile, (w + pw) // tile, tile)
    s = F.pad(y, (0, pw, 0, ph)).reshape(*lead, *shape)
    ones = F.pad(torch.ones_like(y[(0,) * len(lead)]), (0, pw, 0, ph)).reshape(shape)
    return s.sum((-4, -2)) / ones.sum((0, 2)).clamp_min(1)


def highpass_gain(tile: int, sigma: float = 8.0) -> Tensor:
    """``(T, T)`` float64: the response ``1 − exp(−2π²σ²|f|²)`` of :func:`highpass` per DFT bin."""
    f = torch.fft.fftfreq(tile, dtype=torch.float64)
    return 1 - torch.exp(-2 * math.pi**2 * sigma**2 * (f[:, None] ** 2 + f[None, :] ** 2))


def project_cone(p: Tensor, q: Tensor, rho: Tensor, t: float) -> tuple[Tensor, Tensor]:
    """Nearest point of ``{(p, q) : p ≥ ρ, |q| ≤ t·p}`` to ``(p, q)`` (element-wise, ρ > 0).

    Used by informed embedding: ``p`` and ``q`` are a bin's in-phase and quadrature parts
    relative to its pattern phase; the set is a truncated cone around the pattern direction.
    """
    c = math.sqrt(1 + t * t)
    best_p, best_q = rho.expand_as(p), q.clamp(-t * rho, t * rho)  # the flat face p = ρ
    best_d = (best_p - p) ** 2 + (best_q - q) ** 2
    for sgn in (1.0, -1.0):  # the two edges q = ±t·p, p ≥ ρ
        s = torch.maximum((p + sgn * t * q) / c, rho * c)
        ep, eq = s / c, sgn * t * s / c
        d = (ep - p) ** 2 + (eq - q) ** 2
        take = d < best_d
        best_p, best_q, best_d = (
            torch.where(take, a, b) for a, b in ((ep, best_p), (eq, best_q), (d, best_d))
        )
    inside = (p >= rho) & (q.abs() <= t * p)
    return torch.where(inside, p, best_p), torch.where(inside, q, best_q)


def phase_only(r: Tensor, band: Tensor) -> Tensor:
    """``G = R̂/|R̂|`` on the band, 0 elsewhere; ``(..., T, T)`` real → complex."""
    return phase_only_spectrum(torch.fft.fft2(r.to(torch.float64)), band)


def phase_only_spectrum(spec: Tensor, band: Tensor) -> Tensor:
    """``spec/|spec|`` on the band, 0 elsewhere (:func:`phase_only` of a given spectrum)."""
    return torch.where(band, spec / (spec.abs() + 1e-12), torch.zeros_like(spec))


def correlate(g: Tensor, pattern_hat: Tensor) -> Tensor:
    """Cyclic cross-correlation at every shift: ``C(d) = IFFT(G · conj(P̂))(d)``, real."""
    return torch.fft.ifft2(g * pattern_hat.conj()).real


def robust_z(c: Tensor) -> tuple[float, tuple[int, int]]:
    """``z = (max C − median C) / (1.4826·MAD C)`` and the ``(dy, dx)`` of the peak."""
    flat = c.flatten()
    med = flat.median()
    mad = (flat - med).abs().median().clamp_min(1e-12)
    i = int(flat.argmax())
    z = float((flat[i] - med) / (1.4826 * mad))
    return z, (i // c.shape[-1], i % c.shape[-1])


def gaussian_tail(z: float) -> float:
    """``Q(z) = P(N(0,1) > z)``."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def crc8(data: bytes, poly: int = 0x07) -> int:
    """CRC-8 (polynomial ``x⁸ + x² + x + 1``, init 0, no reflection)."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ poly) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def estimate_periods(y: Tensor, top: int = 3, min_lag: int = 16) -> list[float]:
    """Key-independent period estimates (pixels) of a periodic mark in ``y`` ``(H, W)``.

    The spectrum is flattened by its local mean magnitude, ``X / (|X| * box)``, so the narrow
    lines of a periodic pattern stand out; its autocorrelation ``IFFT(|X_flat|²)`` then peaks
    at multiples of the period. Returns the ``top`` local maxima of ``A(l, 0) + A(0, l)`` for
    ``min_lag ≤ l < min(H, W)/2``, refined to sub-pixel by a parabola.
    """
    h, w = y.shape
    max_lag = min(h, w) // 2
    if max_lag - min_lag < 3:
        return []
    spec = torch.fft.fft2(y.double())
    mag = spec.abs()[None, None]
    smooth = F.avg_pool2d(F.pad(mag, (4, 4, 4, 4), mode="circular"), 9, stride=1)[0, 0]
    a = torch.fft.ifft2((spec / (smooth + 1e-9)).abs() ** 2).real
    prof = a[:max_lag, 0] + a[0, :max_lag]  # (max_lag,)
    peaks = [
        (float(prof[i]), i)
        for i in range(min_lag, max_lag - 1)
        if prof[i] >= prof[i - 1] and prof[i] > prof[i + 1]
    ]
    out = []
    for _, i in sorted(peaks, reverse=True)[:top]:
        l, c, r = float(prof[i - 1]), float(prof[i]), float(prof[i + 1])
        den = l - 2 * c + r
        out.append(i + (0.5 * (l - r) / den if den < 0 else 0.0))
    return out
