"""Fill-in-the-middle with the code model, streamed, saved with its manifest, then verified.

    python examples/fim.py [MODEL]        # MODEL: a built-in name (default code-tiny) or folder

The completion is watermarked token by token inside the sampler and signed into a sidecar
manifest that names the characters the model wrote; `verify` scores exactly those.
"""

import sys
import tempfile
from pathlib import Path

from mdiff.provenance.verify import verify
from mdiff.text import CodeModel
from mdiff.text.sampling.stream import TokenCollector

SOURCE = '''def mean(values):
    """The arithmetic mean of a non-empty list."""
    total = <FILL>
    return total / len(values)
'''

if __name__ == "__main__":
    cm = CodeModel.from_pretrained(sys.argv[1] if len(sys.argv) > 1 else "code-tiny")
    streams = []

    def collector(n):  # one streamer per hole: committed tokens and per-step drafts
        streams.append(TokenCollector())
        return streams[-1]

    done = cm.fill(SOURCE, length="auto", streamer_factory=collector, schedule="threshold")
    print(done.text)
    print(f"{len(streams[0].drafts)} draft steps, {done.tokens_per_forward:.2f} tokens/forward")
    with tempfile.TemporaryDirectory() as tmp:
        path = done.save(Path(tmp) / "mean.py")
        report = verify(path)
        print(report.verdict, "| watermark:", report.watermark)
