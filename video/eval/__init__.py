"""Video evaluation: weight-free metrics (`metrics`: PSNR, SSIM, flicker, seam jump, drift),
shapes detectors (`detect`), prompt adherence (`adherence`) and `mdiff eval video` (`run`)."""

from mdiff.video.eval.metrics import SeamReport, drift, flicker, frame_diffs, psnr, seam_jump, ssim

__all__ = ["SeamReport", "drift", "flicker", "frame_diffs", "psnr", "seam_jump", "ssim"]
