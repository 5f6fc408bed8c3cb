"""Procedural test media and attacks for provenance tests (no downloads, deterministic).

Frames are uint8 ``(T, H, W, 3)`` (the IO convention). Content: a coloured ``1/f`` texture
(the amplitude spectrum of natural images) that pans slowly, a soft gradient, and a few
coloured shapes moving across it. Attacks: H.264 round trip through PyAV/libx264, crop,
resize, brightness, all in torch.
"""

from __future__ import annotations

import io
import math

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor


def texture(h: int, w: int, generator: torch.Generator, beta: float = 1.0) -> Tensor:
    """Coloured ``1/f^β``-amplitude noise, ``(3, H, W)`` float, zero mean, unit std per channel."""
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.fftfreq(w)[None, :]
    amp = (fy**2 + fx**2).sqrt().clamp_min(1.0 / max(h, w)) ** -beta
    amp[0, 0] = 0
    noise = torch.randn(3, h, w, generator=generator)
    mix = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.3, 0.4, 0.87]])  # correlated colour
    x = torch.fft.ifft2(torch.fft.fft2(torch.einsum("ij,jhw->ihw", mix, noise)) * amp).real
    return (x - x.mean((1, 2), keepdim=True)) / x.std((1, 2), keepdim=True)


def moving_shapes(
    frames: int = 20,
    size: int | tuple[int, int] = 64,
    *,
    seed: int = 0,
    contrast: float = 24.0,
    pan: float = 1.0,
    shapes: int = 4,
) -> Tensor:
    """Coloured discs and boxes moving over a panning ``1/f`` texture, uint8 ``(T, H, W, 3)``.

    ``contrast`` is the texture std in 8-bit levels; ``pan`` the background speed in px/frame.
    """
    h, w = (size, size) if isinstance(size, int) else size
    g = torch.Generator().manual_seed(seed)
    margin = int(math.ceil(abs(pan) * frames)) + 1
    bg = texture(h + margin, w + margin, g) * contrast  # (3, H', W')
    base = 60 + 120 * torch.rand(3, 1, 1, generator=g)
    yy = torch.arange(h, dtype=torch.float32)[:, None]
    xx = torch.arange(w, dtype=torch.float32)[None, :]
    grad = 30 * (yy / h - 0.5) + 20 * (xx / w - 0.5)
    pos = torch.rand(shapes, 2, generator=g) * torch.tensor([h, w])
    vel = (torch.rand(shapes, 2, generator=g) - 0.5) * 4
    rad = (0.08 + 0.12 * torch.rand(shapes, generator=g)) * min(h, w)
    color = torch.rand(shapes, 3, generator=g) * 255
    out = torch.empty(frames, h, w, 3, dtype=torch.uint8)
    for t in range(frames):
        o = int(round(pan * t))
        img = bg[:, o : o + h, o : o + w] + base + grad  # (3, H, W)
        for k in range(shapes):
            cy, cx = (pos[k] + vel[k] * t) % torch.tensor([h, w])
            if k % 2:
                inside = ((yy - cy) ** 2 + (xx - cx) ** 2) <= rad[k] ** 2
            else:
                inside = ((yy - cy).abs() <= rad[k]) & ((xx - cx).abs() <= 0.7 * rad[k])
            img = torch.where(inside, color[k][:, None, None], img)
        out[t] = img.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0)
    return out


def h264_roundtrip(
    frames: Tensor, crf: int, *, preset: str = "medium", fps: int = 24
) -> tuple[Tensor, int]:
    """Encode with libx264 (yuv420p, ``crf``) into an in-memory MP4 and decode it back.

    Odd sizes are cropped to even (yuv420p needs it). Returns ``(decoded frames, encoded bytes)``.
    """
    t, h, w, _ = frames.shape
    h, w = h - h % 2, w - w % 2
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as box:
        stream = box.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf), "preset": preset}
        for x in frames[:, :h, :w].numpy():
            box.mux(stream.encode(av.VideoFrame.from_ndarray(x, format="rgb24")))
        box.mux(stream.encode())
    data = buf.getvalue()
    with av.open(io.BytesIO(data), mode="r") as box:
        decoded = [f.to_ndarray(format="rgb24") for f in box.decode(video=0)]
    out = torch.from_numpy(np.stack(decoded))
    return out, len(data)


def crop(frames: Tensor, keep: float = 0.9, offset: tuple[float, float] = (0.06, 0.04)) -> Tensor:
    """Keep ``keep`` of each side, starting at ``offset`` (fractions of height and width)."""
    _, h, w, _ = frames.shape
    oy, ox = int(offset[0] * h), int(offset[1] * w)
    return frames[:, oy : oy + int(keep * h), ox : ox + int(keep * w)].contiguous()


def resize(frames: Tensor, factor: float) -> Tensor:
    """Resize by ``factor`` (bilinear with antialiasing, like an image editor's downscale)."""
    _, h, w, _ = frames.shape
    size = (max(1, round(h * factor)), max(1, round(w * factor)))
    x = frames.permute(0, 3, 1, 2).float()
    y = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def brighten(frames: Tensor, delta: int = 20) -> Tensor:
    """Add ``delta`` levels to every channel, clipped to [0, 255]."""
    return (frames.int() + delta).clamp(0, 255).to(torch.uint8)


def png_roundtrip(frames: Tensor) -> Tensor:
    """Save each frame as PNG (Pillow, in memory) and read it back."""
    out = []
    for x in frames.numpy():
        buf = io.BytesIO()
        Image.fromarray(x).save(buf, format="PNG")
        out.append(np.array(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    return torch.from_numpy(np.stack(out))


def psnr(a: Tensor, b: Tensor) -> float:
    """PSNR in dB between two uint8 videos of the same shape."""
    mse = (a.double() - b.double()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(255**2 / mse)


ATTACKS = {
    "none": lambda x: x,
    "crf23": lambda x: h264_roundtrip(x, 23)[0],
    "crf28": lambda x: h264_roundtrip(x, 28)[0],
    "crop10": lambda x: crop(x),
    "resize0.5": lambda x: resize(x, 0.5),
    "bright+20": lambda x: brighten(x, 20),
    "crop+resize+crf28": lambda x: h264_roundtrip(resize(crop(x), 0.5), 28)[0],
}


def scatter_plot(size: int = 128, *, seed: int = 0, points: int = 60) -> Tensor:
    """One still frame ``(1, H, W, 3)``: coloured dots on a smooth vertical gradient (a chart)."""
    g = torch.Generator().manual_seed(seed)
    yy = torch.arange(size, dtype=torch.float32)[:, None].expand(size, size)
    xx = torch.arange(size, dtype=torch.float32)[None, :].expand(size, size)
    img = (235 - 40 * yy / size)[None].repeat(3, 1, 1)  # (3, H, W), near-white, smooth
    pos = 8 + torch.rand(points, 2, generator=g) * (size - 16)
    color = torch.rand(points, 3, generator=g) * 200
    for (cy, cx), c in zip(pos, color, strict=True):
        img = torch.where((yy - cy) ** 2 + (xx - cx) ** 2 <= 4.0, c[:, None, None], img)
    return img.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0)[None].contiguous()
