"""Text (and image) to video: requests, chunked flow-matching sampling, streaming output, and
`VideoPipeline`, which ties a VAE, a DiT and a text encoder together."""

from mdiff.video.pipeline.stream import StreamSummary, VideoChunk
from mdiff.video.pipeline.video_pipeline import PIPELINE_FILE, VideoOutput, VideoPipeline

__all__ = ["PIPELINE_FILE", "StreamSummary", "VideoChunk", "VideoOutput", "VideoPipeline"]
