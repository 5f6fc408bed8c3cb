"""`WanTransformer` against diffusers' own `WanTransformer3DModel` (0.42.1): forward parity in
float32 on tiny random configs, folders both ways, the fp32-kept parameters, the original Wan
key layout, and input/config errors."""

from __future__ import annotations

import json

import pytest
import torch

from mdiff.errors import CheckpointError, InvalidInputError
from mdiff.video.dit.wan import WanTransformer, WanTransformerConfig
from mdiff.video.dit.wan_blocks import collapse_padding
from mdiff.video.dit.wan_keys import config_from_original, from_original, to_original

diffusers = pytest.importorskip("diffusers")
from diffusers import WanTransformer3DModel  # noqa: E402

TOL = 1e-5
BASE = dict(num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
            text_dim=16, freq_dim=32, ffn_dim=40, num_layers=2, rope_max_seq_len=32)  # fmt: skip


def _pair(seed=0, **overrides):
    """diffusers' model with random weights (std 0.3 everywhere) and ours loaded from it."""
    kw = {**BASE, **overrides}
    torch.manual_seed(seed)
    ref = WanTransformer3DModel(**kw).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.3)
    ours = WanTransformer(WanTransformerConfig(**kw)).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def _inputs(b, c, frames, h, w, s=5, text_dim=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, frames, h, w, generator=g)
    text = torch.randn(b, s, text_dim, generator=g)
    t = torch.rand(b, generator=g)
    return x, t, text


def _check(ref, ours, x, t, text, image=None, ref_image=None):
    """Ours (t, velocity) vs diffusers ((1 - t)·1000, −velocity); forward_diffusers vs theirs.
    Returns the larger of the two max abs errors."""
    ref_image = image if ref_image is None else ref_image
    ts = (1 - t) * 1000
    with torch.no_grad():
        theirs = ref(x, ts, text, encoder_hidden_states_image=ref_image, return_dict=False)[0]
        mine = ours(x, t, text, image=image)
        direct = ours.forward_diffusers(x, ts, text, ref_image)
    assert mine.shape == theirs.shape
    err = max((mine + theirs).abs().max().item(), (direct - theirs).abs().max().item())
    assert err <= TOL, err
    assert theirs.abs().max() > 0.1  # not a trivially small output
    return err


@pytest.mark.parametrize(
    "overrides, shape",
    [
        (dict(), (2, 3, 6, 8)),  # 2 heads, 2 layers, (1,2,2), non-square
        (dict(num_attention_heads=1, num_layers=1, attention_head_dim=16), (1, 1, 4, 4)),
        (dict(num_attention_heads=3, num_layers=3, cross_attn_norm=False), (1, 2, 4, 10)),
        (dict(patch_size=(2, 2, 2)), (2, 4, 6, 4)),
        (dict(patch_size=(1, 4, 4), attention_head_dim=8, out_channels=6), (1, 3, 8, 12)),
    ],
)
def test_forward_parity_with_diffusers(overrides, shape):
    ref, ours = _pair(**overrides)
    b, frames, h, w = shape
    x, t, text = _inputs(b, ref.config.in_channels, frames, h, w)
    _check(ref, ours, x, t, text)


def test_i2v_parity_with_diffusers():
    """Wan 2.1 I2V: in_channels 36 (latent + mask + conditioning), CLIP image tokens through
    image_embedder and a second key/value set. diffusers splits its context at 512 text tokens,
    so the text has 512."""
    ref, ours = _pair(in_channels=36, out_channels=16, image_dim=8, added_kv_proj_dim=24)
    x, t, text = _inputs(2, 36, 2, 4, 6, s=512)
    image = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(3))
    _check(ref, ours, x, t, text, image=image)
    with pytest.raises(InvalidInputError, match="needs image"):
        ours(x, t, text)


def test_flf2v_parity_with_diffusers():
    """First/last-frame: a learned position table over both images' tokens; diffusers takes the
    two images as (2B, L, E), ours as (B, 2L, E)."""
    ref, ours = _pair(image_dim=8, added_kv_proj_dim=24, pos_embed_seq_len=6)
    with torch.no_grad():
        ref.condition_embedder.image_embedder.pos_embed.normal_()
    ours.load_state_dict(ref.state_dict())
    x, t, text = _inputs(1, 4, 2, 4, 4, s=512)
    pair = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(4))  # first, last
    _check(ref, ours, x, t, text, image=pair.reshape(1, 6, 8), ref_image=pair)


def test_ti2v_per_token_timesteps():
    """Wan 2.2 TI2V: a timestep per token (the conditioning frame's tokens clean). Ours takes t
    per token (B, N) or per latent frame (B, T); both equal diffusers' (B, N) path."""
    ref, ours = _pair(patch_size=(1, 2, 2), num_layers=2)
    b, frames, h, w = 2, 3, 4, 6
    x, t, text = _inputs(b, 4, frames, h, w)
    per_frame = t[:, None].repeat(1, frames)
    per_frame[:, 0] = 1.0  # the first latent frame is data (the image)
    n_hw = (h // 2) * (w // 2)
    per_token = per_frame.repeat_interleave(n_hw, dim=1)  # (B, N)
    ts = (1 - per_token) * 1000
    with torch.no_grad():
        theirs = ref(x, ts, text, return_dict=False)[0]
        by_token = ours(x, per_token, text)
        by_frame = ours(x, per_frame, text)
        direct = ours.forward_diffusers(x, ts, text)
        uniform = ref(x, (1 - t) * 1000, text, return_dict=False)[0]
    for mine in (-by_token, -by_frame, direct):
        assert (mine - theirs).abs().max() <= TOL
    assert (theirs - uniform).abs().max() > 1e-2  # the per-token path changes the output


def test_text_mask_is_wans_zero_padding():
    ref, ours = _pair()
    x, t, text = _inputs(2, 4, 1, 4, 4, s=6)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 3:] = False
    padded = text * mask[..., None]
    with torch.no_grad():
        theirs = ref(x, (1 - t) * 1000, padded, return_dict=False)[0]
        mine = ours(x, t, text, text_mask=mask)
    assert (mine + theirs).abs().max() <= TOL


@pytest.mark.parametrize("real", [(3, 7), (0, 5), (40, 2), (1, 1)])
def test_zero_padded_text_is_collapsed_exactly(real):
    """Wan's 512-row zero padding: ours cuts the trailing zero rows to one weighted key; the
    output still equals diffusers', which attends to every padded row (rows with no padding,
    all padding, and equal lengths included)."""
    ref, ours = _pair()
    x, t, text = _inputs(2, 4, 2, 4, 6, s=40)
    for row, n in enumerate(real):
        text[row, n:] = 0
    kept, bias = collapse_padding(text)
    n_max = max(real)
    assert kept.shape[1] == (40 if n_max >= 39 else n_max + 1)
    assert (bias is None) == (n_max >= 39)
    _check(ref, ours, x, t, text)
    if bias is not None:  # the weights matter: without them the output moves
        with torch.no_grad():
            ts = (1 - t) * 1000
            theirs = ref(x, ts, text, return_dict=False)[0]
            unweighted = ref(x, ts, kept, return_dict=False)[0]
        assert (unweighted - theirs).abs().max() > 1e-3


def test_folders_both_ways_and_sharded(tmp_path):
    ref, ours = _pair(image_dim=8, added_kv_proj_dim=24)
    ref.save_pretrained(tmp_path / "theirs")
    ref.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert list((tmp_path / "sharded").glob("*.index.json"))
    ours.save_pretrained(tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["_class_name"] == "WanTransformer3DModel"
    assert (tmp_path / "ours" / "diffusion_pytorch_model.safetensors").is_file()
    reread = WanTransformer3DModel.from_pretrained(tmp_path / "ours").eval()
    x, t, text = _inputs(1, 4, 2, 4, 4, s=512)
    image = torch.randn(1, 3, 8)
    for folder in ("theirs", "sharded"):
        loaded = WanTransformer.from_pretrained(tmp_path / folder)
        _check(ref, loaded, x, t, text, image=image)
    _check(reread, ours, x, t, text, image=image)


def test_cast_keeps_the_parameters_diffusers_keeps_in_fp32(tmp_path):
    ref, _ = _pair(image_dim=8, added_kv_proj_dim=24)
    ref.save_pretrained(tmp_path / "m")
    theirs = WanTransformer3DModel.from_pretrained(tmp_path / "m", torch_dtype=torch.bfloat16)
    ours = WanTransformer.from_pretrained(tmp_path / "m", dtype=torch.bfloat16)
    want = {k: v.dtype for k, v in theirs.state_dict().items()}
    got = {k: v.dtype for k, v in ours.state_dict().items()}
    assert got == want
    assert torch.float32 in got.values() and torch.bfloat16 in got.values()
    x, t, text = _inputs(1, 4, 2, 4, 4, s=512)
    x, text, image = x.bfloat16(), text.bfloat16(), torch.randn(1, 3, 8).bfloat16()
    with torch.no_grad():
        a = theirs(x, (1 - t) * 1000, text, image, return_dict=False)[0].float()
        b = ours.forward_diffusers(x, (1 - t) * 1000, text, image).float()
    assert (a - b).abs().max() <= 1e-3 * a.abs().max()  # measured: 0 on CPU


def test_config_errors_name_the_problem(tmp_path):
    ref, _ = _pair()
    ref.save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    good = json.loads(path.read_text())
    for change, message in [
        ({"window_size": [-1, -1]}, "window_size"),
        ({"_class_name": "WanVACETransformer3DModel"}, "WanVACETransformer3DModel"),
        ({"qk_norm": "rms_norm"}, "qk_norm"),
        ({"image_dim": 8}, "added_kv_proj_dim"),
    ]:
        path.write_text(json.dumps({**good, **change}))
        with pytest.raises(CheckpointError, match=message):
            WanTransformer.from_pretrained(tmp_path / "m")


def test_bad_input_is_refused():
    _, ours = _pair()
    x, t, text = _inputs(1, 4, 2, 4, 4)
    with pytest.raises(InvalidInputError, match="channels"):
        ours(x[:, :3], t, text)
    with pytest.raises(InvalidInputError, match="multiples of patch_size"):
        ours(x[..., :3], t, text)
    with pytest.raises(InvalidInputError, match="text_dim"):
        ours(x, t, text[..., :8])
    with pytest.raises(InvalidInputError, match="no image branch"):
        ours(x, t, text, image=torch.randn(1, 2, 8))
    with pytest.raises(InvalidInputError, match="rope_max_seq_len"):
        ours(torch.randn(1, 4, 1, 66, 4), t, text)


def test_original_wan_layout_round_trip():
    """Our (diffusers) names -> Wan's `wan/modules/model.py` names -> back, checked against
    diffusers' own single-file converter; a model loaded from the original layout (with its
    `model.diffusion_model.` prefix) gives the same outputs."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    ref, ours = _pair(image_dim=8, added_kv_proj_dim=24, pos_embed_seq_len=6)
    state = ours.state_dict()
    original = to_original(state)
    for name in ["patch_embedding.weight", "text_embedding.0.weight", "time_embedding.2.bias",
                 "time_projection.1.weight", "blocks.1.self_attn.q.weight",
                 "blocks.0.self_attn.norm_q.weight", "blocks.0.cross_attn.k_img.weight",
                 "blocks.0.cross_attn.norm_k_img.weight", "blocks.1.modulation",
                 "blocks.0.ffn.0.weight", "blocks.0.norm3.weight", "head.head.weight",
                 "head.modulation", "img_emb.proj.1.weight", "img_emb.proj.4.bias",
                 "img_emb.emb_pos"]:  # fmt: skip
        assert name in original, name
    assert set(original) == set(to_original(from_original(original)))
    wrapped = {f"model.diffusion_model.{k}": v for k, v in original.items()}
    theirs = convert_wan_transformer_to_diffusers(dict(wrapped))
    theirs.pop("img_emb.emb_pos")  # their converter has no rule for the FLF2V table
    assert set(theirs) == set(state) - {"condition_embedder.image_embedder.pos_embed"}
    back = from_original(wrapped)
    assert all(torch.equal(back[k], v) for k, v in state.items())
    loaded = WanTransformer(ours.config).eval()
    loaded.load_state_dict(back, strict=True)
    x, t, text = _inputs(1, 4, 2, 4, 4, s=4)
    image = torch.randn(1, 6, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x, t, text, image=image), ours(x, t, text, image=image))
    with pytest.raises(CheckpointError, match="blocks.0.self_attn.qq.weight"):
        from_original({"blocks.0.self_attn.qq.weight": torch.zeros(1)})


def test_original_config():
    kw = config_from_original(
        {"_class_name": "WanModel", "dim": 1536, "eps": 1e-06, "ffn_dim": 8960, "freq_dim": 256,
         "in_dim": 36, "model_type": "i2v", "num_heads": 12, "num_layers": 30, "out_dim": 16,
         "text_len": 512}
    )  # fmt: skip
    config = WanTransformerConfig(**kw)
    assert (config.attention_head_dim, config.image_dim, config.added_kv_proj_dim) == (
        128,
        1280,
        1536,
    )
    with pytest.raises(CheckpointError):
        config_from_original({"dim": 8})


def test_wan_ai_release_folder_loads(tmp_path):
    """A folder as Wan-AI ship it: `_class_name` "WanModel", original config keys and
    parameter names in diffusion_pytorch_model.safetensors; the CLIP branch read off the
    weights."""
    from mdiff.hub import save_state_dict

    ref, ours = _pair(image_dim=8, added_kv_proj_dim=24, in_channels=36, out_channels=16)
    folder = tmp_path / "Wan2.1-I2V-tiny"
    folder.mkdir()
    save_state_dict(to_original(ours.state_dict()), folder / "diffusion_pytorch_model.safetensors")
    c = ours.config
    (folder / "config.json").write_text(json.dumps({
        "_class_name": "WanModel", "_diffusers_version": "0.30.0", "dim": c.inner_dim,
        "eps": c.eps, "ffn_dim": c.ffn_dim, "freq_dim": c.freq_dim, "in_dim": 36,
        "model_type": "i2v", "num_heads": c.num_attention_heads, "num_layers": c.num_layers,
        "out_dim": 16, "text_len": 512, "text_dim": c.text_dim,
    }))  # fmt: skip
    loaded = WanTransformer.from_pretrained(folder)
    assert loaded.config.image_dim == 8 and loaded.config.pos_embed_seq_len is None
    x, t, text = _inputs(1, 36, 2, 4, 4, s=512)
    _check(ref, loaded, x, t, text, image=torch.randn(1, 3, 8))
    raw = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**raw, "window_size": [4, 4]}))
    with pytest.raises(CheckpointError, match="window_size"):
        WanTransformer.from_pretrained(folder)


def test_self_forcing_checkpoint_through_convert(tmp_path):
    """A Self-Forcing-style .pt (original Wan names under generator_ema, with a `model.`
    prefix) -> `mdiff convert` -> safetensors -> `from_original` -> the same model."""
    from mdiff.convert import convert
    from mdiff.hub import load_state_dict

    _, ours = _pair()
    original = {f"model.{k}": v for k, v in to_original(ours.state_dict()).items()}
    noise = {k: torch.zeros_like(v) for k, v in original.items()}
    torch.save({"generator": noise, "generator_ema": original}, tmp_path / "sf.pt")
    out = convert(tmp_path / "sf.pt", tmp_path / "sf.safetensors", key="generator_ema")
    loaded = WanTransformer(ours.config).eval()
    loaded.load_state_dict(from_original(load_state_dict(out), prefix="model."))
    x, t, text = _inputs(1, 4, 2, 4, 4)
    with torch.no_grad():
        assert torch.equal(loaded(x, t, text), ours(x, t, text))


def test_rope_frame_offset_shifts_time_only():
    """frame_offset k gives the RoPE rows of token frames k… of a longer grid (streamed
    chunks keep absolute time); height and width rows start at 0."""
    _, ours = _pair()
    cos_full, sin_full = ours.rope((5, 2, 3), "cpu")
    cos, sin = ours.rope((2, 2, 3), "cpu", frame_offset=3)
    assert torch.equal(cos, cos_full[3 * 6 :]) and torch.equal(sin, sin_full[3 * 6 :])
    assert cos.shape == (12, ours.config.attention_head_dim // 2)
