"""`VideoPipeline.from_pretrained` on diffusers' Wan folders: the oracle is diffusers' own
`WanPipeline` (0.42.1) on tiny random components built here with diffusers, transformers and
tokenizers (nothing downloaded): same initial latents, steps, guidance and scheduler give the
same final latents; the scheduler's grid and the transformer's timesteps are theirs exactly;
the output keeps its provenance; unsupported folders are refused by name."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import PIL.Image
import pytest
import torch

from mdiff.errors import CheckpointError, InvalidInputError
from mdiff.provenance import Stamper, verify
from mdiff.video.pipeline import VideoPipeline
from mdiff.video.pipeline.schedulers import DiffusersSchedule
from mdiff.video.pipeline.wan_adapter import WanDenoiser
from mdiff.video.text_encoders.wan_t5 import WanT5Encoder

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)

TOL = 1e-4  # measured ≤ 1e-5 (float32; the two guidance branches run batched here)
PROMPT = "a red circle moving right"
WORDS = ["<pad>", "</s>", "<unk>", "a", "red", "circle", "moving", "right", "blue", "square"]
SIZE, FRAMES = 32, 5  # latents (1, 4, 2, 4, 4); 2 × 2 tokens per latent frame
FLOW = dict(prediction_type="flow_prediction", use_flow_sigmas=True)
SCHEDULERS = {
    "euler-shift3": lambda: diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
    "unipc-shift3": lambda: diffusers.UniPCMultistepScheduler(flow_shift=3.0, **FLOW),
    "dpmpp_2m-shift5": lambda: diffusers.DPMSolverMultistepScheduler(flow_shift=5.0, **FLOW),
}


def tokenizer():
    """A word-level T5-like tokenizer (EOS appended, pad 0), built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def wan_pipeline(scheduler):
    """diffusers' WanPipeline of tiny random components (weights std 0.3 in the transformer)."""
    torch.manual_seed(0)
    umt5 = transformers.UMT5Config(
        vocab_size=len(WORDS), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
        relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0,
    )  # fmt: skip
    text_encoder = transformers.UMT5EncoderModel(umt5).eval()
    transformer = diffusers.WanTransformer3DModel(
        num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, text_dim=16,
        freq_dim=32, ffn_dim=40, num_layers=2, rope_max_seq_len=32,
    ).eval()  # fmt: skip
    with torch.no_grad():
        for p in transformer.parameters():
            p.normal_(0, 0.3)
    vae = diffusers.AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                                     latents_mean=[0.1, -0.2, 0.3, 0.0],
                                     latents_std=[1.5, 0.5, 2.0, 1.0]).eval()  # fmt: skip
    return diffusers.WanPipeline(tokenizer=tokenizer(), text_encoder=text_encoder,
                                 transformer=transformer, vae=vae, scheduler=scheduler)  # fmt: skip


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """name -> (diffusers' pipeline, its save_pretrained folder), one per scheduler."""
    base = wan_pipeline(SCHEDULERS["unipc-shift3"]())
    out = {}
    for name, make in SCHEDULERS.items():
        base.scheduler = make()
        path = tmp_path_factory.mktemp("wan") / name
        base.save_pretrained(path)
        out[name] = (diffusers.WanPipeline.from_pretrained(path), path)
    return out


@pytest.fixture(scope="module")
def stamper(home) -> Stamper:
    return Stamper(home=home)


def noise(seed=0):
    return torch.randn(1, 4, 2, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(seed))


def theirs(pipe, steps, guidance, latents, **kw):
    out = pipe(PROMPT, height=SIZE, width=SIZE, num_frames=FRAMES, num_inference_steps=steps,
               guidance_scale=guidance, latents=latents, output_type="latent", **kw)  # fmt: skip
    return out.frames


# ------------------------------------------------------------------------------------ oracle


@pytest.mark.parametrize(
    "name, steps, guidance, negative",
    [("euler-shift3", 4, 3.0, None), ("euler-shift3", 3, 1.0, None),
     ("unipc-shift3", 4, 3.0, None), ("unipc-shift3", 6, 5.0, "blue square"),
     ("dpmpp_2m-shift5", 5, 4.0, None)],
)  # fmt: skip
def test_final_latents_match_diffusers_wan_pipeline(folders, stamper, name, steps, guidance,
                                                    negative):  # fmt: skip
    ref_pipe, path = folders[name]
    pipe = VideoPipeline.from_pretrained(path, stamper=stamper)
    schedule = pipe.dit.schedule
    assert (schedule.class_name, schedule.solver) == (type(ref_pipe.scheduler).__name__,
                                                      name.split("-")[0])  # fmt: skip
    assert pipe.settings.solver == schedule.solver and pipe.settings.shift == float(name[-1])
    kw = {} if negative is None else {"negative_prompt": negative}
    ref = theirs(ref_pipe, steps, guidance, noise(steps), **kw)
    out = pipe(PROMPT, FRAMES, SIZE, SIZE, steps=steps, guidance=guidance, latents=noise(steps),
               return_latents=True, **kw)  # fmt: skip
    assert out.latents.shape == ref.shape == (1, 4, 2, 4, 4)
    err = (out.latents - ref).abs().max().item()
    assert err < TOL, err
    assert ref.abs().max() > 1 and (ref - noise(steps)).abs().max() > 1  # it moved: not a stub


def test_expand_timesteps_folder_and_bf16(folders, tmp_path):
    # Wan 2.2's expand_timesteps (per-token timesteps) is the same call for text-to-video
    path = _edit(folders["unipc-shift3"][1], tmp_path / "ti2v", "model_index.json",
                 expand_timesteps=True)  # fmt: skip
    ref_pipe = diffusers.WanPipeline.from_pretrained(path)
    assert ref_pipe.config.expand_timesteps
    ref = theirs(ref_pipe, 4, 3.0, noise())
    pipe = VideoPipeline.from_pretrained(path)
    out = pipe(PROMPT, FRAMES, SIZE, SIZE, steps=4, guidance=3.0, latents=noise(),
               return_latents=True)  # fmt: skip
    assert (out.latents - ref).abs().max() < TOL
    sha = pipe.weights_sha256
    pipe.to(dtype=torch.bfloat16)  # the transformer only; its fp32 parts kept, as diffusers
    kept = {n: p.dtype for n, p in pipe.dit.transformer.named_parameters()}
    assert kept["scale_shift_table"] == kept["blocks.0.norm2.weight"] == torch.float32
    assert kept["blocks.0.attn1.to_q.weight"] == torch.bfloat16 and pipe.weights_sha256 != sha
    low = pipe(PROMPT, FRAMES, SIZE, SIZE, steps=4, guidance=3.0, latents=noise(),
               return_latents=True)  # fmt: skip
    assert low.latents.dtype == torch.float32 and 0 < (low.latents - ref).abs().max() < 1.0


@pytest.fixture(scope="module")
def ti2v(folders, tmp_path_factory):
    """The UniPC folder with Wan 2.2 TI2V's expand_timesteps: (its folder, diffusers' I2V)."""
    path = _edit(folders["unipc-shift3"][1], tmp_path_factory.mktemp("ti2v") / "ti2v",
                 "model_index.json", expand_timesteps=True)  # fmt: skip
    from diffusers.pipelines.wan import pipeline_wan_i2v

    if not hasattr(pipeline_wan_i2v, "ftfy"):  # 0.42.1 calls ftfy even when it is missing
        pipeline_wan_i2v.ftfy = SimpleNamespace(fix_text=lambda text: text)
    return path, diffusers.WanImageToVideoPipeline.from_pretrained(path)


def first_frame():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (SIZE, SIZE, 3), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("steps, guidance", [(4, 3.0), (5, 5.0)])
def test_ti2v_image_to_video_matches_diffusers(ti2v, steps, guidance):
    # diffusers' WanImageToVideoPipeline with expand_timesteps (Wan 2.2 TI2V): the encoded
    # image in the first latent frame, timestep 0 on its tokens; ours: the known frame at t = 1
    path, ref_pipe = ti2v
    image = first_frame()
    ref = ref_pipe(image=PIL.Image.fromarray(image.numpy()), prompt=PROMPT, height=SIZE,
                   width=SIZE, num_frames=FRAMES, num_inference_steps=steps,
                   guidance_scale=guidance, latents=noise(steps),
                   output_type="latent").frames  # fmt: skip
    pipe = VideoPipeline.from_pretrained(path)
    seen, forward = [], pipe.dit.transformer.forward_diffusers
    pipe.dit.transformer.forward_diffusers = lambda x, ts, *a: seen.append(ts) or forward(x, ts, *a)
    out = pipe(PROMPT, FRAMES, steps=steps, guidance=guidance, image=image, latents=noise(steps),
               return_latents=True)  # fmt: skip
    err = (out.latents - ref).abs().max().item()
    assert err < TOL, err
    assert all(ts.shape == (2, 8) and not ts[:, :4].any() and ts[:, 4:].min() > 0 for ts in seen)
    assert out.record.edited and out.frames.shape == (FRAMES, SIZE, SIZE, 3)


def test_known_frames_need_a_ti2v_folder(folders):
    pipe = VideoPipeline.from_pretrained(folders["unipc-shift3"][1])  # expand_timesteps false
    with pytest.raises(InvalidInputError, match="expand_timesteps"):
        pipe(PROMPT, FRAMES, steps=2, image=first_frame())


def test_transformer_sees_diffusers_timesteps_exactly(folders):
    # WanPipeline feeds the transformer int64(1000·σ) (UniPC) while stepping with σ itself
    ref_pipe, path = folders["unipc-shift3"]
    seen_theirs, seen_ours = [], []
    hook = ref_pipe.transformer.register_forward_pre_hook(
        lambda m, args, kw: seen_theirs.append(kw["timestep"].tolist()), with_kwargs=True
    )
    theirs(ref_pipe, 5, 3.0, noise())
    hook.remove()
    pipe = VideoPipeline.from_pretrained(path)
    forward = pipe.dit.transformer.forward_diffusers

    def spy(x, timestep, text, *a):
        seen_ours.append(timestep.tolist())
        return forward(x, timestep, text, *a)

    pipe.dit.transformer.forward_diffusers = spy
    pipe(PROMPT, FRAMES, SIZE, SIZE, steps=5, guidance=3.0, latents=noise())
    # theirs: one call per branch; ours: both branches in one batch of 2
    assert [ts[0] for ts in seen_ours] == [ts[0] for ts in seen_theirs[::2]]
    assert all(len(set(ts)) == 1 for ts in seen_ours)
    assert all(float(ts[0]).is_integer() for ts in seen_ours)
    assert seen_ours[0][0] == 999 and len(seen_ours) == 5  # σ_0 = 1 − 10⁻⁶ truncates


@pytest.mark.parametrize("name", list(SCHEDULERS))
@pytest.mark.parametrize("steps", [3, 10, 50])
def test_schedule_is_the_schedulers_exactly(folders, name, steps):
    sched = folders[name][0].scheduler
    sched.set_timesteps(steps)
    ours = DiffusersSchedule.from_config(dict(sched.config, _class_name=type(sched).__name__))
    assert torch.equal(ours.sigmas(steps), sched.sigmas.double())
    assert torch.equal(ours.timesteps(steps), sched.timesteps.double())
    assert torch.equal(ours.grid(steps), 1 - sched.sigmas.double())


def test_text_states_are_wan_pipelines(folders):
    ref_pipe, path = folders["unipc-shift3"]
    pipe = VideoPipeline.from_pretrained(path)
    assert isinstance(pipe.text_encoder, WanT5Encoder) and isinstance(pipe.dit, WanDenoiser)
    emb, neg = ref_pipe.encode_prompt(f"  {PROMPT} &amp;", max_sequence_length=512)
    ours, mask = pipe.text_encoder.encode([f"  {PROMPT} &amp;"])
    null, null_mask = pipe.text_encoder.null(1)
    assert ours.shape == (1, 512, 16) and mask.sum() == 7  # 5 words, "&" unknown, EOS
    assert (ours - emb).abs().max() < 1e-6 and (null - neg).abs().max() < 1e-6
    assert null_mask.sum() == 1 and not ours[:, 7:].any() and not null[:, 1:].any()


# ------------------------------------------------------------------------------- provenance


def test_output_keeps_provenance(folders, stamper, home, tmp_path):
    pipe = VideoPipeline.from_pretrained(folders["unipc-shift3"][1], stamper=stamper)
    out = pipe(PROMPT, FRAMES, SIZE, SIZE, steps=3, guidance=3.0, latents=noise(),
               return_latents=True)  # fmt: skip
    r = out.record
    assert r.weights_sha256 == pipe.weights_sha256 and len(r.weights_sha256) == 64
    assert VideoPipeline.from_pretrained(folders["unipc-shift3"][1]).weights_sha256 == (
        r.weights_sha256
    )  # a function of the folder
    assert r.sampler == "mdiff.video/flow-matching/unipc" and r.steps == 3
    assert r.extra["scheduler"] == "UniPCMultistepScheduler"
    assert r.extra["noise"]["kind"] == "given (latents)" and r.watermark is not None
    # frames are the decoded latents, watermarked: close, not equal
    with torch.no_grad():
        plain = pipe.vae.decode(out.latents)[0].clamp(-1, 1)
    plain = ((plain.permute(1, 2, 3, 0) + 1) * 127.5).round().to(torch.uint8)
    gap = (out.frames.float() - plain.float()).abs()
    assert out.frames.shape == (FRAMES, SIZE, SIZE, 3) and 0 < gap.mean() < 8
    report = verify(out.save(tmp_path / "wan.mp4"), home=home)
    assert report.manifest.state == "trusted"


# ---------------------------------------------------------------------------------- refusals


def _edit(src, dst, file, **changes):
    shutil.copytree(src, dst)
    data = json.loads((dst / file).read_text())
    data.update(changes)
    (dst / file).write_text(json.dumps(data))
    return dst


@pytest.mark.parametrize(
    "file, changes, match",
    [("model_index.json", {"_class_name": "WanVACEPipeline"}, "WanVACEPipeline"),
     ("model_index.json", {"transformer_2": ["diffusers", "WanTransformer3DModel"]},
      "transformer_2"),
     ("model_index.json", {"text_encoder": ["transformers", "T5EncoderModel"]}, "T5EncoderModel"),
     ("scheduler/scheduler_config.json", {"_class_name": "DDIMScheduler"}, "DDIMScheduler"),
     ("scheduler/scheduler_config.json", {"use_karras_sigmas": True}, "use_karras_sigmas"),
     ("scheduler/scheduler_config.json", {"solver_order": 3}, "solver_order")],
)  # fmt: skip
def test_unsupported_folders_raise_checkpoint_error(folders, tmp_path, file, changes, match):
    bad = _edit(folders["unipc-shift3"][1], tmp_path / "bad", file, **changes)
    with pytest.raises(CheckpointError, match=match):
        VideoPipeline.from_pretrained(bad)


def test_latents_must_have_the_clips_shape(folders):
    pipe = VideoPipeline.from_pretrained(folders["euler-shift3"][1])
    for bad in (noise()[:, :, :1], noise().double().numpy(), noise() * float("nan")):
        with pytest.raises(InvalidInputError, match="latents"):
            pipe(PROMPT, FRAMES, SIZE, SIZE, steps=1, latents=bad)
    with pytest.raises(InvalidInputError, match="stream"):
        pipe.stream(PROMPT, FRAMES, SIZE, SIZE)
    with pytest.raises(InvalidInputError, match="WanDenoiser"):
        pipe.save_pretrained(folders["euler-shift3"][1].parent / "copy")
