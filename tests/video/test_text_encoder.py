"""Text encoders: the transformers wrapper (tiny random T5 / CLIP, local tokenizers), the null
embedding, the built-in shapes word encoder, save/load, and bad inputs."""

import json
import logging

import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
)

from mdiff.errors import CheckpointError, InvalidInputError
from mdiff.video.data import ShapesDataset
from mdiff.video.text_encoders import (
    ShapesTextEncoder,
    ShapesTextEncoderConfig,
    drop_captions,
    shapes_vocabulary,
)
from mdiff.video.text_encoders.hf import HFTextEncoder

SENTENCES = [
    "a red circle moving left on a black background",
    "a small blue square bouncing around",
    "a green triangle sinking down over a gray backdrop",
    "hello world this is a tiny tokenizer",
]
PROMPTS = ["a red circle moving left", "blue square", "a green triangle bouncing around on a gray"]


def word_tokenizer() -> PreTrainedTokenizerFast:
    """A local WordLevel tokenizer that appends </s> (like T5's)."""
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["[PAD]", "[UNK]", "</s>"]
    tok.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="</s>"
    )


def clip_text_config(vocab_size: int) -> dict:
    return dict(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=24, pad_token_id=0, eos_token_id=2,
        bos_token_id=2,
    )  # fmt: skip


def tiny_model(kind: str, vocab_size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "t5":
        config = T5Config(vocab_size=vocab_size, d_model=32, num_layers=2, num_heads=2, d_kv=16,
                          d_ff=64, decoder_start_token_id=0)  # fmt: skip
        return T5EncoderModel(config)
    return CLIPTextModel(CLIPTextConfig(**clip_text_config(vocab_size)))


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


@pytest.fixture(params=["t5", "clip"])
def hf(request, tokenizer):
    model = tiny_model(request.param, tokenizer.vocab_size)
    return HFTextEncoder(model, tokenizer, max_length=16, null_length=3), model


def shapes_encoder(**overrides) -> ShapesTextEncoder:
    torch.manual_seed(0)
    return ShapesTextEncoder(ShapesTextEncoderConfig(dim=32, heads=2, **overrides))


# ---------------------------------------------------------------- transformers wrapper


def test_hf_gives_last_hidden_state_and_padding_mask(hf, tokenizer):
    encoder, model = hf
    emb, mask = encoder.encode(PROMPTS)
    batch = tokenizer(PROMPTS, padding="longest", return_tensors="pt")
    with torch.no_grad():
        ref = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    ref = ref.last_hidden_state
    assert emb.shape == ref.shape == (3, batch["input_ids"].shape[1], 32) and encoder.dim == 32
    assert torch.equal(mask, batch["attention_mask"].bool())
    assert mask.sum(1).tolist() == [6, 3, 9]  # words + </s>
    assert torch.equal(emb[mask], ref[mask])
    assert torch.all(emb[~mask] == 0) and emb.dtype == torch.float32


def test_hf_model_is_frozen_and_no_grads_flow_into_it(hf):
    encoder, model = hf
    encoder.train()
    assert not model.training and encoder.frozen
    assert all(not p.requires_grad for p in model.parameters())
    assert [n for n, p in encoder.named_parameters() if p.requires_grad] == ["null_embedding"]
    emb, mask = encoder.encode(["a red circle", ""])
    (emb * mask[..., None]).pow(2).sum().backward()
    assert all(p.grad is None for p in model.parameters())
    assert encoder.null_embedding.grad is not None and encoder.null_embedding.grad.abs().sum() > 0
    assert not encoder.encode(["a red circle"])[0].requires_grad


def test_hf_from_pretrained_picks_the_text_encoder_by_model_type(tmp_path, tokenizer):
    torch.manual_seed(0)
    full = CLIPModel(CLIPConfig(
        text_config=clip_text_config(tokenizer.vocab_size), projection_dim=16,
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=8, patch_size=4),
    ))  # fmt: skip
    full.save_pretrained(tmp_path / "clip")
    tokenizer.save_pretrained(tmp_path / "clip")
    encoder = HFTextEncoder.from_pretrained(tmp_path / "clip", max_length=12)
    assert type(encoder.model) is CLIPTextModel and encoder.max_length == 12
    emb, mask = encoder.encode(PROMPTS)
    batch = tokenizer(PROMPTS, padding="longest", return_tensors="pt")
    with torch.no_grad():
        ref = full.text_model(**batch).last_hidden_state
    assert torch.equal(emb[mask], ref[mask])

    t5 = tiny_model("t5", tokenizer.vocab_size)
    t5.save_pretrained(tmp_path / "t5")
    tokenizer.save_pretrained(tmp_path / "t5")
    assert type(HFTextEncoder.from_pretrained(tmp_path / "t5").model) is T5EncoderModel
    with pytest.raises(CheckpointError):
        HFTextEncoder.from_pretrained(tmp_path / "missing")


def test_hf_save_pretrained_round_trip_keeps_null_and_settings(tmp_path, hf):
    encoder, _ = hf
    with torch.no_grad():
        encoder.null_embedding.add_(1.0)
    encoder.truncation = False
    encoder.save_pretrained(tmp_path / "enc")
    loaded = HFTextEncoder.from_pretrained(tmp_path / "enc")
    assert (loaded.max_length, loaded.null_length, loaded.truncation) == (16, 3, False)
    assert torch.equal(loaded.null_embedding, encoder.null_embedding)
    for (a, ma), (b, mb) in [(encoder.encode(PROMPTS + [""]), loaded.encode(PROMPTS + [""]))]:
        assert torch.equal(ma, mb) and torch.equal(a, b)


# ---------------------------------------------------------------- null embedding


@pytest.mark.parametrize("make", ["hf", "shapes"])
def test_null_embedding_is_a_parameter_of_the_requested_shape(make, tokenizer):
    if make == "hf":
        encoder = HFTextEncoder(tiny_model("t5", tokenizer.vocab_size), tokenizer, null_length=5)
    else:
        encoder = shapes_encoder(null_length=5)
    assert isinstance(encoder.null_embedding, torch.nn.Parameter)
    assert encoder.null_embedding.requires_grad
    assert dict(encoder.named_parameters())["null_embedding"].shape == (5, 32)
    emb, mask = encoder.null(3)
    assert emb.shape == (3, 5, 32) and mask.shape == (3, 5) and bool(mask.all())
    assert torch.equal(emb[1], encoder.null_embedding)
    for empty in ["", "   ", "\n"]:
        e, m = encoder.encode([empty])
        assert torch.equal(e, emb[:1]) and torch.equal(m, mask[:1])
    e, m = encoder.encode(["a red circle moving left on a black background", ""])
    assert torch.equal(e[1, :5], encoder.null_embedding) and m[1].sum() == 5
    assert not torch.equal(e[0, :5], encoder.null_embedding)
    with pytest.raises(InvalidInputError):
        encoder.null(0)


def test_drop_captions():
    prompts = [f"prompt {i}" for i in range(200)]
    assert drop_captions(prompts, 0.0) == prompts
    assert drop_captions(prompts, 1.0) == [""] * 200
    a = drop_captions(prompts, 0.3, torch.Generator().manual_seed(1))
    assert a == drop_captions(prompts, 0.3, torch.Generator().manual_seed(1))
    assert 30 < a.count("") < 90 and all(x in ("", p) for x, p in zip(a, prompts, strict=True))


# ---------------------------------------------------------------- shapes encoder


def test_shapes_vocabulary_covers_every_caption():
    encoder = shapes_encoder()
    ds = ShapesDataset(seed=0)
    captions = [ds.truth(i).caption for i in range(200)]
    ids, mask = encoder.tokenize(captions)
    assert mask.shape[1] <= encoder.max_length
    assert not bool((ids[mask] == 1).any())  # no [UNK]
    assert bool((ids[~mask] == 0).all())
    assert mask.sum(1).tolist() == [len(c.replace(",", " ").split()) for c in captions]
    unknown, _ = encoder.tokenize(["a red zebra"])
    assert unknown[0].tolist() == [encoder.ids["a"], encoder.ids["red"], 1]
    a, _ = encoder.tokenize(["A RED circle,  moving LEFT!"])
    b, _ = encoder.tokenize(["a red circle moving left"])
    assert torch.equal(a, b)
    assert len(set(shapes_vocabulary())) == len(shapes_vocabulary())


def test_shapes_encoder_is_deterministic_and_batch_independent():
    a, b = shapes_encoder(), shapes_encoder()
    prompts = ["a red circle moving left", "a large purple triangle bouncing off the walls"]
    (ea, ma), (eb, mb) = a.encode(prompts), b.encode(prompts)
    assert torch.equal(ea, eb) and torch.equal(ma, mb) and ea.shape == (2, 8, 32)
    alone, m = a.encode(prompts[:1])
    assert m.shape == (1, 5) and torch.allclose(alone[0], ea[0, :5], atol=1e-6)
    assert not torch.allclose(ea[0, :5], ea[1, :5])


@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_shapes_encoder_masks_padding(positions):
    encoder = shapes_encoder(positions=positions)
    ids, mask = encoder.tokenize(["blue square", "a small blue square bouncing around"])
    ref = encoder.embed_ids(ids, mask)
    noisy = torch.where(mask, ids, torch.randint(0, len(encoder.config.vocab), ids.shape))
    assert not torch.equal(noisy, ids)
    out = encoder.embed_ids(noisy, mask)
    assert torch.allclose(out[mask], ref[mask], atol=1e-6, rtol=0)
    emb, m = encoder.encode(["blue square", "a small blue square bouncing around"])
    assert torch.all(emb[~m] == 0) and torch.equal(m, mask)


def test_shapes_encoder_trains_until_frozen():
    encoder = shapes_encoder()
    emb, _ = encoder.encode(["a red circle"])
    emb.sum().backward()
    assert encoder.embed.weight.grad is not None
    encoder.zero_grad(set_to_none=True)
    encoder.freeze().train()
    assert all(not m.training for m in encoder.children())
    emb, _ = encoder.encode(["a red circle", ""])
    emb.sum().backward()
    assert all(p.grad is None for n, p in encoder.named_parameters() if n != "null_embedding")
    assert encoder.null_embedding.grad is not None


@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_shapes_save_load_round_trip(tmp_path, positions):
    vocab = ("[PAD]", "[UNK]", "zebra", "a", "red", "quickly")
    encoder = shapes_encoder(vocab=vocab, positions=positions, max_length=8, null_length=2)
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    encoder.save_pretrained(tmp_path / "enc")
    saved = json.loads((tmp_path / "enc" / "config.json").read_text())
    assert tuple(saved["vocab"]) == vocab
    loaded = ShapesTextEncoder.from_pretrained(tmp_path / "enc")
    assert loaded.config == encoder.config and loaded.ids == encoder.ids
    sa, sb = encoder.state_dict(), loaded.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    prompts = ["a red zebra, quickly!", "", "red"]
    encoder.eval()
    (ea, ma), (eb, mb) = encoder.encode(prompts), loaded.encode(prompts)
    assert torch.equal(ea, eb) and torch.equal(ma, mb)
    assert encoder.tokenize(["a red cat"])[0].tolist() == [[3, 4, 1]]


def test_shapes_encoder_dtype():
    encoder = shapes_encoder().to(torch.float64)
    emb, _ = encoder.encode(["a red circle", ""])
    assert emb.dtype == torch.float64 and encoder.dtype == torch.float64


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("make", ["hf", "shapes"])
def test_bad_inputs_raise(make, tokenizer, caplog):
    if make == "hf":
        model = tiny_model("t5", tokenizer.vocab_size)
        encoder = HFTextEncoder(model, tokenizer, max_length=4, truncation=False)
    else:
        encoder = shapes_encoder(max_length=4, truncation=False)
    for bad in ([], (), None, 3, [1], ["a red circle", None], [b"bytes"]):
        with pytest.raises(InvalidInputError):
            encoder.encode(bad)
    long = "a red circle moving left on a black background"
    with pytest.raises(InvalidInputError, match="max_length"):
        encoder.encode([long])
    encoder.truncation = True
    with caplog.at_level(logging.WARNING):
        emb, mask = encoder.encode([long, "red"])
    assert mask.shape == (2, 4) and mask[0].all() and "truncated" in caplog.text


def test_bad_configs_raise(tokenizer):
    with pytest.raises(InvalidInputError):
        ShapesTextEncoderConfig(vocab=("a", "[PAD]", "[UNK]"))
    with pytest.raises(InvalidInputError):
        ShapesTextEncoderConfig(vocab=("[PAD]", "[UNK]", "Red"))
    with pytest.raises(InvalidInputError):
        ShapesTextEncoderConfig(positions="sinusoidal")
    no_pad = word_tokenizer()
    no_pad.pad_token = None
    with pytest.raises(InvalidInputError, match="pad"):
        HFTextEncoder(tiny_model("t5", tokenizer.vocab_size), no_pad)
