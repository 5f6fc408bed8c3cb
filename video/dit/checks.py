"""Input checks of `SpaceTimeDiT.forward`: a broken rule raises `InvalidInputError` naming it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mdiff.errors import InvalidInputError
from mdiff.video.dit.cache import DiTCache

if TYPE_CHECKING:
    from mdiff.video.dit.model import DiTConfig


def check_video(x_t: Tensor, c: DiTConfig) -> tuple[int, int, int]:
    """x_t (B, C, T, H, W) fits the model; returns the token grid (T', H', W')."""
    if not isinstance(x_t, Tensor) or x_t.dim() != 5 or not x_t.is_floating_point():
        got = tuple(x_t.shape) if isinstance(x_t, Tensor) else type(x_t).__name__
        raise InvalidInputError(f"x_t must be a float tensor (B, C, T, H, W), got {got}")
    _, ch, *sizes = x_t.shape
    if ch != c.in_channels:
        raise InvalidInputError(
            f"x_t has {ch} channels but the model takes in_channels={c.in_channels}"
        )
    for name, n, p in zip(("frames T", "height H", "width W"), sizes, c.patch, strict=True):
        if n == 0 or n % p:
            raise InvalidInputError(
                f"x_t {name}={n} must be a positive multiple of the patch size {p} "
                f"(patch (p_t, p_h, p_w) = {c.patch})"
            )
    if sizes[1] > c.max_size[0] or sizes[2] > c.max_size[1]:
        raise InvalidInputError(f"x_t latent size {tuple(sizes[1:])} exceeds max_size={c.max_size}")
    return tuple(n // p for n, p in zip(sizes, c.patch, strict=True))


def check_time(t: Tensor, b: int, frames: int, p_t: int) -> Tensor:
    """t (B,) or per latent frame (B, T) -> (B,) or per token-frame (B, T / p_t)."""
    if not isinstance(t, Tensor) or not t.is_floating_point():
        raise InvalidInputError("t must be a float tensor in [0, 1] (0 = noise, 1 = data)")
    if t.dim() == 0:
        t = t.expand(b)
    if tuple(t.shape) not in ((b,), (b, frames)):
        raise InvalidInputError(
            f"t must be (B,) = ({b},) or per latent frame (B, T) = {(b, frames)}, "
            f"got {tuple(t.shape)}"
        )
    if t.dim() == 2 and p_t > 1:
        t = t.view(b, frames // p_t, p_t)  # (B, T', p_t)
        if not torch.equal(t, t[..., :1].expand_as(t)):
            raise InvalidInputError(f"per-frame t must be equal within each temporal patch {p_t}")
        t = t[..., 0]  # (B, T')
    return t


def check_text(text: Tensor, text_mask: Tensor | None, b: int, text_dim: int) -> Tensor | None:
    """text (B, S, text_dim) and text_mask (B, S) (True = real token) -> bool mask or None."""
    if not isinstance(text, Tensor) or text.dim() != 3 or not text.is_floating_point():
        got = tuple(text.shape) if isinstance(text, Tensor) else type(text).__name__
        raise InvalidInputError(f"text must be float states (B, S, text_dim), got {got}")
    if text.shape[0] != b or text.shape[1] == 0:
        raise InvalidInputError(
            f"text {tuple(text.shape)} must have batch {b} and at least one token"
        )
    if text.shape[2] != text_dim:
        raise InvalidInputError(
            f"text dim mismatch: text states have width {text.shape[2]}, the model takes "
            f"text_dim={text_dim}"
        )
    if text_mask is None:
        return None
    if not isinstance(text_mask, Tensor) or tuple(text_mask.shape) != tuple(text.shape[:2]):
        got = tuple(text_mask.shape) if isinstance(text_mask, Tensor) else type(text_mask)
        raise InvalidInputError(f"text_mask must be (B, S) = {tuple(text.shape[:2])}, got {got}")
    if text_mask.is_floating_point():
        raise InvalidInputError("text_mask must be bool (True = real token), got a float tensor")
    return text_mask.bool()


def check_cache(
    cache: DiTCache | None, c: DiTConfig, grid: tuple[int, int, int], frame_offset: int, b: int
) -> None:
    """frame_offset and the cache fit the input; the attention span fits max_frames."""
    p_t, frames = c.patch[0], grid[0] * c.patch[0]
    if not isinstance(frame_offset, int) or frame_offset < 0 or frame_offset % p_t:
        raise InvalidInputError(
            f"frame_offset must be an int >= 0 and a multiple of p_t={p_t}, got {frame_offset!r}"
        )
    cached = [] if cache is None else _check_cache_object(cache, c)
    if cached:
        n_video = int((cache.key_frames >= 0).sum())
        if n_video != len(cached) * grid[1] * grid[2]:
            raise InvalidInputError(
                f"the cache holds {n_video // len(cached)} tokens per frame, the input "
                f"{grid[1] * grid[2]}: latent height and width must stay the same"
            )
        if frame_offset < cached[-1] + p_t:
            raise InvalidInputError(
                f"frame_offset={frame_offset} must be past the cached frames "
                f"(last cached latent frame {cached[-1] + p_t - 1})"
            )
        if cache.key_ok.shape[0] != b:
            raise InvalidInputError(f"batch size {b} does not match the cache's")
    last = frame_offset + frames - 1  # the input's last latent frame
    if c.sink_shift(frame_offset) != c.sink_shift(last):
        raise InvalidInputError(
            f"latent frames {frame_offset}…{last} span chunks whose sink sits at different "
            f"positions (sink_position='adjacent', window={c.window}); past the window run "
            "one chunk per forward, as streaming does"
        )
    if len(cached) * p_t + frames > c.max_frames:
        raise InvalidInputError(
            f"{len(cached) * p_t} cached + {frames} new latent frames exceed "
            f"max_frames={c.max_frames}"
        )


def _check_cache_object(cache: DiTCache, c: DiTConfig) -> list[int]:
    if not isinstance(cache, DiTCache):
        raise InvalidInputError(
            f"cache must be a DiTCache from model.new_cache(), got {type(cache).__name__}"
        )
    mine = (c.depth, c.chunk_frames, c.window, c.sink_frames)
    theirs = (cache.n_layers, cache.chunk_frames, cache.window, cache.sink_frames)
    if mine != theirs:
        raise InvalidInputError(
            f"cache (layers, chunk_frames, window, sink_frames) = {theirs} does not match "
            f"the model's {mine}"
        )
    return cache.frames
