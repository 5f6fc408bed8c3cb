"""A DiffusionGemma folder (transformers' save_pretrained + a tokenizer) through the user-facing
entry: `CodeModel.from_pretrained(dir)` → `GemmaCodeModel` (generate, infill, fill, watermark,
record, signed save) and `loaders.load_transformers`."""

import string

import pytest
import torch

from mdiff.errors import InvalidInputError
from mdiff.text.model import loaders
from mdiff.text.model.gemma import DiffusionGemmaLM
from mdiff.text.pipeline import CodeModel
from mdiff.text.sampling.gemma_code import MODEL_EOS, GemmaCodeModel
from mdiff.text.sampling.gemma_fim import infill_gemma
from mdiff.text.sampling.gemma_runner import generate_gemma

from .test_diffusion_gemma import BOS, V, build

pytest.importorskip("tokenizers")


def char_tokenizer():
    """A character-level fast tokenizer of exactly V ids: <pad> 0, <eos> 1, <bos> 2, chars."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    chars = [c for c in " \n" + string.ascii_letters + string.digits + string.punctuation
             if c not in "`~^"]  # fmt: skip
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    assert len(vocab) == V
    t = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    t.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", eos_token="<eos>",
                                   bos_token="<bos>")  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("dg-folder")
    build().save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def cm(folder, home):
    return CodeModel.from_pretrained(folder)


def test_from_pretrained_picks_the_gemma_driver(folder, cm):
    assert type(cm) is GemmaCodeModel and isinstance(cm.model, DiffusionGemmaLM)
    assert "diffusion_gemma" in cm.summary and "canvas 8" in cm.summary
    loaded = loaders.load_transformers(folder)
    assert isinstance(loaded.model, DiffusionGemmaLM) and loaded.tokenizer.vocab_size == V


def test_generate_is_the_runner_with_watermark_and_record(cm):
    prompt = "def add(a, b):\n"
    done = cm.generate(prompt, gen_length=16, seed=3, steps=4)
    ids = [BOS, *cm.tokenizer.encode(prompt)]
    ref = generate_gemma(cm.model, [ids], seed=3, max_new_tokens=16, max_denoising_steps=4,
                         eos=MODEL_EOS, watermark=cm.watermark)  # fmt: skip
    new = ref.sequences[0, len(ids) :].tolist()
    new = new[: new.index(1)] if 1 in new else new
    assert done.text == prompt + cm.tokenizer.decode(new, skip_special_tokens=True)
    assert done.spans == [(len(prompt), len(done.text))] and done.nfe == ref.nfe
    assert done.record.sampler.startswith("mdiff.text/diffusion_gemma")
    plain = generate_gemma(cm.model, [ids], seed=3, max_new_tokens=16, max_denoising_steps=4,
                           eos=MODEL_EOS)  # fmt: skip
    assert plain.sequences.tolist() != ref.sequences.tolist()  # the watermark biased it


def test_infill_and_fill_splice_the_users_text(cm, tmp_path):
    prefix, suffix = "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"
    done = cm.infill(prefix, suffix, 6, seed=1, steps=4)
    r = infill_gemma(cm.model, [BOS, *cm.tokenizer.encode(prefix)], cm.tokenizer.encode(suffix),
                     6, seed=1, steps=4, watermark=cm.watermark)  # fmt: skip
    middle = cm.tokenizer.decode(r.middle, skip_special_tokens=True)
    assert done.text == prefix + middle + suffix and done.middles == [middle]
    text = "x = <FILL>\ny = <FILL>\n"
    filled = cm.fill(text, length=4, seed=2, steps=3)
    (s0, e0), (s1, e1) = filled.spans
    assert filled.text[:s0] == "x = " and filled.text[e0:s1] == "\ny = "
    assert filled.text[e1:] == "\n" and filled.middles == [filled.text[s0:e0],
                                                             filled.text[s1:e1]]  # fmt: skip
    assert filled.record.to_dict()  # a record was made
    out = filled.save(tmp_path / "filled.py")
    assert out.read_text() == filled.text and (tmp_path / "filled.py.c2pa").is_file()
    with pytest.raises(InvalidInputError, match="markers"):
        cm.fill("no holes here")
    with pytest.raises(InvalidInputError, match="prompt"):
        cm.generate(42)


def test_mdiff_complete_with_a_gemma_folder(folder, home, tmp_path, capsys):
    from mdiff import cli
    from mdiff.provenance.verify import verify

    src = tmp_path / "todo.py"
    src.write_text("def f(x):\n    return <FILL>\n\n\ny = f(2)\n", encoding="utf-8")
    out = tmp_path / "done.py"
    argv = ["--home", str(home), "complete", str(src), "--model", str(folder), "--length", "4",
            "--steps", "3", "-o", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    assert "diffusion_gemma" in capsys.readouterr().err
    text = out.read_text(encoding="utf-8")
    assert text.startswith("def f(x):\n    return ") and text.endswith("\n\n\ny = f(2)\n")
    assert verify(out, home=home).manifest.state == "trusted"


def test_mdiff_complete_streams_a_gemma_fill(folder, home, tmp_path, capsys):
    from mdiff import cli

    src = tmp_path / "todo.py"
    src.write_text("x = <FILL>\n", encoding="utf-8")
    argv = ["--home", str(home), "complete", str(src), "--model", str(folder), "--steps", "2"]
    assert cli.main([*argv, "--length", "3"]) == 0
    printed = capsys.readouterr().out
    assert cli.main([*argv, "--length", "3", "--stream"]) == 0
    captured = capsys.readouterr()
    assert captured.out == printed and "step 1" in captured.err  # streaming changes nothing


def test_a_diffusers_pipeline_folder_loads_as_its_model_and_tokenizer(tmp_path, cm, home):
    """``DiffusionGemmaPipeline.save_pretrained``: model/, processor/ (the tokenizer),
    scheduler/ and model_index.json — the same model, the same answers."""
    import diffusers

    sched, path = diffusers.BlockRefinementScheduler(), tmp_path / "pipe"
    diffusers.DiffusionGemmaPipeline(model=build(), scheduler=sched,
                                     processor=char_tokenizer()).save_pretrained(path)  # fmt: skip
    assert loaders.pipeline_parts(path) == (path / "model", path / "processor")
    from_pipe = CodeModel.from_pretrained(path)
    assert type(from_pipe) is GemmaCodeModel and from_pipe.weights_sha256 == cm.weights_sha256
    prefix, suffix = "def add(a, b):\n    return ", "\n"
    assert from_pipe.infill(prefix, suffix, 6, seed=1, steps=4).text == cm.infill(
        prefix, suffix, 6, seed=1, steps=4).text  # fmt: skip
    assert loaders.pipeline_parts(tmp_path) is None  # not a pipeline folder
