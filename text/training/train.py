"""Training the text models on code: held-out likelihood and the recipe of ``mdiff train text``.

    TextRecipe(kind="mdm", steps=20_000).train("runs/code-mdm")   # masked diffusion (LLaDA/MDLM)
    TextRecipe(kind="block").train("runs/code-bd3")               # block diffusion (BD3-LM)
    TextRecipe(kind="ar").train("runs/code-ar")                   # causal FIM baseline
    TextRecipe.export("runs/code-mdm", "text/checkpoints/code-tiny")   # EMA weights + tokenizer

The corpus defaults to the running interpreter's standard library (see `mdiff.text.data`). A
run folder (see `mdiff.train.run`) holds ``run.json`` (model config, objective, data and
training settings, command), ``tokenizer.json`` (trained on the training files at the start of
the run), the token caches, ``metrics.jsonl`` (training logs every ``log_every`` steps and
held-out likelihood every ``eval_every`` steps) and the trainer's ``checkpoints/``. Held-out
figures are nats and bits per token — the diffusion ones are a fixed-grid ELBO estimate (an
upper bound on the NLL), the AR one the exact next-token NLL — and bits per byte of source
(token-independent). The export writes the EMA model with ``context`` (the training window)
and ``fim_order`` in its config, the tokenizer and ``training_log.json``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mdiff.errors import CheckpointError, InvalidInputError
from mdiff.text.data import Corpus, TokenWindows, cached_tokens, eval_windows
from mdiff.text.model.denoiser import TextDenoiser, TextDenoiserConfig
from mdiff.text.model.tokenizer import TOKENIZER_FILE, CodeTokenizer, train_tokenizer
from mdiff.text.training.objectives import (
    LN2,
    ARObjective,
    BlockDiffusionObjective,
    MaskedDiffusionObjective,
    ar_nll,
    masked_nelbo,
)
from mdiff.train.recipe import Package, Recipe, RunData, setting
from mdiff.train.run import load_ema

__all__ = [
    "ARObjective",
    "BlockDiffusionObjective",
    "KINDS",
    "MaskedDiffusionObjective",
    "TextRecipe",
    "evaluate_heldout",
    "model_config",
]

logger = logging.getLogger(__name__)

KINDS = {"mdm": "bidirectional", "block": "block_causal", "ar": "causal"}  # kind -> attention
_OBJECTIVES = {
    "mdm": MaskedDiffusionObjective,
    "block": BlockDiffusionObjective,
    "ar": ARObjective,
}


def model_config(
    preset: str | TextDenoiserConfig, kind: str, tokenizer: CodeTokenizer, seq_len: int,
    block_size: int = 16,
) -> TextDenoiserConfig:  # fmt: skip
    """`preset` (a name, or the config of a model to fine-tune) fitted to the tokenizer, with
    the attention of `kind` and room for `seq_len`."""
    if kind not in KINDS:
        raise InvalidInputError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    if isinstance(preset, TextDenoiserConfig):
        base = dataclasses.replace(preset, block_size=None)
    else:
        base = TextDenoiserConfig.preset(preset, vocab_size=tokenizer.vocab_size)
    size = (base.block_size or block_size) if kind == "block" else None
    if size and seq_len % size:
        raise InvalidInputError(f"seq_len {seq_len} must be a multiple of block_size {size}")
    return dataclasses.replace(
        base,
        attention=KINDS[kind],
        block_size=size,
        max_len=max(base.max_len, 2 * seq_len if kind == "block" else seq_len),
        mask_id=tokenizer.mask_id,
        pad_id=tokenizer.pad_id,
        bos_id=tokenizer.bos_id,
        eos_id=tokenizer.eos_id,
    )


def param_count(config: TextDenoiserConfig) -> int:
    with torch.device("meta"):
        model = TextDenoiser(config)
    return sum(p.numel() for p in model.parameters())  # tied weights count once


# ------------------------------------------------------------------------------ held-out


def _token_bytes(tokenizer: CodeTokenizer) -> torch.Tensor:
    """Source bytes per token id: one per byte-level character, none for the specials."""
    table = torch.zeros(tokenizer.vocab_size, dtype=torch.long)
    specials = set(tokenizer.special_ids.values())
    for token, i in tokenizer.backend.get_vocab().items():
        table[i] = 0 if i in specials else len(token)
    return table


def evaluate_heldout(
    model, batch: dict, kind: str, tokenizer: CodeTokenizer, *, chunk: int = 8, grid: int = 16
) -> dict[str, float]:
    """Held-out nats/bits per token and bits per source byte of `batch` (see the module doc)."""
    ids, valid = batch["input_ids"], batch["attention_mask"]
    nats, tokens = 0.0, 0
    for s in range(0, ids.shape[0], chunk):
        part = {"input_ids": ids[s : s + chunk], "attention_mask": valid[s : s + chunk]}
        if kind == "ar":
            r, n = ar_nll(model, part), int((part["attention_mask"][:, 1:]).sum())
        else:
            r = masked_nelbo(
                model, part, mask_id=tokenizer.mask_id, grid=grid, seed=s, block=kind == "block"
            )
            n = int(part["attention_mask"].sum())
        nats, tokens = nats + r["nats_per_token"] * n, tokens + n
    n_bytes = int(_token_bytes(tokenizer)[ids[valid]].sum())
    per_token = nats / max(tokens, 1)
    return {
        "heldout_nats_per_token": round(per_token, 5),
        "heldout_bits_per_token": round(per_token / LN2, 5),
        "heldout_bits_per_byte": round(nats / LN2 / max(n_bytes, 1), 5),
    }


# ------------------------------------------------------------------------------ the recipe


def _data(run_dir: Path, run: dict, tokenizer: CodeTokenizer):
    """(training windows, held-out evaluation batch) of a run."""
    d = run["data"]
    corpus = Corpus.from_folder(d["corpus"], d["pattern"], d["heldout_fraction"])
    train_ids = cached_tokens(run_dir / "tokens_train.safetensors", tokenizer, corpus,
                              corpus.train_files)  # fmt: skip
    held_ids = cached_tokens(run_dir / "tokens_heldout.safetensors", tokenizer, corpus,
                             corpus.heldout_files)  # fmt: skip
    fim = {"pre_id": tokenizer.pre_id, "suf_id": tokenizer.suf_id, "mid_id": tokenizer.mid_id,
           "eos_id": tokenizer.eos_id}  # fmt: skip
    dataset = TokenWindows(
        train_ids, d["seq_len"], stride=d["stride"], crop_fraction=d["crop_fraction"],
        fim_rate=d["fim_rate"], seed=run["train"]["seed"], pad_id=tokenizer.pad_id, fim_ids=fim,
        fim_order=d.get("fim_order", "psm"),
    )  # fmt: skip
    heldout = eval_windows(held_ids, d["seq_len"], d["eval_windows"], pad_id=tokenizer.pad_id)
    return dataset, heldout


def _init_model(init_from: str | Path) -> tuple[TextDenoiser, CodeTokenizer]:
    """An exported text model (folder or built-in name) and its tokenizer, to fine-tune."""
    from mdiff.hub import resolve

    folder = resolve(init_from)
    if not (folder / TOKENIZER_FILE).is_file():
        raise CheckpointError(f"{folder} has no {TOKENIZER_FILE}: not an exported text model")
    return TextDenoiser.from_pretrained(folder), CodeTokenizer.load(folder)


@dataclass
class TextRecipe(Recipe):
    """``mdiff train text``: a text model of `kind` ("mdm", "block", "ar") on a code corpus (a
    folder; default the standard library). On resume only the call's settings (`steps`,
    periods, `cooldown`) apply; the rest comes from ``run.json`` and ``tokenizer.json``.

    `fim_order` ("psm" | "spm", see `mdiff.text.data`) is the AR baseline's FIM layout.
    `init_from` (a new run only) starts from an exported text model (folder or built-in name)
    with its tokenizer and architecture but the attention of `kind`: BD3-LM's recipe of
    fine-tuning a bidirectional masked-diffusion model into a block-causal one (``kind="block"``)
    costs a fraction of training one from scratch."""

    name = "text"
    default_out = "runs/code-{kind}"
    summary = (
        "held-out {heldout_bits_per_token:.4f} bits/token, {heldout_bits_per_byte:.4f} "
        "bits/byte ({kind}, {windows} windows)"
    )
    logged = ("kind", "data", "objective", "train", "model_config")
    trainer = {"betas": (0.9, 0.95), "weight_decay": 0.01, "ema_max_decay": 0.999,
               "keep_every": 5000}  # fmt: skip

    batch_size: int = setting(16, "sequences per step (default 16)", key="train.batch_size")
    mixed_precision: str = setting(
        "no", "bf16 autocast (2.5x faster with AVX512-BF16, far slower without; default no)",
        key="train.mixed_precision", choices=("no", "bf16"),
    )  # fmt: skip
    init_from: str | None = setting(
        None, "start a new run from an exported text model (its tokenizer and weights), e.g. "
        "a bidirectional one fine-tuned into --kind block", key="train.init_from",
        metavar="MODEL",
    )  # fmt: skip
    kind: str = setting("mdm", "objective", key="kind", choices=tuple(KINDS))
    preset: str | None = setting("code-tiny", "model size preset (default code-tiny)",
                                 key="preset")  # fmt: skip
    seq_len: int = setting(256, "tokens per sequence (default 256)", key="data.seq_len")
    corpus: str | None = setting(None, "folder of sources (default: the stdlib)",
                                 key="data.corpus")  # fmt: skip
    pattern: str = setting("*.py", "file glob in --corpus (default *.py)", key="data.pattern")
    vocab_size: int = setting(4096, "BPE vocabulary (default 4096)")
    block_size: int = setting(16, "tokens per block (--kind block)")
    fim_order: str = setting(
        "psm", "--kind ar: FIM layout, prefix-suffix-middle or Code Llama's suffix-prefix-middle",
        key="data.fim_order", choices=("psm", "spm"),
    )  # fmt: skip
    heldout_fraction: float = setting(0.02, key="data.heldout_fraction", cli=False)
    crop_fraction: float = setting(0.01, key="data.crop_fraction", cli=False)
    fim_rate: float = setting(0.5, key="data.fim_rate", cli=False)
    stride: int | None = setting(None, key="data.stride", cli=False)
    eval_windows: int = setting(32, key="data.eval_windows", cli=False)

    def start(self, out: Path) -> dict:
        """Train the tokenizer (or take `init_from`'s) and write it into `out`."""
        if self.kind not in KINDS:
            raise InvalidInputError(f"kind must be one of {sorted(KINDS)}, got {self.kind!r}")
        found = Corpus.from_folder(self.corpus, self.pattern, self.heldout_fraction)
        if self.init_from is not None:  # the model's own tokenizer and architecture
            init, tokenizer = _init_model(self.init_from)
            preset, base = None, init.config
        else:
            logger.info("training the tokenizer on %d files", len(found.train_files))
            tokenizer = train_tokenizer(found.texts(found.train_files), self.vocab_size)
            preset = base = self.preset
        config = model_config(base, self.kind, tokenizer, self.seq_len, self.block_size)
        objective = _OBJECTIVES[self.kind]()
        if self.kind == "block":
            objective.block_size = config.block_size
        ar = self.kind == "ar"
        run = dataclasses.replace(
            self, preset=preset, corpus=str(found.root.resolve()),
            stride=self.stride or self.seq_len, crop_fraction=0 if ar else self.crop_fraction,
            fim_rate=self.fim_rate if ar else 0,
        ).record()  # fmt: skip
        run["data"].update(train_files=len(found.train_files),
                           heldout_files=len(found.heldout_files))  # fmt: skip
        run.update(model_config=asdict(config), objective=asdict(objective),
                   parameters=param_count(config))  # fmt: skip
        out.mkdir(parents=True, exist_ok=True)
        tokenizer.save(out)
        return run

    def data(self, out: Path, run: dict) -> RunData:
        tokenizer = CodeTokenizer.load(out)
        dataset, heldout = _data(out, run, tokenizer)
        logger.info("%d training windows of %d tokens", len(dataset), run["data"]["seq_len"])
        return RunData(
            dataset, lambda model: evaluate_heldout(model, heldout, self.kind, tokenizer)
        )

    def build(self, run: dict) -> TextDenoiser:
        return TextDenoiser(TextDenoiserConfig(**run["model_config"]))

    def objective(self, run: dict):
        return _OBJECTIVES[self.kind](**run["objective"])

    def initialize(self, model: TextDenoiser, run: dict, out: Path) -> None:
        model.load_state_dict(_init_model(self.init_from)[0].state_dict())

    def package(self, run: dict, run_dir: Path, checkpoint: Path, options) -> Package:
        """The EMA model, with the context (the training window) and FIM order that inference
        reads from its config, evaluated on the held-out windows, and the tokenizer."""
        if not (run_dir / TOKENIZER_FILE).is_file():
            raise CheckpointError(f"{run_dir} has no {TOKENIZER_FILE}")
        tokenizer = CodeTokenizer.load(run_dir)
        model, step = load_ema(self, run, checkpoint)
        d = run["data"]
        model.config = dataclasses.replace(model.config, context=d["seq_len"],
                                           fim_order=d.get("fim_order", "psm"))  # fmt: skip
        _, heldout = _data(run_dir, run, tokenizer)
        figures = evaluate_heldout(model, heldout, self.kind, tokenizer)

        def save(folder: Path) -> None:
            model.save_pretrained(folder)
            tokenizer.save(folder)

        return Package(save, step, {"windows": int(heldout["input_ids"].shape[0]), **figures})
