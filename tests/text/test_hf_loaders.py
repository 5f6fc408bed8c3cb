"""Transformers folders → a text denoiser with its spec picked from the config
(`mdiff.text.model.loaders`), through `CodeModel.from_pretrained` and `mdiff complete --model`.
Tiny random models and an offline word-level tokenizer, saved by transformers itself."""

import importlib.util
import json
import sys
import types
from dataclasses import replace

import pytest
import torch
import transformers as T

from mdiff import cli
from mdiff.errors import CheckpointError, InvalidInputError
from mdiff.text.model import loaders
from mdiff.text.model.adapters import HFAdapter, dream_spec, from_masked_lm, llada_spec
from mdiff.text.model.spec import DenoiserSpec
from mdiff.text.pipeline import CodeModel

torch.set_num_threads(1)
WORDS = ["<pad>", "<s>", "</s>", "<mask>", "<unk>", "x", "y", "=", "+", "1", "2", "return",
         "def", "f", "(", ")", ":"]  # fmt: skip
PAD, BOS, EOS, MASK = 0, 1, 2, 3
V = 32  # the model's vocabulary (larger than the tokenizer's, as real checkpoints often are)
SIZES = dict(vocab_size=V, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
             intermediate_size=32, max_position_embeddings=64)  # fmt: skip


def tokenizer(mask=True):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    extra = {"mask_token": "<mask>"} if mask else {}
    return T.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                     eos_token="</s>", unk_token="<unk>", **extra)  # fmt: skip


def save(tmp_path, name, model, tok=None, edit=None):
    """``model`` and a tokenizer saved by transformers; ``edit(config dict)`` rewrites
    config.json afterwards (a Dream-style folder)."""
    folder = tmp_path / name
    torch.manual_seed(0)
    model.eval().save_pretrained(folder)
    (tok or tokenizer()).save_pretrained(folder)
    if edit is not None:
        cfg = json.loads((folder / "config.json").read_text())
        edit(cfg)
        (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def llama():
    torch.manual_seed(0)
    return T.LlamaForCausalLM(T.LlamaConfig(**SIZES, num_key_value_heads=2, pad_token_id=PAD,
                                            bos_token_id=BOS, eos_token_id=EOS))  # fmt: skip


def qwen2():
    torch.manual_seed(1)
    return T.Qwen2ForCausalLM(T.Qwen2Config(**SIZES, num_key_value_heads=1, pad_token_id=PAD,
                                            bos_token_id=BOS, eos_token_id=EOS))  # fmt: skip


def probe():
    x = torch.tensor([[BOS, 5, 7, MASK, MASK, 8, 9]])
    return x, torch.ones_like(x, dtype=torch.bool)


@torch.no_grad()
def test_llama_folder_with_a_mask_token_is_llada_style(tmp_path):
    lm = llama()
    folder = save(tmp_path, "llada", lm)
    loaded = loaders.load_transformers(folder)
    assert (
        loaded.summary == f"{folder}: llama architecture, spec llada (mask {MASK}, bidirectional)"
    )
    spec = loaded.model.spec
    want = replace(
        llada_spec(V, MASK, (EOS,), PAD, BOS),
        supports_cache=True,  # hf_cache
        text_vocab=len(WORDS),
    )  # ids ≥ 17: padded rows, never proposed
    assert spec == want
    x, _ = probe()
    ref = HFAdapter(lm.eval(), spec)(x)  # the same weights, wrapped by hand
    assert torch.equal(loaded.model(x), ref) and loaded.model.mask_4d
    assert loaded.tokenizer.encode("x = 1") == [5, 7, 9] and loaded.tokenizer.vocab_size == V


@torch.no_grad()
def test_qwen2_and_dream_folders_are_dream_style(tmp_path):
    lm = qwen2()
    plain = loaders.load_transformers(save(tmp_path, "qwen2", lm))
    want = replace(
        dream_spec(V, MASK, (EOS,), PAD, BOS), supports_cache=True, text_vocab=len(WORDS)
    )
    assert plain.model.spec == want

    def as_dream(cfg):  # Dream's config: its own model_type, mask id in the config
        cfg.update(model_type="Dream", architectures=["DreamModel"], mask_token_id=MASK)

    folder = save(tmp_path, "dream", lm, tokenizer(mask=False), as_dream)
    dream = loaders.load_transformers(folder)
    assert dream.summary == (f"{folder}: Dream architecture, spec dream (mask {MASK}, "
                             "bidirectional, logits shift 1)")  # fmt: skip
    x, _ = probe()
    assert torch.equal(dream.model(x), plain.model(x))
    assert torch.equal(dream.model(x), HFAdapter(lm.eval(), plain.model.spec)(x))


@torch.no_grad()
@pytest.mark.parametrize(
    "config, cls",
    [(T.BertConfig, T.BertForMaskedLM), (T.RobertaConfig, T.RobertaForMaskedLM),
     (T.ModernBertConfig, T.ModernBertForMaskedLM)],
)  # fmt: skip
def test_masked_lm_folders(tmp_path, config, cls):
    torch.manual_seed(0)
    lm = cls(config(**SIZES, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS))
    folder = save(tmp_path, cls.__name__, lm)
    loaded = loaders.load_transformers(folder)
    mt = lm.config.model_type
    assert (
        loaded.summary
        == f"{folder}: {mt} architecture, spec masked-lm (mask {MASK}, bidirectional)"
    )
    ref = from_masked_lm(lm.eval(), tokenizer())
    assert loaded.model.spec == ref.spec
    x, real = probe()
    assert torch.equal(loaded.model(x, real), ref(x, real))


def test_unknown_or_autoregressive_folders_say_how_to_pass_a_spec(tmp_path):
    ar = save(tmp_path, "ar", llama(), tokenizer(mask=False))
    with pytest.raises(CheckpointError, match="no mask token.*spec=DenoiserSpec"):
        loaders.load_transformers(ar)
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"model_type": "nonsense"}))
    with pytest.raises(CheckpointError, match="nonsense.*spec=DenoiserSpec"):
        loaders.load_transformers(odd)
    with pytest.raises(CheckpointError, match="config.json"):
        loaders.load_transformers(tmp_path / "missing")
    llada = save(  # LLaDA's model_type over Llama's weight names: not LLaDA's layout
        tmp_path,
        "llada-remote",
        llama(),
        edit=lambda c: c.update(model_type="llada", architectures=["LLaDAModelLM"]),
    )
    with pytest.raises(CheckpointError, match="LLaDA config.json lacks.*d_model"):
        loaders.load_transformers(llada)


@torch.no_grad()
def test_a_given_spec_wins(tmp_path):
    folder = save(tmp_path, "ar2", llama(), tokenizer(mask=False))
    spec = DenoiserSpec(V, mask_id=V - 1, eos_ids=(EOS,), attention="causal")
    loaded = loaders.load_transformers(folder, spec=spec)
    assert loaded.model.spec == spec and not loaded.model.mask_4d
    assert "spec given (mask 31, causal)" in loaded.summary


def test_registered_loaders_are_imported_lazily(tmp_path, monkeypatch):
    folder = save(tmp_path, "gemma", llama(), edit=lambda c: c.update(model_type="diffusion_gemma"))
    calls = []

    def load_diffusion_gemma(path, **kw):
        calls.append((path, kw))
        return HFAdapter(llama().eval(), llada_spec(V, MASK, (EOS,), PAD)), None

    fake = types.ModuleType("mdiff.text.model.gemma")
    fake.load_diffusion_gemma = load_diffusion_gemma
    monkeypatch.setitem(sys.modules, "mdiff.text.model.gemma", fake)
    loaded = loaders.load_transformers(folder, dtype="x")
    assert calls == [(folder, {"dtype": "x"})]
    assert "diffusion_gemma architecture, loader mdiff.text.model.gemma" in loaded.summary
    assert loaded.tokenizer.encode("x") == [5]  # the folder's own tokenizer
    llada2 = save(tmp_path, "llada2", llama(), edit=lambda c: c.update(model_type="llada2_moe"))
    monkeypatch.setitem(sys.modules, "mdiff.text.model.llada2", types.ModuleType("empty"))
    with pytest.raises(CheckpointError, match="load_llada2"):
        loaders.load_transformers(llada2)
    loaders.register_loader(
        "toy_dlm_for_tests",
        lambda path, **kw: (
            calls.append(path) or (HFAdapter(llama().eval(), llada_spec(V, MASK)), tokenizer())
        ),
    )
    toy = save(tmp_path, "toy", llama(), edit=lambda c: c.update(model_type="toy_dlm_for_tests"))
    assert loaders.load_transformers(toy).model.spec.mask_id == MASK and calls[-1] == toy
    bare = HFAdapter(llama().eval(), llada_spec(V, MASK))  # a loader returning the model alone
    loaders.register_loader(lambda cfg: cfg.get("model_type") == "toy_bare", lambda p, **kw: bare)
    folder = save(tmp_path, "bare", llama(), edit=lambda c: c.update(model_type="toy_bare"))
    loaded = loaders.load_transformers(folder)
    assert loaded.model is bare and loaded.tokenizer.encode("x y") == [5, 6]


@torch.no_grad()
def test_code_model_and_cli_complete_from_a_transformers_folder(tmp_path, home, capsys):
    folder = save(tmp_path, "llada-cli", llama())
    cm = CodeModel.from_pretrained(folder)
    assert cm.summary.startswith(f"{folder}: llama architecture, spec llada")
    done = cm.fill("x = <FILL> + 1", length=2)
    assert done.text.startswith("x = ") and done.text.endswith(" + 1")
    assert done.record.to_dict()["weights_sha256"] == cm.weights_sha256
    src = tmp_path / "todo.py"
    src.write_text("y = <FILL>\n", encoding="utf-8")
    argv = ["--home", str(home), "complete", str(src), "--model", str(folder), "--length", "2"]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    line = f"mdiff: model {folder}: llama architecture, spec llada (mask {MASK}, bidirectional)"
    assert line in err.splitlines() and out.startswith("y = ")


@torch.no_grad()
def test_rows_past_the_tokenizers_vocabulary_are_never_proposed(tmp_path, home):
    """Real checkpoints pad their embedding past the tokenizer (Qwen2: 152064 rows for 151665
    tokens): those ids have no text. Here the padded rows of the LM head are made to win
    every position; the sampler still picks only the tokenizer's ids."""
    lm = llama()
    lm.lm_head.weight[len(WORDS) :] *= 1000
    folder = save(tmp_path, "padded", lm)
    cm = CodeModel.from_pretrained(folder)
    assert cm.model.spec.text_vocab == len(WORDS) < V
    x, real = probe()
    assert int(cm.model(x, real).argmax(-1).min()) >= len(WORDS)  # what the model prefers
    from mdiff.text.sampling.sampler import generate

    out = generate(cm.model, [[BOS, 5, 7]], gen_length=4, steps=4, temperature=1.0)
    assert int(out.sequences[0, -4:].max()) < len(WORDS)
    assert cm.infill("x = ", " + 1", 3).middles[0].strip()  # its tokens have text
    literal = generate(cm.model, [[BOS, 5, 7]], gen_length=4, steps=4, allow_mask_token=True)
    assert int(literal.sequences[0, -4:].min()) >= len(WORDS)  # LLaDA's own code picks them


def test_folders_that_do_not_add_up_are_refused_at_load(tmp_path):
    torch.manual_seed(0)
    bert = T.BertForMaskedLM(T.BertConfig(**SIZES, pad_token_id=PAD))
    with pytest.raises(CheckpointError, match="bert: the folder's tokenizer names no mask token"):
        loaders.load_transformers(save(tmp_path, "bert-no-mask", bert, tokenizer(mask=False)))
    small = T.LlamaForCausalLM(T.LlamaConfig(**{**SIZES, "vocab_size": 12}, num_key_value_heads=2))
    with pytest.raises(CheckpointError, match="tokenizer has 17 tokens, the model's vocabulary 12"):
        loaders.load_transformers(save(tmp_path, "small", small))


def test_folders_missing_tensors_are_refused_not_started_at_random(tmp_path, home, capsys):
    """A base model without its LM head (sentence-transformers folders) or a config.json with
    more layers than its weights: transformers would fill the gap with random tensors."""
    torch.manual_seed(0)
    base = save(tmp_path, "bert-base", T.BertModel(T.BertConfig(**SIZES, pad_token_id=PAD)))
    with pytest.raises(CheckpointError, match=r"lack \d+ tensor\(s\) BertForMaskedLM.*cls\."):
        loaders.load_transformers(base)

    def deeper(cfg):
        cfg["num_hidden_layers"] = 2

    folder = save(tmp_path, "llama-deeper", llama(), edit=deeper)
    with pytest.raises(CheckpointError, match=r"lack 9 tensor\(s\).*layers\.1\..* and 6 more"):
        loaders.load_transformers(folder)
    src = tmp_path / "todo.py"
    src.write_text("y = <FILL>\n", encoding="utf-8")
    capsys.readouterr()  # saving printed a progress bar
    code = cli.main(["--home", str(home), "complete", str(src), "--model", str(folder)])
    err = capsys.readouterr().err
    assert code == cli.EXIT_ERROR and "lack 9 tensor(s)" in err
    assert [ln for ln in err.splitlines() if "LOAD REPORT" in ln or "MISSING" in ln] == []


def test_tokens_added_without_resizing_the_model_are_named(tmp_path):
    """A mask token (or a word) added to the tokenizer after the model's 17 rows: the mask is
    refused at load, a word past the rows when a text holds it — both saying why."""
    torch.manual_seed(0)
    lm = T.LlamaForCausalLM(T.LlamaConfig(**{**SIZES, "vocab_size": len(WORDS)},
                                          num_key_value_heads=2))  # fmt: skip
    tok = tokenizer(mask=False)
    tok.add_special_tokens({"mask_token": "<|mask|>"})  # id 17, no row
    with pytest.raises(CheckpointError, match="mask token \\(id 17\\) is past the model's 17"):
        loaders.load_transformers(save(tmp_path, "mask-past", lm, tok))
    tok = tokenizer()
    tok.add_tokens(["NEWWORD"])  # id 17
    cm = CodeModel.from_pretrained(save(tmp_path, "word-past", lm, tok))
    assert cm.fill("x = <FILL>", length=2).text.startswith("x = ")
    with pytest.raises(InvalidInputError, match="got 17 — a token the tokenizer has and the"):
        cm.fill("x = NEWWORD + <FILL>", length=2)


@pytest.mark.skipif(importlib.util.find_spec("sentencepiece") is not None,
                    reason="sentencepiece installed: the folder loads")  # fmt: skip
def test_a_sentencepiece_only_tokenizer_says_what_it_needs(tmp_path):
    folder = save(tmp_path, "spm", llama())
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer.model").write_bytes(b"\x0a\x05hello")  # (never read)
    with pytest.raises(CheckpointError, match="SentencePiece model.*pip install sentencepiece"):
        loaders.load_transformers(folder)


@torch.no_grad()
def test_roberta_positions_past_the_padding_offset_bound_the_canvas(tmp_path):
    """RoBERTa's positions start at padding_idx + 1 (here 1; roberta-base's 2 of 514): of 34
    position rows, 33 are a canvas's."""
    torch.manual_seed(0)
    lm = T.RobertaForMaskedLM(T.RobertaConfig(**{**SIZES, "max_position_embeddings": 34},
                                              pad_token_id=PAD))  # fmt: skip
    cm = CodeModel.from_pretrained(save(tmp_path, "roberta-34", lm))
    prefix = "x = 1 + " * 20  # 80 tokens: cut to the window's
    done = cm.infill(prefix, " + 2", 4)
    assert done.text == prefix + done.middles[0] + " + 2"
    with pytest.raises(InvalidInputError, match="does not fit the model's 33 positions"):
        cm.infill("x = ", "\n", 40)
    done = cm.generate(prefix, 6)  # the prompt's last 27 tokens are read
    assert done.text.startswith(prefix)  # (before: an IndexError from the position table)
    with pytest.raises(InvalidInputError, match="no room for the prompt in the model's 33"):
        cm.generate("x = ", 33)


def test_code_model_infill_fills_one_hole_and_says_where_batches_go(tmp_path):
    cm = CodeModel.from_pretrained(save(tmp_path, "one", llama()))
    with pytest.raises(InvalidInputError, match="prefix must be a str.*infilling.infill"):
        cm.infill(["x = ", "y = "], ["\n", "\n"], 2)


def test_cli_refuses_a_folder_it_cannot_run_in_one_line(tmp_path, home, capsys):
    folder = save(tmp_path, "plain-ar", llama(), tokenizer(mask=False))
    src = tmp_path / "todo.py"
    src.write_text("y = <FILL>\n", encoding="utf-8")
    capsys.readouterr()  # saving printed a progress bar
    code = cli.main(["--home", str(home), "complete", str(src), "--model", str(folder)])
    err = capsys.readouterr().err
    assert code == cli.EXIT_ERROR and "no mask token" in err and err.count("\n") == 1


@torch.no_grad()
def test_trust_remote_code_reaches_the_folder_loader_from_sdk_and_cli(tmp_path, home, monkeypatch):
    seen = []

    def load_llada2(path, **kw):  # stands in for LLaDA 2's loader (its class is remote code)
        seen.append(kw)
        return HFAdapter(llama().eval(), llada_spec(V, MASK, (EOS,), PAD)), tokenizer()

    fake = types.ModuleType("mdiff.text.model.llada2")
    fake.load_llada2 = load_llada2
    monkeypatch.setitem(sys.modules, "mdiff.text.model.llada2", fake)
    folder = save(tmp_path, "l2", llama(), edit=lambda c: c.update(model_type="llada2_moe"))
    CodeModel.from_pretrained(folder)
    CodeModel.from_pretrained(folder, trust_remote_code=True)
    src = tmp_path / "todo.py"
    src.write_text("y = <FILL>\n", encoding="utf-8")
    argv = ["--home", str(home), "complete", str(src), "--model", str(folder), "--length", "2"]
    assert cli.main([*argv, "--trust-remote-code"]) == 0
    assert seen == [{}, {"trust_remote_code": True}, {"trust_remote_code": True}]
    plain = save(tmp_path, "plain", llama())  # transformers' own class: the flag changes nothing
    assert CodeModel.from_pretrained(plain, trust_remote_code=True).model.spec.mask_id == MASK
