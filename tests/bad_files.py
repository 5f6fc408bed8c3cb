"""Hostile and broken input files for the bad-input corpus: decompression bombs (a PNG or JPEG
header that claims a huge size, a real 20000² PNG of a few kB), garbage, empty files, and a
helper that makes a child process receive Ctrl-C at a chosen point of its start-up."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import torch

from mdiff import media

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def png_header_bomb(path: Path, side: int = 100_000) -> Path:
    """A PNG whose header claims side × side RGB pixels, with (almost) no pixel data."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat)
                     + _chunk(b"IEND", b""))  # fmt: skip
    return path


def png_real_bomb(path: Path, side: int = 20_000) -> Path:
    """A valid 1-bit black PNG of side × side pixels (400 MP at 20000): a few tens of kB on
    disk, 1.2 GB as RGB once decoded."""
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed pixels
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    path.write_bytes(PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat)
                     + _chunk(b"IEND", b""))  # fmt: skip
    return path


def jpeg_sof_bomb(path: Path, side: int = 65_500) -> Path:
    """A real 32×32 JPEG whose frame header (SOF0) was edited to claim side × side pixels."""
    small = path.with_name(f".small-{path.name}")
    media.write_image(torch.zeros(32, 32, 3, dtype=torch.uint8), small)
    data = bytearray(small.read_bytes())
    small.unlink()
    sof = data.index(b"\xff\xc0")  # marker, length (2), precision (1), height (2), width (2)
    data[sof + 5 : sof + 9] = struct.pack(">HH", side, side)
    path.write_bytes(bytes(data))
    return path


SIGINT_SITECUSTOMIZE = '''"""Send this process SIGINT as soon as the module named by
$MDIFF_TEST_SIGINT_AT starts importing: a Ctrl-C during start-up, at a chosen point. A finder
first on sys.meta_path sends it synchronously, from the importing thread, so the interrupt
lands at that import however loaded the machine is (a watcher thread could be starved)."""
import os
import signal
import sys

_AT = os.environ.get("MDIFF_TEST_SIGINT_AT")


class _Interrupt:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == _AT:
            sys.meta_path.remove(_Interrupt)
            os.kill(os.getpid(), signal.SIGINT)
        return None  # the real finders import it


if _AT:
    # a terminal's Ctrl-C reaches Python's handler; a shell's background job (`cmd &`) starts
    # with SIGINT ignored, and children inherit that, so put the handler back first
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.meta_path.insert(0, _Interrupt)
'''


def sigint_env(folder: Path, module: str) -> dict[str, str]:
    """Environment for `tests.corpus.mdiff_subprocess`: the child gets Ctrl-C when `module`
    starts importing (a ``sitecustomize`` in `folder` watches for it)."""
    (folder / "sitecustomize.py").write_text(SIGINT_SITECUSTOMIZE, encoding="utf-8")
    return {"PYTHONPATH": str(folder), "MDIFF_TEST_SIGINT_AT": module}
