"""The procedural shapes dataset: determinism, vocabulary, ground truth vs pixels; folders."""

import pytest
import torch

from mdiff.errors import InvalidInputError
from mdiff.video import data, io


def test_items_are_deterministic_from_seed_and_index():
    a, b = data.ShapesDataset(seed=3), data.ShapesDataset(seed=3)
    x, y = a[7], b[7]
    assert torch.equal(x["pixels"], y["pixels"]) and x["caption"] == y["caption"]
    assert x["pixels"].shape == (3, 17, 64, 64) and x["pixels"].dtype == torch.float32
    assert float(x["pixels"].min()) >= -1 and float(x["pixels"].max()) <= 1
    assert not torch.equal(a[8]["pixels"], x["pixels"])
    assert not torch.equal(data.ShapesDataset(seed=4)[7]["pixels"], x["pixels"])
    assert len(a) == 100_000


def test_vocabulary_coverage_and_caption_variety():
    ds = data.ShapesDataset(seed=0)
    truths = [ds.truth(i) for i in range(300)]
    objects = [o for t in truths for o in t.objects]
    assert {o.color for o in objects} == set(data.COLORS)
    assert {o.shape for o in objects} == set(data.SHAPES)
    assert {o.motion for o in objects} == set(data.MOTIONS)
    assert {t.background for t in truths} == set(data.BACKGROUNDS)
    assert {len(t.objects) for t in truths} == {1, 2}
    for t in truths:
        for o in t.objects:
            assert o.color in t.caption and o.shape in t.caption
            assert o.motion[:5] in t.caption  # "diagonal" appears as "diagonally"
        assert t.background in t.caption
    assert len({t.caption for t in truths}) > 250
    templates = {t.caption.split(" ")[0] for t in truths}
    assert len(templates) >= 4


def test_rendered_centroid_matches_trajectory():
    ds = data.ShapesDataset(seed=1, max_objects=1, height=48, width=64, num_frames=9)
    for i in range(12):
        truth, pixels = ds.truth(i), ds[i]["pixels"]
        (obj,) = truth.objects
        bg = torch.tensor(data.BACKGROUNDS[truth.background]) / 127.5 - 1
        fg = torch.tensor(obj.rgb) / 127.5 - 1
        # coverage of the object per pixel, from the colour mix (projected on fg - bg)
        diff = (fg - bg)[:, None, None, None]
        alpha = ((pixels - bg[:, None, None, None]) * diff).sum(0) / diff.pow(2).sum()
        ys, xs = torch.meshgrid(torch.arange(48.0), torch.arange(64.0), indexing="ij")
        mass = alpha.sum((1, 2))
        cx, cy = (alpha * xs).sum((1, 2)) / mass, (alpha * ys).sum((1, 2)) / mass
        centre = torch.stack([cx, cy], -1).double()
        assert (centre - obj.trajectory).abs().max() < 1.0, (i, obj.shape)


def test_motion_word_matches_displacement():
    ds = data.ShapesDataset(seed=2, num_frames=17)
    seen = set()
    for i in range(200):
        for o in ds.truth(i).objects:
            d = o.trajectory[-1] - o.trajectory[0]
            step = (o.trajectory[1:] - o.trajectory[:-1]).abs().max(0).values
            seen.add(o.motion)
            if o.motion == "left":
                assert d[0] < -3 and step[1] == 0
            elif o.motion == "right":
                assert d[0] > 3 and step[1] == 0
            elif o.motion == "up":
                assert d[1] < -3 and step[0] == 0
            elif o.motion == "down":
                assert d[1] > 3 and step[0] == 0
            elif o.motion == "diagonal":
                assert d.abs().min() > 3
            elif o.motion == "still":
                assert step.max() == 0
            else:  # bouncing: the x velocity changes sign at least once
                vx = torch.sign(o.trajectory[1:, 0] - o.trajectory[:-1, 0])
                assert (vx[1:] * vx[:-1] < 0).any()
            assert (o.trajectory >= 0).all() and (o.trajectory[:, 0] <= 63).all()
    assert seen == set(data.MOTIONS)


def test_config_validation_and_image_mode():
    with pytest.raises(InvalidInputError):
        data.ShapesDataset(num_frames=8)
    single = data.ShapesDataset(num_frames=1, return_truth=True)[0]
    assert single["pixels"].shape == (3, 1, 64, 64)
    assert all(o.motion == "still" for o in single["truth"].objects)


def test_video_folder_dataset_random_clips(tmp_path):
    ds = data.ShapesDataset(num_frames=33, seed=5)
    for k in range(2):
        io.write_mp4(io.pixels_to_frames(ds[k]["pixels"]), tmp_path / f"v{k}.mp4", fps=8)
    (tmp_path / "v0.txt").write_text("a caption\n")
    folder = data.VideoFolderDataset(tmp_path, num_frames=9, seed=0, size=(32, 32))
    item = folder[0]
    assert len(folder) == 2 and item["caption"] == "a caption" and folder[1]["caption"] == ""
    assert item["pixels"].shape == (3, 9, 32, 32)
    assert folder[0]["start"] == item["start"]
    starts = {data.VideoFolderDataset(tmp_path, num_frames=9, seed=s)[0]["start"] for s in range(8)}
    assert len(starts) > 1
    # the clip is the right window of the source (PyAV path agrees with the default path)
    pyav = data.VideoFolderDataset(tmp_path, num_frames=9, seed=0, backend="pyav")[0]
    full = io.frames_to_pixels(io.read_video(tmp_path / "v0.mp4")[0])
    assert torch.allclose(pyav["pixels"], full[:, pyav["start"] : pyav["start"] + 9])
    with pytest.raises(InvalidInputError):
        data.VideoFolderDataset(tmp_path / "nothing")
