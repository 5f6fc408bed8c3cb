"""Rate-½ convolutional code (K = 7, generators 171₈ and 133₈) with soft-decision Viterbi.

The pixel watermark's 40 information bits (32-bit payload + CRC-8) are encoded with 6 zero tail
bits into ``2·(40 + 6) = 92`` coded bits, each carried by its own keyed pattern. The detector's
per-pattern correlations are the soft values: with phase-only correlation every band bin adds
about unit-variance noise, so the plain correlation is proportional to the log-likelihood ratio
and Viterbi maximises ``Σ_j soft_j · (2c_j − 1)`` over all code words. The CRC-8 still checks
the decoded word.
"""

from __future__ import annotations

from collections.abc import Sequence

CONSTRAINT = 7
GENERATORS = (0o171, 0o133)
TAIL = CONSTRAINT - 1
_STATES = 1 << TAIL


def _parity(v: int) -> int:
    return bin(v).count("1") & 1


# For state s (the last 6 input bits, newest in bit 0) and input b: the two output bits.
_OUT = [
    [tuple(_parity(((s << 1) | b) & g) for g in GENERATORS) for b in (0, 1)] for s in range(_STATES)
]


def coded_length(info_bits: int) -> int:
    """Number of coded bits for ``info_bits`` information bits (with the zero tail)."""
    return len(GENERATORS) * (info_bits + TAIL)


def encode(bits: Sequence[int]) -> list[int]:
    """Coded bits (0/1) of ``bits`` followed by a zero tail that returns the encoder to state 0."""
    state, out = 0, []
    for b in [*bits, *([0] * TAIL)]:
        out += _OUT[state][b]
        state = ((state << 1) | b) & (_STATES - 1)
    return out


def decode(soft: Sequence[float], info_bits: int) -> list[int]:
    """Maximum-likelihood information bits for soft values (> 0 means coded bit 1)."""
    n = len(GENERATORS)
    if len(soft) != coded_length(info_bits):
        raise ValueError(f"expected {coded_length(info_bits)} soft values, got {len(soft)}")
    neg = float("-inf")
    metric = [0.0] + [neg] * (_STATES - 1)
    history: list[list[tuple[int, int]]] = []  # per step: (previous state, input bit) per state
    for step in range(info_bits + TAIL):
        x = soft[n * step : n * step + n]
        new = [neg] * _STATES
        back = [(0, 0)] * _STATES
        for s in range(_STATES):
            if metric[s] == neg:
                continue
            for b in (0, 1) if step < info_bits else (0,):
                m = metric[s] + sum(v if c else -v for v, c in zip(x, _OUT[s][b], strict=True))
                t = ((s << 1) | b) & (_STATES - 1)
                if m > new[t]:
                    new[t], back[t] = m, (s, b)
        metric = new
        history.append(back)
    state, bits = 0, []
    for back in reversed(history):
        state, b = back[state]
        bits.append(b)
    return bits[::-1][:info_bits]
