"""Prompt adherence for shapes videos: the parser on the caption vocabulary, the weight-free
detectors on ground-truth clips rendered by the dataset, wrong prompts, aggregation and the
`mdiff eval video` command."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from mdiff import cli
from mdiff.cli import EXIT_ERROR
from mdiff.errors import InvalidInputError
from mdiff.video.data import (
    BACKGROUNDS,
    COLORS,
    PHRASES,
    SHAPES,
    SIZES,
    TEMPLATES,
    ClipTruth,
    ShapeObject,
    render_clip,
    sample_truth,
)
from mdiff.video.eval import metrics as video_eval
from mdiff.video.eval.adherence import adherence, evaluate_prompts, parse_prompt, summarise_hits
from mdiff.video.eval.detect import classify_motion, detect
from mdiff.video.io import frames_to_pixels, pixels_to_frames

# Fixtures come from the shared helper module (imported by name, so ruff sees redefinitions).
from .pipeline_fixtures import causal, pipe_dir, stamper  # noqa: F401

SEED, CLIPS, SIZE, FRAMES = 11, 200, 64, 17  # SEED was not used to tune the detectors


def _clip(truth: ClipTruth) -> torch.Tensor:
    return pixels_to_frames(render_clip(truth))


def _truth(objects, background="black", size=SIZE, frames=FRAMES) -> ClipTruth:
    """A hand-made clip: objects given as (shape, colour, size, motion, start, velocity)."""
    t = torch.arange(frames, dtype=torch.float64)[:, None]
    objs = tuple(
        ShapeObject(shape, colour, COLORS[colour], sz, SIZES[sz] * size, motion,
                    torch.tensor(start, dtype=torch.float64) + t * torch.tensor(vel))
        for shape, colour, sz, motion, start, vel in objects
    )  # fmt: skip
    return ClipTruth(objs, background, "", size, size, frames, 8.0)


# ---------------------------------------------------------------------------- parse_prompt


def _phrase(colour, shape, motion_phrase, size=None):
    words = [w for w in (size, colour, shape) if w]
    article = "an" if words[0][0] in "aeiou" else "a"
    return f"{article} {' '.join(words)} {motion_phrase}"


def test_parse_prompt_every_template_background_and_motion_phrase():
    colours, shapes, sizes = list(COLORS), list(SHAPES), [None, *SIZES]
    cases = 0
    for k, (template, bg, (motion, phrase)) in enumerate(itertools.product(
        TEMPLATES, BACKGROUNDS, [(m, p) for m, ps in PHRASES.items() for p in ps]
    )):  # fmt: skip
        first = (colours[k % 7], shapes[k % 3], motion, sizes[k % 4])
        second = (colours[(k + 3) % 7], shapes[(k + 1) % 3], list(PHRASES)[k % 7], sizes[k % 3])
        second_phrase = PHRASES[second[2]][k % 3]
        for objects in ([first], [first, second]):
            texts = [_phrase(objects[0][0], objects[0][1], phrase, objects[0][3])]
            if len(objects) == 2:
                texts.append(_phrase(second[0], second[1], second_phrase, second[3]))
            caption = template.format(objects=" and ".join(texts), bg=bg)
            spec = parse_prompt(caption)
            assert spec.background == bg, caption
            assert spec.count == len(objects), caption
            got = [(o.colour, o.shape, o.motion, o.size) for o in spec.objects]
            assert got == [tuple(o) for o in objects], caption
            assert (spec.colour, spec.shape, spec.motion) == objects[0][:3]
            cases += 1
    assert cases == len(TEMPLATES) * len(BACKGROUNDS) * 21 * 2


def test_parse_prompt_matches_dataset_captions():
    for i in range(300):
        truth = sample_truth(5, i, num_frames=5, height=16, width=16, fps=8.0)
        spec = parse_prompt(truth.caption)
        assert spec.background == truth.background
        assert [(o.colour, o.shape, o.motion) for o in spec.objects] == [
            (o.color, o.shape, o.motion) for o in truth.objects
        ], truth.caption


def test_parse_prompt_free_text_and_unknown_words():
    spec = parse_prompt("a red circle moving right")
    assert (spec.colour, spec.shape, spec.motion, spec.background, spec.count) == (
        "red", "circle", "right", None, 1)  # fmt: skip
    assert parse_prompt("a blue square on grey").background == "gray"
    assert parse_prompt("a big purple circle rolling leftwards").motion == "left"
    two = parse_prompt("two yellow triangles bouncing around, dark green background")
    assert two.count == 2 and two.background == "dark green" and two.motion == "bouncing"
    assert parse_prompt("a green triangle on a white background").colour == "green"
    nothing = parse_prompt("a cat playing the piano")
    assert (nothing.colour, nothing.shape, nothing.motion, nothing.background, nothing.count) == (
        None, None, None, None, None)  # fmt: skip
    assert parse_prompt("a circle").colour is None and parse_prompt("a circle").motion is None
    with pytest.raises(InvalidInputError):
        parse_prompt(None)


# ------------------------------------------------------------------------------- detectors


@pytest.fixture(scope="module")
def truth_rows():
    """Adherence of CLIPS ground-truth clips to their own captions (+ how many objects)."""
    rows = []
    for i in range(CLIPS):
        truth = sample_truth(SEED, i, num_frames=FRAMES, height=SIZE, width=SIZE, fps=8.0)
        rows.append((len(truth.objects), adherence(_clip(truth), truth.caption)))
    return rows


def test_detectors_recover_ground_truth_of_dataset_clips(truth_rows):
    acc = {k: v["accuracy"] for k, v in summarise_hits([r for _, r in truth_rows]).items()}
    # Measured on seed 11 (200 clips, 302 objects): colour 0.993, shape 0.970, motion 0.967,
    # background 1.000, count 0.975 (seeds 7 and 123: colour 0.990 / 0.986, shape 0.973 /
    # 0.962, motion 0.969 / 0.969). The misses are occlusions (a shape partly covered looks
    # like another, or is cut in pieces) and objects of one colour touching for long.
    assert acc["colour"] >= 0.98
    assert acc["shape"] >= 0.95
    assert acc["motion"] >= 0.95
    assert acc["background"] == 1.0
    assert acc["count"] >= 0.95


def test_detectors_are_nearly_perfect_on_single_object_clips(truth_rows):
    single = [r for n, r in truth_rows if n == 1]
    assert len(single) > 80
    acc = {k: v["accuracy"] for k, v in summarise_hits(single).items()}
    assert min(acc.values()) >= 0.99, acc


def test_every_shape_size_and_background_is_recognised():
    wrong = []
    for shape, size, bg in itertools.product(SHAPES, SIZES, BACKGROUNDS):
        colour = "red" if bg != "dark green" else "yellow"
        clip = _clip(_truth([(shape, colour, size, "still", (30.3, 33.7), (0.0, 0.0))], bg,
                            frames=5))  # fmt: skip
        tracks, background = detect(clip)
        got = (background, len(tracks), tracks[0].colour, tracks[0].shape, tracks[0].motion)
        if got != (bg, 1, colour, shape, "still"):
            wrong.append((shape, size, bg, got))
    assert not wrong


def test_wrong_colour_motion_shape_and_background_score_misses():
    clip = _clip(_truth([("circle", "red", "medium", "left", (50.0, 30.0), (-2.0, 0.0))]))
    right = adherence(clip, "a red circle moving left on a black background")["hits"]
    assert right == {"colour": [True], "shape": [True], "motion": [True], "direction": [True],
                     "background": [True], "count": [True]}  # fmt: skip
    wrong = adherence(clip, "a blue circle moving right")["hits"]
    assert wrong["colour"] == [False] and wrong["motion"] == [False]
    assert wrong["shape"] == [True] and wrong["background"] == []  # not named: not scored
    assert adherence(clip, "a red square moving left")["hits"]["shape"] == [False]
    still = adherence(clip, "a red circle standing still")["hits"]
    assert still["motion"] == [False] and still["direction"] == []  # no heading: not scored
    assert adherence(clip, "a red circle moving up")["hits"]["direction"] == [False]
    assert adherence(clip, "a red circle, white background")["hits"]["background"] == [False]
    two = adherence(clip, "a red circle moving left and a green square moving up")["hits"]
    assert two["colour"] == [True, False] and two["count"] == [False]
    assert two["direction"] == two["motion"] == [True, False]
    bouncing = adherence(clip, "a red circle moving left and a green square bouncing")["hits"]
    assert bouncing["motion"] == [True, False] and bouncing["direction"] == [True]


def test_empty_clip_misses_every_object():
    clip = _clip(_truth([], "gray"))
    report = adherence(clip, "a red circle moving left on a gray background")
    assert report["detected"]["objects"] == []
    hits = report["hits"]
    assert hits["colour"] == hits["shape"] == hits["motion"] == [False]
    assert hits["background"] == [True]


def test_noise_adheres_to_nothing():
    g = torch.Generator().manual_seed(3)
    noise = torch.randint(0, 256, (FRAMES, SIZE, SIZE, 3), generator=g, dtype=torch.uint8)
    report = adherence(noise, "a red circle moving left")
    assert report["detected"]["objects"] == []  # specks are neither big nor lasting
    assert report["hits"]["colour"] == report["hits"]["shape"] == [False]


def test_motion_classifier_on_trajectories():
    t = np.arange(17.0)[:, None]

    def line(vx, vy, x0=32.0, y0=32.0):
        return np.concatenate([x0 + vx * t, y0 + vy * t], 1)

    assert classify_motion(line(-1.5, 0), 64) == "left"
    assert classify_motion(line(1.5, 0.1), 64) == "right"
    assert classify_motion(line(0, -1.5), 64) == "up"  # rows grow downwards
    assert classify_motion(line(0, 1.5), 64) == "down"
    assert classify_motion(line(1.2, -1.2), 64) == "diagonal"
    assert classify_motion(line(0.1, 0.05), 64) == "still"
    bounce = line(4.0, 0.5, x0=10)
    bounce[:, 0] = 54 - np.abs(54 - bounce[:, 0])  # reflect off x = 54
    assert classify_motion(bounce, 64) == "bouncing"
    glitch = line(-1.5, 0)
    glitch[8] += (12, 12)  # one bad frame (occlusion) is filtered out
    glitch[3] = np.nan  # unseen frames are skipped
    assert classify_motion(glitch, 64) == "left"


def test_detectors_tolerate_pixel_noise():
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(30):
        truth = sample_truth(SEED, i, num_frames=FRAMES, height=SIZE, width=SIZE, fps=8.0)
        clip = _clip(truth).float() + torch.randn(FRAMES, SIZE, SIZE, 3, generator=g) * 8
        rows.append(adherence(clip.round().clamp(0, 255).to(torch.uint8), truth.caption))
    acc = {k: v["accuracy"] for k, v in summarise_hits(rows).items()}
    assert min(acc.values()) >= 0.9, acc


def test_adherence_rejects_bad_frames():
    with pytest.raises(InvalidInputError):
        adherence(torch.zeros(3, 32, 32, 3), "a red circle")  # float, not uint8
    with pytest.raises(InvalidInputError):
        adherence(torch.zeros(3, 32, 32, dtype=torch.uint8), "a red circle")


# --------------------------------------------------------------------------- evaluate_prompts


class _OraclePipe:
    """Renders the dataset clip whose caption it is given (or a fixed other clip)."""

    causal = False

    def __init__(self, wrong: bool = False):
        self.truths = {}
        for i in range(4):
            truth = sample_truth(SEED, i, num_frames=9, height=48, width=48, fps=8.0)
            self.truths[truth.caption] = truth
        self.wrong = wrong

    def __call__(self, prompt, *, seed, num_frames):
        truth = self.truths[prompt]
        if self.wrong:
            truth = _truth([("square", "white", "large", "up", (24.0, 35.0), (0.3, -1.5))],
                           "gray", size=48, frames=num_frames)  # fmt: skip
        return type("Out", (), {"frames": _clip(truth)})()


def test_evaluate_prompts_aggregates_accuracy_and_temporal_figures():
    good = _OraclePipe()
    prompts = list(good.truths)
    seen = []
    report = evaluate_prompts(good, prompts, seeds=[0, 1], chunks=[1, 4, 4], num_frames=9,
                              progress=lambda done, total: seen.append((done, total)))  # fmt: skip
    assert report["clips"] == 8 and seen[-1] == (8, 8)
    assert report["accuracy"]["colour"]["accuracy"] == 1.0
    assert report["accuracy"]["background"]["total"] == 8
    frames = good(prompts[0], seed=0, num_frames=9).frames
    row = report["per_clip"][0]
    assert row["flicker"] == pytest.approx(video_eval.flicker(frames))
    assert row["seam"]["ratio"] == pytest.approx(video_eval.seam_jump(frames, [1, 4, 4]).ratio)
    assert row["drift"] == pytest.approx(float(video_eval.drift(frames)[-1]))
    assert report["temporal"]["seam_ratio"] is not None
    json.dumps(report)  # serialisable as it is

    bad = evaluate_prompts(_OraclePipe(wrong=True), prompts, num_frames=9)
    assert bad["accuracy"]["colour"]["accuracy"] < 0.5
    assert bad["accuracy"]["background"]["accuracy"] < 0.5
    assert bad["temporal"]["seam_ratio"] is None  # not streamed, no chunks given
    with pytest.raises(InvalidInputError):
        evaluate_prompts(good, [], num_frames=9)


def test_evaluate_prompts_scores_hand_written_labels_not_the_parse():
    """A free-form prompt is scored against its labels: the oracle clip of a red-circle caption
    scores colour 1 under a "red, left" label and 0 under a "blue" one, whatever the words."""
    from mdiff.video.eval.adherence import ObjectSpec, PromptSpec

    good = _OraclePipe()
    prompt, truth = next((p, t) for p, t in good.truths.items() if len(t.objects) == 1)
    obj = truth.objects[0]
    other = next(c for c in ("red", "blue") if c != obj.color)

    def spec(colour):
        o = ObjectSpec(colour=colour, motion=obj.motion)
        return PromptSpec(colour, None, obj.motion, None, None, (o,))

    right = evaluate_prompts(good, [prompt], specs=[spec(obj.color)], num_frames=9)
    wrong = evaluate_prompts(good, [prompt], specs=[spec(other)], num_frames=9)
    assert right["accuracy"]["colour"] == {"hits": 1, "total": 1, "accuracy": 1.0}
    assert wrong["accuracy"]["colour"]["hits"] == 0
    assert right["per_clip"][0]["prompt"] == prompt
    with pytest.raises(InvalidInputError, match="one spec per prompt"):
        evaluate_prompts(good, [prompt], specs=[], num_frames=9)


def test_free_form_set_is_labelled_and_unlike_the_templates():
    from mdiff.video.data import COLORS
    from mdiff.video.eval.free_form import FREE_FORM

    assert len(FREE_FORM) >= 50 and len({p.prompt for p in FREE_FORM}) == len(FREE_FORM)
    assert all(p.colour in COLORS and p.motion in ("left", "right", "up", "down")
               for p in FREE_FORM)  # fmt: skip
    assert not any("background" in p.prompt for p in FREE_FORM)
    assert {p.colour for p in FREE_FORM} == set(COLORS)


# -------------------------------------------------------------------------------------- CLI


def _mdiff(home, *args):
    return cli.main(["--threads", "1", "--home", str(home), *args])


def test_cli_eval_video_json_on_a_tiny_pipeline(pipe_dir, home, capsys):  # noqa: F811
    from mdiff.video.eval.run import default_prompts

    argv = ["eval", "video", "--model", str(pipe_dir), "-n", "2", "--frames", "9",
            "--no-progress", "--json", "--objects", "2", "--skip", "1"]  # fmt: skip
    assert _mdiff(home, *argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["clips"] == 2 and report["seeds"] == [0]
    assert [c["prompt"] for c in report["per_clip"]] == default_prompts(2, objects=2, skip=1)
    assert all(len(c["spec"]["objects"]) == 2 for c in report["per_clip"])
    assert set(report["accuracy"]) == {"colour", "shape", "motion", "direction", "background",
                                       "count"}  # fmt: skip
    for attr in ("colour", "shape", "motion", "background"):
        a = report["accuracy"][attr]
        assert a["total"] >= 2 and 0.0 <= a["accuracy"] <= 1.0
    t = report["temporal"]
    assert t["flicker"] >= 0 and t["drift"] >= 0
    assert t["seam_ratio"] is not None  # the tiny pipeline is block-causal: it streams


def test_cli_eval_video_text_report_and_prompt_file(pipe_dir, home, tmp_path, capsys):  # noqa: F811
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# one per line\na red circle moving right\n\n", encoding="utf-8")
    argv = ["eval", "video", "--model", str(pipe_dir), "--prompts", str(prompts), "--frames",
            "5", "--no-progress"]  # fmt: skip
    assert _mdiff(home, *argv) == 0
    out = capsys.readouterr().out
    assert "1 clips (1 prompts" in out and "colour" in out and "flicker" in out
    assert "background     n/a  (0/0)" in out  # the prompt names no background
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n", encoding="utf-8")
    evaluate = ["eval", "video", "--model"]
    assert _mdiff(home, *evaluate, str(pipe_dir), "--prompts", str(empty)) == EXIT_ERROR
    assert _mdiff(home, *evaluate, str(tmp_path / "missing"), "-n", "1") == EXIT_ERROR
    assert "mdiff: error:" in capsys.readouterr().err


def test_cli_eval_video_free_form(pipe_dir, home, capsys):  # noqa: F811
    from mdiff.video.eval.free_form import FREE_FORM

    argv = ["eval", "video", "--model", str(pipe_dir), "--free-form", "-n", "2", "--skip", "3",
            "--frames", "5", "--no-progress", "--json"]  # fmt: skip
    assert _mdiff(home, *argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert [c["prompt"] for c in report["per_clip"]] == [p.prompt for p in FREE_FORM[3:5]]
    assert [c["spec"]["colour"] for c in report["per_clip"]] == [p.colour for p in FREE_FORM[3:5]]
    assert report["accuracy"]["direction"]["total"] == 2
    assert _mdiff(home, "eval", "video", "--free-form", "--reference") != 0


def test_default_prompts_are_held_out_captions_filtered_by_object_count():
    from mdiff.video.data import ShapesDataset
    from mdiff.video.dit.objective import HELDOUT_SEED
    from mdiff.video.eval.run import default_prompts

    data = ShapesDataset(40, seed=HELDOUT_SEED)
    truths = [data.truth(i) for i in range(40)]
    assert default_prompts(40) == [t.caption for t in truths]
    for k in (1, 2):
        mine = [t.caption for t in truths if len(t.objects) == k][:5]
        assert default_prompts(5, objects=k) == mine and len(mine) == 5
        assert all(len(parse_prompt(p).objects) == k for p in mine)
        later = [t.caption for t in truths if len(t.objects) == k][3:7]
        assert default_prompts(4, objects=k, skip=3) == later and len(later) == 4
    with pytest.raises(InvalidInputError):
        default_prompts(3, skip=-1)


# -------------------------------------------------------------------- reference (the ceiling)


class _Identity(torch.nn.Module):
    """A lossless 'VAE': the round trip returns the clip unchanged."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def encode(self, x):
        return x

    def decode(self, z):
        return z


def test_reference_scores_the_held_out_clips_behind_default_prompts():
    from mdiff.video.dit.objective import HELDOUT_SEED
    from mdiff.video.eval.run import default_prompts, reference_adherence

    got = reference_adherence(_Identity(), 6, objects=2, skip=2, num_frames=9)
    assert got["clips"] == 6 and got["vae"] == got["rendered"]  # a lossless round trip
    # The same clips found the other way: the held-out truths whose captions are the prompts.
    prompts = default_prompts(6, objects=2, skip=2)
    truths = (sample_truth(HELDOUT_SEED, i, num_frames=9, height=64, width=64, fps=8.0)
              for i in itertools.count())  # fmt: skip
    mine = [t for t in itertools.islice((t for t in truths if len(t.objects) == 2), 2, 8)]
    assert [t.caption for t in mine] == prompts
    rows = [adherence(_clip(t), t.caption) for t in mine]
    assert got["rendered"] == summarise_hits(rows)
    assert got["rendered"]["count"]["total"] == 6 and got["rendered"]["colour"]["total"] == 12


def test_reference_through_the_shipped_vae_keeps_single_objects():
    from mdiff.video.eval.run import reference_adherence
    from mdiff.video.vae.model import CausalVAE

    got = reference_adherence(CausalVAE.from_pretrained("shapes-vae"), 12, objects=1)
    # Measured: colour 12, motion 11, count 12 of 12 through the VAE (the motion miss is the
    # detector's: the rendered clip misses it too). A blurred round trip would lose colour to
    # the background, a broken one the object.
    for attr in ("colour", "motion", "count"):
        assert got["vae"][attr]["hits"] >= 11, (attr, got["vae"])
    assert got["rendered"]["colour"]["hits"] == 12


def test_cli_eval_video_reference(pipe_dir, home, tmp_path, capsys):  # noqa: F811
    argv = ["eval", "video", "--model", str(pipe_dir), "-n", "3", "--frames", "9", "--objects",
            "1", "--reference"]  # fmt: skip
    assert _mdiff(home, *argv, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["reference"] and report["clips"] == 3
    assert report["rendered"]["colour"]["total"] == 3 == report["vae"]["colour"]["total"]
    assert _mdiff(home, *argv) == 0
    out = capsys.readouterr().out
    assert "3 held-out clips naming 1 object(s)" in out and "through the VAE" in out
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n", encoding="utf-8")
    argv = ["eval", "video", "--model", str(pipe_dir), "--prompts", str(prompts), "--reference"]
    assert _mdiff(home, *argv) == EXIT_ERROR
    assert "--reference scores held-out clips" in capsys.readouterr().err


# ---------------------------------------------------------------------------- image-to-video


def test_image_to_video_first_frame_psnr_is_the_vae_round_trip(causal):  # noqa: F811
    """An anchored first latent frame decodes to the image's own VAE round trip (the causal
    decoder's first frame depends on the first latent alone), so the first-frame PSNR equals
    the round trip's up to the watermark; a clip not anchored on the image falls far below."""
    from mdiff.video.eval.run import default_prompts, heldout_first_frames

    given = heldout_first_frames(causal.vae, 3, objects=1, num_frames=5, size=32)
    assert given["prompts"] == default_prompts(3, objects=1)
    assert all(im.shape == (32, 32, 3) and im.dtype == torch.uint8 for im in given["images"])
    report = evaluate_prompts(causal, given["prompts"], seeds=[0, 1], images=given["images"],
                              num_frames=5)  # fmt: skip
    rows = report["per_clip"]
    trips = [t for t in given["round_trip_psnr"] for _ in (0, 1)]  # prompt-major, 2 seeds
    assert [r["first_frame_psnr"] for r in rows] == pytest.approx(trips, abs=0.3)
    direct = causal(given["prompts"][2], seed=1, num_frames=5, image=given["images"][2]).frames
    expected = float(video_eval.psnr(direct[:1], given["images"][2][None])[0])
    assert rows[5]["first_frame_psnr"] == pytest.approx(expected)
    f = report["first_frame_psnr"]
    assert f["min"] == min(r["first_frame_psnr"] for r in rows) and f["min"] <= f["mean"]
    with torch.no_grad():  # the round trip, coded here independently
        pixels = frames_to_pixels(given["images"][2][None])[None]  # (1, 3, 1, H, W)
        trip = pixels_to_frames(causal.vae.decode(causal.vae.encode(pixels))[0])
    assert float(video_eval.psnr(direct[:1], trip)[0]) > 35  # the watermark's difference
    free = causal(given["prompts"][2], seed=1, num_frames=5).frames  # text-to-video
    assert float(video_eval.psnr(free[:1], trip)[0]) < 30  # measured 23.0 (anchored: 40.0)
    assert "first_frame_psnr" not in evaluate_prompts(causal, ["a red circle"], num_frames=5)
    with pytest.raises(InvalidInputError, match="one image per prompt"):
        evaluate_prompts(causal, given["prompts"], images=given["images"][:2], num_frames=5)


def test_cli_eval_video_image_to_video(pipe_dir, home, tmp_path, capsys):  # noqa: F811
    argv = ["eval", "video", "--model", str(pipe_dir), "-n", "2", "--frames", "5",
            "--image-to-video", "--no-progress"]  # fmt: skip
    assert _mdiff(home, *argv, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    f = report["first_frame_psnr"]
    assert report["clips"] == 2 and f["min"] <= f["mean"]
    assert f["mean"] == pytest.approx(f["vae_round_trip"], abs=0.3)
    assert all("first_frame_psnr" in r for r in report["per_clip"])
    assert _mdiff(home, *argv) == 0
    assert "image-to-video: first-frame PSNR" in capsys.readouterr().out
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n", encoding="utf-8")
    for extra in (["--prompts", str(prompts)], ["-n", "1", "--reference"]):
        bad = ["eval", "video", "--model", str(pipe_dir), "--image-to-video", *extra]
        assert _mdiff(home, *bad) == EXIT_ERROR
        assert "--image-to-video starts from held-out clips" in capsys.readouterr().err
