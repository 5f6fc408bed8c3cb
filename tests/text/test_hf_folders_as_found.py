"""Folders as users bring them: a weights file that is cut short, a tokenizer class that is
code in the folder (Dream's), ``--trust-remote-code`` on a model that needs none
(DiffusionGemma), `mdiff eval fim` on DiffusionGemma, an ``--ar`` that is no FIM baseline, and
the record's token count of a fixed-length hole."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T

from mdiff import cli
from mdiff.errors import CheckpointError
from mdiff.text import CodeModel
from tests.text.test_diffusion_gemma import build as build_gemma
from tests.text.test_hf_loaders import llama, qwen2, save, tokenizer

torch.set_num_threads(1)


def test_a_weights_file_cut_short_is_a_one_line_checkpoint_error(tmp_path, home, capsys):
    folder = save(tmp_path, "llama", llama())
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="weights file cannot be read"):
        CodeModel.from_pretrained(folder)
    src = tmp_path / "a.py"
    src.write_text("y = <FILL>\n", encoding="utf-8")
    capsys.readouterr()
    code = cli.main(["--home", str(home), "complete", str(src), "--model", str(folder)])
    err = capsys.readouterr().err
    assert code == cli.EXIT_ERROR and str(folder) in err and err.count("\n") == 1


def test_a_tokenizer_class_in_the_folders_code_is_read_from_its_files(tmp_path):
    folder = save(tmp_path, "dream", qwen2(), edit=lambda c: c.update(model_type="Dream"))
    conf_file = folder / "tokenizer_config.json"
    conf = json.loads(conf_file.read_text())
    code = "tokenization_dream.DreamTokenizer"
    conf.update(tokenizer_class="DreamTokenizer", auto_map={"AutoTokenizer": [code, None]})
    conf_file.write_text(json.dumps(conf))
    with pytest.raises(ValueError):  # what transformers says without the folder's code
        T.AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    for trust in (False, True):
        cm = CodeModel.from_pretrained(folder, trust_remote_code=trust)
        want = tokenizer()
        assert cm.model.spec.mask_id == want.mask_token_id
        assert cm.tokenizer.encode("x = y") == want.encode("x = y", add_special_tokens=False)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="without the folder's code"):
        CodeModel.from_pretrained(folder)


@pytest.fixture(scope="module")
def gemma_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dgemma")
    build_gemma(scale=20.0).save_pretrained(folder)
    tokenizer().save_pretrained(folder)
    return folder


def test_trust_remote_code_on_diffusion_gemma_changes_nothing(gemma_folder):
    plain = CodeModel.from_pretrained(gemma_folder)
    trusted = CodeModel.from_pretrained(gemma_folder, trust_remote_code=True)
    assert type(plain) is type(trusted) and type(plain).infill is not CodeModel.infill
    a = plain.infill("x = ", "\n", 4, seed=1).middles[0]
    assert trusted.infill("x = ", "\n", 4, seed=1).middles[0] == a


def test_eval_fim_runs_diffusion_gemma_through_its_own_infill(gemma_folder, tmp_path, capsys):
    src = tmp_path / "code"
    src.mkdir()
    (src / "m.py").write_text("".join(f"x{i} = y + {i}\n" for i in range(40)), encoding="utf-8")
    capsys.readouterr()
    code = cli.main(["eval", "fim", "--files", str(src), "--model", str(gemma_folder), "-n", "2",
                     "--modes", "fixed", "--fixed-length", "4", "--json"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    fixed = json.loads(out)["modes"]["fixed"]
    assert fixed["tasks"] == 2 and fixed["forwards"] > 0


def test_an_ar_that_is_no_fim_baseline_is_refused_before_the_run(tmp_path, capsys):
    folder = save(tmp_path, "llama", llama())
    src = tmp_path / "code"
    src.mkdir()
    (src / "m.py").write_text("".join(f"x{i} = y + {i}\n" for i in range(40)), encoding="utf-8")
    capsys.readouterr()
    code = cli.main(["eval", "fim", "--files", str(src), "--model", str(folder), "-n", "2",
                     "--modes", "fixed", "--ar", str(folder)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == cli.EXIT_ERROR and "[PRE]" in err and "fim" not in err.split("mdiff:")[0]
    code = cli.main(["eval", "fim", "--files", str(src), "--model", str(folder), "-n", "2",
                     "--modes", "fixed", "--ar", "code-tiny"])  # fmt: skip
    err = capsys.readouterr().err  # our own masked model has the FIM tokens, but is no baseline
    assert code == cli.EXIT_ERROR and "not an autoregressive" in err
    assert "fim" not in err.split("mdiff:")[0]


def test_the_record_counts_the_tokens_a_fixed_hole_generated(home):
    cm = CodeModel.from_pretrained("code-tiny-block")
    for text in ("a = 1\r\nb = <FILL>\r\nc = 3\r\n", "def f(x):\n    return <FILL>\n"):
        for n in (3, 8):
            done = cm.fill(text, length=n, seed=0)
            assert done.record.sizes["tokens"] == n
            assert done.tokens_per_forward == pytest.approx(n / done.nfe)


def test_auto_length_tries_only_the_lengths_a_short_window_holds(tmp_path):
    from tests.text.test_hf_loaders import BOS, EOS, PAD, SIZES

    torch.manual_seed(0)
    cfg = T.LlamaConfig(**{**SIZES, "max_position_embeddings": 12}, num_key_value_heads=2,
                        pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)  # fmt: skip
    cm = CodeModel.from_pretrained(save(tmp_path, "short", T.LlamaForCausalLM(cfg)))
    done = cm.infill("x = y", "\n", "auto", seed=0)
    assert 1 <= done.record.sizes["tokens"] < 12
    with pytest.raises(Exception, match="fits"):
        cm.infill("x = y", "\n", "auto", candidates=(12, 16), seed=0)


def _pickle_weights(folder, shards: int) -> None:
    """Replace the folder's safetensors by ``pytorch_model.bin`` (``shards`` files + index)."""
    from safetensors.torch import load_file

    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    if shards == 1:
        torch.save(state, folder / "pytorch_model.bin")
        return
    keys, weight_map = sorted(state), {}
    for i in range(shards):
        name = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = keys[i::shards]
        torch.save({k: state[k] for k in part}, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("shards", [1, 3])
def test_pickled_weights_are_refused_with_the_convert_command_that_works(tmp_path, shards):
    folder = save(tmp_path, "llama", llama())
    want = CodeModel.from_pretrained(folder).infill("x = ", "\n", 4, seed=0).middles
    _pickle_weights(folder, shards)
    with pytest.raises(CheckpointError, match="never unpickles") as e:
        CodeModel.from_pretrained(folder)
    command = str(e.value).split("convert them first: ")[1]
    assert command.startswith("mdiff convert ")
    assert cli.main(command.split()[1:]) == 0
    if shards > 1:
        assert len(list(folder.glob("model-*-of-00003.safetensors"))) == 3
    assert CodeModel.from_pretrained(folder).infill("x = ", "\n", 4, seed=0).middles == want
