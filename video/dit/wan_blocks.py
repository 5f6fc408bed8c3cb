"""Pieces of the Wan transformer (`mdiff.video.dit.wan`), named as diffusers names them.

Parameter names and shapes are those of diffusers' `WanTransformer3DModel` (0.42), so its
`diffusion_pytorch_model.safetensors` loads unchanged; the math is Wan's (`wan/modules/model.py`):

    mods = table_b + e6                  (1, 6, D) + (B, G, 6, D), in float32
    x ← x + g1 · SelfAttn(LN(x)·(1 + c1) + s1)      QK-RMSNorm across heads, then 3D RoPE
    x ← x + CrossAttn(LN_affine(x), text [, image])  two softmaxes summed when there is an image
    x ← x + g2 · FFN(LN(x)·(1 + c2) + s2)            GELU(tanh)

G groups the N tokens into equal contiguous runs that share one modulation: G = 1 (one t per
sample), G = T' (one t per latent frame) or G = N (one t per token, Wan 2.2 TI2V). LayerNorms run
in float32 and cast back, as diffusers' `FP32LayerNorm`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mdiff.errors import InvalidInputError
from mdiff.nn import apply_rope, attend, axial_dims, timestep_embedding


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 (weights too), returned in the input's dtype."""

    def forward(self, x: Tensor) -> Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


def grouped(x: Tensor, groups: int) -> Tensor:
    """(B, N, D) -> (B, G, N/G, D): tokens in G equal contiguous runs (a view)."""
    return x.unflatten(1, (groups, -1))


def modulate(norm: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """norm (B, N, D) float32 · (1 + scale) + shift with shift/scale (B, G, 1, D) -> (B, N, D)."""
    return (grouped(norm, shift.shape[1]) * (1 + scale) + shift).flatten(1, 2)


def gated_add(x: Tensor, h: Tensor, gate: Tensor) -> Tensor:
    """x + gate · h in float32, cast back to x's dtype; gate (B, G, 1, D)."""
    g = gate.shape[1]
    out = grouped(x.float(), g) + grouped(h.float(), g) * gate  # (B, G, N/G, D)
    return out.flatten(1, 2).to(x.dtype)  # (B, N, D)


class WanRope(nn.Module):
    """Wan's 3D RoPE: head dim split (t, h, w) = (d − 4⌊d/6⌋, 2⌊d/6⌋, 2⌊d/6⌋), a table of
    `max_seq_len` positions per axis with angles in float64 (as diffusers builds it), then
    float32. Holds no parameters or buffers: the tables stay float32 whatever the model dtype."""

    def __init__(self, head_dim: int, max_seq_len: int, theta: float = 10000.0):
        super().__init__()
        self.dims, self.max_seq_len = axial_dims(head_dim, 3), max_seq_len
        pos = torch.arange(max_seq_len, dtype=torch.float64)  # (P,)
        tables = []
        for d in self.dims:
            inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))  # (d/2,)
            tables.append(torch.outer(pos, inv_freq))  # (P, d/2)
        angles = torch.cat(tables, dim=1)  # (P, D/2): axis a owns a contiguous slice
        self._tables = {torch.device("cpu"): (angles.cos().float(), angles.sin().float())}

    def _on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if device not in self._tables:
            cos, sin = self._tables[torch.device("cpu")]
            self._tables[device] = (cos.to(device), sin.to(device))
        return self._tables[device]

    def forward(self, grid: tuple[int, int, int], device, frame_offset: int = 0):
        """cos, sin (T'·H'·W', D/2) for a token grid row-major over (t, h, w); the time index
        starts at `frame_offset` (in token frames)."""
        (tt, hh, ww), p = grid, self.max_seq_len
        if frame_offset + tt > p or hh > p or ww > p:
            raise InvalidInputError(
                f"token grid {grid} (time from {frame_offset}) exceeds rope_max_seq_len={p}"
            )
        cos, sin = self._on(torch.device(device))
        dt, dh, _ = (d // 2 for d in self.dims)

        def table(full: Tensor) -> Tensor:
            t = full[frame_offset : frame_offset + tt, :dt].view(tt, 1, 1, -1)
            h = full[:hh, dt : dt + dh].view(1, hh, 1, -1)
            w = full[:ww, dt + dh :].view(1, 1, ww, -1)
            parts = [a.expand(tt, hh, ww, -1) for a in (t, h, w)]
            return torch.cat(parts, dim=-1).reshape(tt * hh * ww, -1)  # (N, D/2)

        return table(cos), table(sin)


def collapse_padding(text: Tensor) -> tuple[Tensor, Tensor | None]:
    """Wan's zero-padded text (B, S, E) -> (text (B, L, E), key bias (B, 1, 1, L) or None).

    Wan pads the T5 states with zero rows to 512 and attends to all of them. Every zero row
    embeds to the same context row, hence the same key and value in every layer, and m equal
    keys weigh as one key whose score is raised by log m. So the trailing zero rows are cut to
    the L − n_b ≥ 1 rows this batch still needs (row b has n_b real rows, L = max n_b + 1), each
    scored + log(m_b / (L − n_b)) for its m_b = S − n_b padded rows: the same attention, exact
    up to rounding, for a 30-token prompt about 17× less cross-attention key/value work. None
    (text unchanged) when nothing would be cut.
    """
    b, s, _ = text.shape
    real = text.detach().abs().amax(-1) != 0  # (B, S)
    n = (real * torch.arange(1, s + 1, device=text.device)).amax(-1)  # (B,) last real row + 1
    length = int(n.max()) + 1
    if length >= s:
        return text, None
    pads = (s - n).to(torch.float32)  # (B,) ≥ 1
    copies = (length - n).to(torch.float32)  # (B,) pad rows kept, ≥ 1
    is_pad = torch.arange(length, device=text.device)[None] >= n[:, None]  # (B, L)
    bias = torch.where(is_pad, torch.log(pads / copies)[:, None], 0.0)  # (B, L)
    return text[:, :length], bias[:, None, None, :]


class WanAttention(nn.Module):
    """Self- or cross-attention with RMSNorm of q and k over all heads at once (Wan's
    "rms_norm_across_heads"); with `added_kv_proj_dim`, a second key/value set for image
    tokens whose attention output is added to the text one (I2V)."""

    def __init__(self, dim: int, heads: int, eps: float, added_kv_proj_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Identity()])  # [1] was a dropout
        self.norm_q = nn.RMSNorm(dim, eps=eps)
        self.norm_k = nn.RMSNorm(dim, eps=eps)
        self.add_k_proj = self.add_v_proj = None
        if added_kv_proj_dim is not None:
            self.add_k_proj = nn.Linear(added_kv_proj_dim, dim)
            self.add_v_proj = nn.Linear(added_kv_proj_dim, dim)
            self.norm_added_k = nn.RMSNorm(dim, eps=eps)

    def _heads(self, x: Tensor) -> Tensor:
        return x.unflatten(2, (self.heads, -1)).transpose(1, 2)  # (B, H, L, hd)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        image: Tensor | None = None,
        rope: tuple[Tensor, Tensor] | None = None,
        backend: str = "sdpa",
        bias: Tensor | None = None,
    ) -> Tensor:
        """x (B, N, D) attends to itself (context None) or to context (B, S, D) and image
        tokens (B, L, D'). rope: cos, sin (N, hd/2) for self-attention. bias (B, 1, 1, S):
        added to the context scores (`collapse_padding`). Returns (B, N, D)."""
        source = x if context is None else context
        q = self._heads(self.norm_q(self.to_q(x)))  # (B, H, N, hd)
        k = self._heads(self.norm_k(self.to_k(source)))  # (B, H, S, hd)
        v = self._heads(self.to_v(source))  # (B, H, S, hd)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if bias is None:
            out = attend(q, k, v, backend=backend).to(q.dtype)  # (B, H, N, hd)
        else:  # an additive key bias: SDPA takes it on every device
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        if image is not None:
            if self.add_k_proj is None:
                raise InvalidInputError("image tokens need a model with added_kv_proj_dim (I2V)")
            k_img = self._heads(self.norm_added_k(self.add_k_proj(image)))  # (B, H, L, hd)
            v_img = self._heads(self.add_v_proj(image))  # (B, H, L, hd)
            out = out + attend(q, k_img, v_img, backend=backend).to(q.dtype)
        out = out.transpose(1, 2).flatten(2)  # (B, N, D)
        return self.to_out[0](out)


class GeluProj(nn.Module):
    """Linear then GELU (diffusers' `GELU` activation module, hence `.proj`)."""

    def __init__(self, dim_in: int, dim_out: int, approximate: str):
        super().__init__()
        self.proj, self.approximate = nn.Linear(dim_in, dim_out), approximate

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.proj(x), approximate=self.approximate)


class FeedForward(nn.Module):
    """`net.0.proj` -> GELU -> `net.2` (net.1 was a dropout), named as diffusers' FeedForward."""

    def __init__(self, dim: int, inner: int, dim_out: int, approximate: str = "tanh"):
        super().__init__()
        self.net = nn.ModuleList(
            [GeluProj(dim, inner, approximate), nn.Identity(), nn.Linear(inner, dim_out)]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net[2](self.net[0](x))


class WanBlock(nn.Module):
    """One Wan transformer block (module docstring); `scale_shift_table` is its own (1, 6, D)."""

    def __init__(
        self,
        dim: int,
        ffn_dim: int,
        heads: int,
        cross_attn_norm: bool,
        eps: float,
        added_kv_proj_dim: int | None = None,
    ):
        super().__init__()
        self.norm1 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.attn1 = WanAttention(dim, heads, eps)
        self.attn2 = WanAttention(dim, heads, eps, added_kv_proj_dim)
        self.norm2 = FP32LayerNorm(dim, eps) if cross_attn_norm else nn.Identity()
        self.ffn = FeedForward(dim, ffn_dim, dim)
        self.norm3 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(
        self,
        x: Tensor,
        context: Tensor,
        e6: Tensor,
        rope: tuple[Tensor, Tensor],
        image: Tensor | None = None,
        backend: str = "sdpa",
        context_bias: Tensor | None = None,
    ) -> Tensor:
        """x (B, N, D); context (B, S, D) with its key bias (B, 1, 1, S) or None; e6
        (B, G, 6, D) projected time embedding; image (B, L, D) or None. Returns (B, N, D)."""
        mods = (self.scale_shift_table.float() + e6.float()).unsqueeze(3)  # (B, G, 6, 1, D)
        s1, c1, g1, s2, c2, g2 = mods.unbind(2)  # 6 × (B, G, 1, D) float32
        h = modulate(self.norm1(x.float()), s1, c1).to(x.dtype)  # (B, N, D)
        x = gated_add(x, self.attn1(h, rope=rope, backend=backend), g1)
        h = self.norm2(x.float()).to(x.dtype)  # (B, N, D)
        x = x + self.attn2(h, context, image, backend=backend, bias=context_bias)
        h = modulate(self.norm3(x.float()), s2, c2).to(x.dtype)  # (B, N, D)
        return gated_add(x, self.ffn(h), g2)  # (B, N, D)


class MLP2(nn.Module):
    """`linear_1` -> activation -> `linear_2` (diffusers' TimestepEmbedding and
    PixArtAlphaTextProjection, which Wan uses for time and text)."""

    def __init__(self, dim_in: int, dim: int, act: nn.Module):
        super().__init__()
        self.linear_1, self.act, self.linear_2 = nn.Linear(dim_in, dim), act, nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class ImageEmbedding(nn.Module):
    """CLIP image states (B, L, image_dim) -> (B, L, D): LN -> Linear-GELU-Linear -> LN, with a
    learned position table over both images of first/last-frame models (`pos_embed_seq_len`)."""

    def __init__(self, image_dim: int, dim: int, pos_embed_seq_len: int | None = None):
        super().__init__()
        self.norm1 = FP32LayerNorm(image_dim)
        self.ff = FeedForward(image_dim, image_dim, dim, approximate="none")
        self.norm2 = FP32LayerNorm(dim)
        self.pos_embed = None
        if pos_embed_seq_len is not None:
            self.pos_embed = nn.Parameter(torch.zeros(1, pos_embed_seq_len, image_dim))

    def forward(self, image: Tensor) -> Tensor:
        if self.pos_embed is not None:
            image = image + self.pos_embed  # (B, L, image_dim), L = pos_embed_seq_len
        return self.norm2(self.ff(self.norm1(image)))  # (B, L, D)


class ConditionEmbedder(nn.Module):
    """Time, text and image embeddings (diffusers' `condition_embedder`).

    sigma (B, G) -> sinusoid of 1000·σ (cos first) -> `time_embedder` -> temb (B, G, D), and
    `time_proj`(SiLU(temb)) -> e6 (B, G, 6, D), shared by every block (AdaLN-single)."""

    def __init__(self, dim, freq_dim, text_dim, image_dim=None, pos_embed_seq_len=None):
        super().__init__()
        self.freq_dim = freq_dim
        self.time_embedder = MLP2(freq_dim, dim, nn.SiLU())
        self.time_proj = nn.Linear(dim, 6 * dim)
        self.text_embedder = MLP2(text_dim, dim, nn.GELU(approximate="tanh"))
        self.image_embedder = None
        if image_dim is not None:
            self.image_embedder = ImageEmbedding(image_dim, dim, pos_embed_seq_len)

    def forward(self, sigma: Tensor, text: Tensor, image: Tensor | None = None):
        freq = timestep_embedding(sigma, self.freq_dim)  # (B, G, F) float32, args 1000·σ
        temb = self.time_embedder(freq.to(self.time_embedder.linear_1.weight.dtype))
        temb = temb.to(text.dtype)  # (B, G, D)
        e6 = self.time_proj(F.silu(temb)).unflatten(-1, (6, -1))  # (B, G, 6, D)
        context = self.text_embedder(text)  # (B, S, D)
        image = None if image is None else self.image_embedder(image)  # (B, L, D)
        return temb, e6, context, image
