"""Held-out evaluation of a VAE: reconstruction PSNR/SSIM per frame, flicker, latent statistics.

Reconstructions go through the real inference path (posterior mean, streaming-equivalent
encode and decode), so the figures are what a user of the checkpoint gets.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mdiff.errors import InvalidInputError
from mdiff.video.eval.metrics import flicker, psnr, ssim
from mdiff.video.vae.model import CausalVAE

__all__ = ["evaluate", "latent_stats", "reconstruct"]


@torch.no_grad()
def reconstruct(vae: CausalVAE, x: Tensor) -> Tensor:
    """The inference path: encode to the posterior mean, decode, clamp to [-1, 1]."""
    return vae.decode(vae.encode(x, normalize=False), normalize=False)


@torch.no_grad()
def evaluate(vae: CausalVAE, dataset, n: int = 32, *, batch_size: int = 4) -> dict:
    """Reconstruct the first `n` clips of `dataset` and compare with the originals.

    Returns mean / min PSNR (dB, data range 2) and SSIM over all frames, their means per
    frame index, the flicker (mean |Δframe|, fraction of the range) of reconstructions and
    originals, and the excess flicker (reconstruction − original) overall and on clips in
    which nothing moves (there the original's flicker is 0). PSNR is ``inf`` and SSIM 1 for
    identical frames."""
    n = min(n, len(dataset))
    if n < 1:
        raise InvalidInputError("evaluate needs at least one clip")
    was_training = vae.training
    vae.eval()
    device = next(vae.parameters()).device
    psnrs, ssims, fl_rec, fl_orig, static = [], [], [], [], []
    for start in range(0, n, batch_size):
        idx = range(start, min(n, start + batch_size))
        x = torch.stack([dataset[i]["pixels"] for i in idx]).to(device)
        y = reconstruct(vae, x).float().cpu()
        for k, i in enumerate(idx):
            a, b = x[k].cpu().permute(1, 2, 3, 0), y[k].permute(1, 2, 3, 0)  # (T, H, W, C)
            psnrs.append(psnr(b, a, data_range=2.0))
            ssims.append(ssim(b, a, data_range=2.0))
            if a.shape[0] > 1:
                fl_rec.append(flicker(b, data_range=2.0))
                fl_orig.append(flicker(a, data_range=2.0))
                truth = getattr(dataset, "truth", None)
                if truth is not None and all(o.motion == "still" for o in truth(i).objects):
                    static.append(fl_rec[-1] - fl_orig[-1])
    vae.train(was_training)
    p, s = torch.stack(psnrs), torch.stack(ssims)  # (n, T)

    def mean(v):
        return float(sum(v) / len(v)) if v else float("nan")

    return {
        "clips": n,
        "frames": int(p.shape[1]),
        "psnr_mean": float(p.mean()),
        "psnr_min": float(p.min()),
        "ssim_mean": float(s.mean()),
        "ssim_min": float(s.min()),
        "psnr_per_frame": [round(float(v), 3) for v in p.mean(0)],
        "ssim_per_frame": [round(float(v), 5) for v in s.mean(0)],
        "flicker_recon": mean(fl_rec),
        "flicker_orig": mean(fl_orig),
        "flicker_excess": mean([r - o for r, o in zip(fl_rec, fl_orig, strict=True)]),
        "flicker_excess_static": mean(static),
        "static_clips": len(static),
    }


@torch.no_grad()
def latent_stats(vae: CausalVAE, dataset, n: int = 64, *, batch_size: int = 4):
    """Per-channel mean and std of the raw posterior means over the first `n` clips."""
    vae_training = vae.training
    vae.eval()
    device = next(vae.parameters()).device
    zs = []
    for start in range(0, min(n, len(dataset)), batch_size):
        idx = range(start, min(n, len(dataset), start + batch_size))
        x = torch.stack([dataset[i]["pixels"] for i in idx]).to(device)
        z = vae.encode(x, normalize=False).float()  # (B, z, T', h, w)
        zs.append(z.transpose(0, 1).flatten(1).cpu())
    vae.train(vae_training)
    z = torch.cat(zs, 1)
    return z.mean(1).tolist(), z.std(1).clamp_min(1e-6).tolist()
