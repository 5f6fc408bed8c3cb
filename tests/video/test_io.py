"""Video IO: live fragmented MP4, bad files, limits, odd sizes, decord vs PyAV, round trips."""

import io as pyio
import os
import threading

import av
import pytest
import torch

from mdiff.errors import InvalidInputError, VideoIOError
from mdiff.video import data, io
from mdiff.video.eval import metrics as ev

CHUNK = 8


def _chunks(n=4, h=64, w=64, seed=0):
    clip = data.ShapesDataset(num_frames=1 + 4 * ((n * CHUNK) // 4), height=h, width=w, seed=seed)[
        0
    ]
    frames = io.pixels_to_frames(clip["pixels"])[: n * CHUNK]
    return [frames[k * CHUNK : (k + 1) * CHUNK] for k in range(n)]


@pytest.mark.parametrize("fragments", ["frame", "chunk"])
def test_fragmented_mp4_is_readable_while_it_grows(tmp_path, fragments):
    path, chunks, seen = tmp_path / "live.mp4", _chunks(), []
    finished = []
    writer = io.FragmentedMP4Writer(path, fps=16, on_finish=finished.append, fragments=fragments)
    with writer:
        for chunk in chunks:
            writer.write(chunk)
            seen.append(io.count_frames(path, partial=True))
    # on disk after chunk k: every frame but the last ("frame"), or chunks 0..k-1 ("chunk")
    lag = 1 if fragments == "frame" else CHUNK
    assert seen == [(k + 1) * CHUNK - lag for k in range(len(chunks))]
    assert finished == [path]
    frames, fps = io.read_video(path)
    assert frames.shape == (32, 64, 64, 3) and fps == 16.0
    live = float(ev.psnr(torch.cat(chunks), frames).mean())
    plain = io.read_video(io.write_mp4(torch.cat(chunks), tmp_path / "plain.mp4"))[0]
    assert live > float(ev.psnr(torch.cat(chunks), plain).mean()) - 1.0  # same quality as MP4


def test_fragmented_mp4_into_a_pipe_and_a_file_object(tmp_path):
    chunks = _chunks(3)
    buffer = pyio.BytesIO()
    with io.FragmentedMP4Writer(buffer, fps=8) as writer:
        for chunk in chunks:
            writer.write(chunk)
    read_fd, write_fd = os.pipe()
    received = bytearray()
    reader = threading.Thread(target=lambda: received.extend(_drain(read_fd)))
    reader.start()
    with os.fdopen(write_fd, "wb") as sink, io.FragmentedMP4Writer(sink, fps=8) as writer:
        for chunk in chunks:
            writer.write(chunk)
    reader.join(timeout=30)
    for payload, name in ((buffer.getvalue(), "buf.mp4"), (bytes(received), "pipe.mp4")):
        (tmp_path / name).write_bytes(payload)
        frames, fps = io.read_video(tmp_path / name)
        assert frames.shape[0] == 24 and fps == 8.0


def _drain(fd):
    with os.fdopen(fd, "rb") as source:
        return source.read()


def test_interrupted_writing_leaves_a_playable_file(tmp_path):
    path, chunks, finished = tmp_path / "cut.mp4", _chunks(3), []
    writer = io.FragmentedMP4Writer(path, on_finish=finished.append)
    with pytest.raises(RuntimeError, match="boom"), writer:
        writer.write(chunks[0])
        writer.write(chunks[1])
        raise RuntimeError("boom")
    assert finished == [path]  # the stamper hook still runs on the finalized file
    assert io.count_frames(path) == 2 * CHUNK  # strict: no truncated tail
    if io.decord_available():
        import decord

        assert len(decord.VideoReader(str(path))) == 2 * CHUNK


def test_pyav_and_decord_agree(tmp_path):
    path = tmp_path / "v.mp4"
    with io.FragmentedMP4Writer(path) as writer:
        for chunk in _chunks(3):
            writer.write(chunk)
    plain = io.write_mp4(torch.cat(_chunks(2)), tmp_path / "plain.mp4")
    pytest.importorskip("decord")
    import decord

    for file, total in ((path, 24), (plain, 16)):
        assert len(decord.VideoReader(str(file))) == io.count_frames(file) == total
        idx = [total - 1, 3, 0, 9, 9]
        by_decord = io.read_frames(file, idx, backend="decord")
        by_pyav = io.read_frames(file, idx, backend="pyav")
        assert by_decord.shape == (5, 64, 64, 3)
        assert float(ev.psnr(by_decord, by_pyav).min()) > 40  # same frames, maybe other rounding


def test_crf18_round_trip_psnr_on_shapes(tmp_path):
    ds = data.ShapesDataset(seed=9, num_frames=9, height=128, width=128)
    frames = torch.cat([io.pixels_to_frames(ds[i]["pixels"]) for i in range(6)])
    back, _ = io.read_video(io.write_mp4(frames, tmp_path / "r.mp4", crf=18))
    assert back.shape == frames.shape
    assert float(ev.psnr(frames, back).mean()) >= 34
    assert float(ev.ssim(frames, back).mean()) >= 0.95


def _bad_files(tmp_path):
    good = io.write_mp4(torch.cat(_chunks(2)), tmp_path / "good.mp4")
    payload = good.read_bytes()
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "truncated.mp4").write_bytes(payload[: len(payload) // 2])
    corrupt = bytearray(payload)
    corrupt[:256] = os.urandom(256)
    (tmp_path / "corrupt.mp4").write_bytes(bytes(corrupt))
    (tmp_path / "text.mp4").write_text("this is not a video\n" * 50)
    container = av.open(
        str(tmp_path / "zero.mp4"), "w", format="mp4", options={"movflags": "empty_moov"}
    )
    stream = container.add_stream("libx264", rate=16)
    stream.width = stream.height = 64
    stream.pix_fmt = "yuv420p"
    container.start_encoding()
    container.close()
    return ["missing", "empty", "truncated", "corrupt", "text", "zero"]


def _within(seconds, fn):
    """Run fn in a thread; fail if it does not return in time (a hang, not just slowness)."""
    outcome = []
    worker = threading.Thread(target=lambda: outcome.append(_capture(fn)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still running after {seconds} s"
    if outcome[0] is not None:
        raise outcome[0]


def _capture(fn):
    try:
        fn()
    except BaseException as exc:  # re-raised in the test thread
        return exc
    return None


def test_every_bad_file_raises_video_io_error_quickly(tmp_path):
    _within(60, lambda: _check_bad_files(tmp_path))


def _check_bad_files(tmp_path):
    names = _bad_files(tmp_path)
    for name in names:
        path = tmp_path / f"{name}.mp4"
        with pytest.raises(VideoIOError):
            io.read_video(path)
        for backend in ("pyav", "auto", "decord") if io.decord_available() else ("pyav",):
            with pytest.raises(VideoIOError):
                io.read_frames(path, [0, 1], backend=backend)
        with pytest.raises(VideoIOError):
            io.count_frames(path)


def test_frame_and_pixel_limits(tmp_path):
    path = io.write_mp4(torch.cat(_chunks(2)), tmp_path / "v.mp4")
    with pytest.raises(VideoIOError, match="limit"):
        io.read_video(path, max_frames=10)
    assert io.read_video(path, max_frames=16)[0].shape[0] == 16
    with pytest.raises(VideoIOError, match="pixels"):
        io.read_video(path, max_pixels=32 * 32)
    with pytest.raises(VideoIOError, match="limit"):
        io.read_frames(path, [io.MAX_FRAMES + 5])
    with pytest.raises(VideoIOError):
        io.read_frames(path, [16], backend="pyav")  # past the end


def test_odd_sizes_are_rejected_unless_padding_is_asked_for(tmp_path):
    """H.264 (yuv420p) cannot keep 47×33: never a silent change of size (the issue's 63×65
    frames saved as 64×66), only an explicit pad=True."""
    frames = torch.randint(0, 255, (5, 33, 47, 3), dtype=torch.uint8)
    with io.FragmentedMP4Writer(tmp_path / "odd.mp4", pad=True) as writer:
        writer.write(frames)
        with pytest.raises(InvalidInputError):
            writer.write(frames[:, :32])
    assert io.read_video(tmp_path / "odd.mp4")[0].shape == (5, 34, 48, 3)
    with pytest.raises(InvalidInputError, match="even"):
        io.FragmentedMP4Writer(tmp_path / "no.mp4").write(frames)
    with pytest.raises(InvalidInputError, match="even width and height, got 47×33"):
        io.write_mp4(frames, tmp_path / "odd2.mp4")
    assert not (tmp_path / "odd2.mp4").exists() and not (tmp_path / "no.mp4").exists()
    padded = io.write_mp4(frames, tmp_path / "odd3.mp4", pad=True)
    assert io.read_video(padded)[0].shape == (5, 34, 48, 3)


def test_png_and_pixel_conversions(tmp_path):
    clip = data.ShapesDataset(num_frames=1)[0]["pixels"]
    frames = io.pixels_to_frames(clip)
    assert frames.shape == (1, 64, 64, 3) and frames.dtype == torch.uint8
    back = io.frames_to_pixels(frames)
    assert (back - clip).abs().max() <= 1 / 127.5
    from mdiff import media

    assert torch.equal(media.read_image(io.write_png(frames, tmp_path / "f.png")), frames)
    with pytest.raises(InvalidInputError):
        io.write_png(frames, tmp_path / "f.jpg")
