"""`VideoPipeline.from_pretrained` on diffusers' Wan 2.1 image-to-video folders
(`WanImageToVideoPipeline`: a CLIP image encoder and a transformer with an image branch, the
frame mask and the image's latents concatenated to the latents): the oracle is diffusers' own
pipeline on tiny random components, built offline (see `test_wan_pipeline`)."""

from __future__ import annotations

from types import SimpleNamespace

import PIL.Image
import pytest
import torch

from mdiff.errors import CheckpointError, InvalidInputError
from mdiff.video.pipeline import VideoPipeline

from .test_wan_pipeline import FRAMES, PROMPT, SCHEDULERS, SIZE, TOL, _edit, first_frame, noise
from .test_wan_pipeline import wan_pipeline as t2v_pipeline

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def i2v(tmp_path_factory):
    """(diffusers' WanImageToVideoPipeline, its folder): the T2V pieces, a tiny CLIP vision
    tower (2 layers: their states are the second-to-last) and an I2V transformer."""
    from diffusers.pipelines.wan import pipeline_wan_i2v

    if not hasattr(pipeline_wan_i2v, "ftfy"):  # 0.42.1 calls ftfy even when it is missing
        pipeline_wan_i2v.ftfy = SimpleNamespace(fix_text=lambda text: text)
    base = t2v_pipeline(SCHEDULERS["unipc-shift3"]())
    torch.manual_seed(3)
    transformer = diffusers.WanTransformer3DModel(
        num_attention_heads=2, attention_head_dim=12, in_channels=12, out_channels=4,
        text_dim=16, freq_dim=32, ffn_dim=40, num_layers=2, rope_max_seq_len=32, image_dim=8,
        added_kv_proj_dim=24,
    ).eval()  # fmt: skip
    with torch.no_grad():
        for p in transformer.parameters():
            p.normal_(0, 0.3)
    clip = transformers.CLIPVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                                         num_attention_heads=2, image_size=32, patch_size=8,
                                         projection_dim=8)  # fmt: skip
    processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE}
    )
    pipe = diffusers.WanImageToVideoPipeline(
        tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae,
        scheduler=base.scheduler, image_processor=processor,
        image_encoder=transformers.CLIPVisionModel(clip).eval(), transformer=transformer,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("i2v") / "wan-i2v"
    pipe.save_pretrained(path)
    return diffusers.WanImageToVideoPipeline.from_pretrained(path), path


@pytest.mark.parametrize("steps, guidance", [(4, 3.0), (5, 5.0)])
def test_i2v_final_latents_match_diffusers(i2v, steps, guidance):
    ref_pipe, path = i2v
    image = first_frame()
    ref = ref_pipe(image=PIL.Image.fromarray(image.numpy()), prompt=PROMPT, height=SIZE,
                   width=SIZE, num_frames=FRAMES, num_inference_steps=steps,
                   guidance_scale=guidance, latents=noise(steps),
                   output_type="latent").frames  # fmt: skip
    pipe = VideoPipeline.from_pretrained(path)
    assert pipe.dit.takes_image and pipe.dit.config.in_channels == 4
    out = pipe(PROMPT, FRAMES, steps=steps, guidance=guidance, image=image, latents=noise(steps),
               return_latents=True)  # fmt: skip
    err = (out.latents - ref).abs().max().item()
    assert err < TOL, err
    assert out.record.edited and out.record.extra["conditioning"]["kind"] == "image"
    assert out.record.weights_sha256 == pipe.weights_sha256
    # the image branch is used: another image moves the result
    other = pipe(PROMPT, FRAMES, steps=steps, guidance=guidance, image=255 - image,
                 latents=noise(steps), return_latents=True)  # fmt: skip
    assert (other.latents - out.latents).abs().max() > 1e-2


def test_i2v_needs_an_image_and_known_classes(i2v, tmp_path):
    pipe = VideoPipeline.from_pretrained(i2v[1])
    with pytest.raises(InvalidInputError, match="image="):
        pipe(PROMPT, FRAMES, SIZE, SIZE, steps=1)
    bad = _edit(i2v[1], tmp_path / "bad", "model_index.json",
                image_encoder=["transformers", "SiglipVisionModel"])  # fmt: skip
    with pytest.raises(CheckpointError, match="SiglipVisionModel"):
        VideoPipeline.from_pretrained(bad)
