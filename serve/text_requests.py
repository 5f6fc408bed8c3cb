"""Parsing and bounds of the text routes' JSON bodies (OpenAI ``/v1/completions``, llama.cpp
``/infill``) into one `TextRequest`: the prompts, one `Job` per choice, and how to answer.

Length. A diffusion LM fills a hole of a chosen number of tokens. ``max_tokens`` (``n_predict``
for ``/infill``) bounds it: the model's own length search (`mdiff.text.fim.infilling`) picks
the length among the candidate lengths ≤ ``max_tokens`` (default: all candidates, ≤ 64). The
extension field ``"length": n`` asks for exactly n tokens. A prompt without ``suffix`` is a hole
at the end of the prompt (the same search, an empty suffix).

Seeds. Choice j of a request draws from ``seed + j``; a request without ``seed`` (or with
llama.cpp's and Ollama's ``-1``) gets a random one, returned in the response (``mdiff.seed``),
so any answer can be reproduced. A request's answer is the same alone or batched with others
(`mdiff.serve.batching`).

Fields OpenAI defines that do not apply to a diffusion sampler (``frequency_penalty`` and
``presence_penalty`` in OpenAI's [-2, 2], ``best_of`` 1, ``user``, ``logit_bias`` empty) are
accepted and ignored; ``logprobs``, ``best_of`` > 1 and a non-empty ``logit_bias`` are refused
with a 400 that says so.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import mdiff.text.fim.infilling as F
from mdiff.errors import InvalidInputError
from mdiff.serve.batching import Job

__all__ = ["TextRequest", "parse_completion", "parse_infill"]

MAX_STOPS = 64  # OpenAI allows 4; editor plugins (Continue) send more, as llama.cpp and vLLM take
MAX_SEED = 2**31 - 1


@dataclass
class TextRequest:
    """A parsed text request: ``prompts[i] = (prefix, suffix)``, ``n`` choices each."""

    prompts: list[tuple[str, str]]
    n: int = 1
    length: int | str = "auto"
    candidates: tuple[int, ...] = F.DEFAULT_CANDIDATES
    seed: int = 0
    settings: dict = field(default_factory=dict)
    stop: tuple[str, ...] = ()
    stream: bool = False
    drafts: bool = False
    echo: bool = False
    usage_chunk: bool = False  # stream_options.include_usage: a last chunk with the usage
    empty: bool = False  # nothing to generate (llama.cpp's n_predict 0): no jobs
    model_id: str = ""  # the served model answering it (set on admission)

    def jobs(self) -> list[Job]:
        """One `Job` per choice, in answer order (prompt-major, as OpenAI indexes choices)."""
        if self.empty:
            return []
        return [Job(p, s, self.length, candidates=self.candidates, seed=self.seed + j,
                    settings=dict(self.settings), stop=self.stop, drafts=self.drafts)
                for p, s in self.prompts for j in range(self.n)]  # fmt: skip


def _pick(body: dict, name: str, kinds, default=None, *, check=None, what: str = ""):
    """``body[name]`` (None → ``default``) if it is one of ``kinds`` (bool is never an int) and
    passes ``check``; else `InvalidInputError` naming the field."""
    value = body.get(name)
    if value is None:
        return default
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok or (check is not None and not check(value)):
        raise InvalidInputError(f"'{name}' must be {what}, got {value!r}"[:300])
    return value


def _text(body: dict, name: str, default=None, label: str | None = None) -> str | None:
    """``body[name]``, a string that is text (no lone surrogate), named ``label`` in errors."""
    value = _pick(body, name, (str,), default, what="a string")
    return value if value is None else _utf8(value, label or name)


def _settings(body: dict, limits, max_name: str) -> dict:
    """The shared fields: length bounds, sampler settings, seed, stop, stream."""
    low = 0 if max_name == "n_predict" else 1  # llama.cpp: 0 = evaluate the prompt only
    max_tokens = _pick(body, max_name, (int,), None,
                       what=f"an integer in [{low}, {limits.max_tokens}] or -1",
                       check=lambda v: low <= v <= limits.max_tokens or v == -1)  # fmt: skip
    empty = max_tokens == 0  # nothing to generate: no jobs
    if max_tokens in (-1, 0):  # llama.cpp: -1 = no limit
        max_tokens = None
    length = _pick(body, "length", (int, str), "auto", what=f"'auto' or 1…{limits.max_tokens}",
                   check=lambda v: v == "auto" or (isinstance(v, int)
                                                   and 1 <= v <= limits.max_tokens))  # fmt: skip
    if isinstance(length, int) and max_tokens is not None and length > max_tokens:
        raise InvalidInputError(f"'length' {length} exceeds '{max_name}' {max_tokens}")
    bound = limits.max_tokens if max_tokens is None else max_tokens
    candidates = tuple(c for c in F.DEFAULT_CANDIDATES if c <= bound) or (bound,)
    settings = {}
    temperature = _pick(body, "temperature", (int, float), None, what="a number in [0, 2]",
                        check=lambda v: 0 <= v <= 2)  # fmt: skip
    if temperature is not None:
        settings["temperature"] = float(temperature)
    top_p = _pick(body, "top_p", (int, float), None, what="a number in (0, 1]",
                  check=lambda v: 0 < v <= 1)  # fmt: skip
    if top_p is not None and top_p < 1:
        settings["top_p"] = float(top_p)
    seed = _pick(body, "seed", (int,), None, what=f"an integer in [0, {MAX_SEED}] or -1 (random)",
                 check=lambda v: -1 <= v <= MAX_SEED)  # fmt: skip
    if seed == -1:  # llama.cpp and Ollama: a random seed
        seed = None
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOPS
        or not all(isinstance(s, str) and 0 < len(_utf8(s, "stop")) <= 200 for s in stops)
    ):
        raise InvalidInputError(f"'stop' must be a string or a list of at most {MAX_STOPS} "
                                "non-empty strings")  # fmt: skip
    return dict(length=length, candidates=candidates, settings=settings,
                seed=secrets.randbelow(MAX_SEED) if seed is None else seed, stop=tuple(stops),
                stream=_pick(body, "stream", (bool,), False, what="true or false"),
                drafts=_pick(body, "drafts", (bool,), False, what="true or false"),
                empty=empty)  # fmt: skip


def _utf8(text: str, name: str) -> str:
    """``text`` if it encodes as UTF-8 (JSON may carry a lone surrogate, e.g. an editor that cut
    a string inside an emoji: it is no text)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        char = f"U+{ord(text[e.start]):04X} at character {e.start}"
        raise InvalidInputError(
            f"'{name}' holds an unpaired surrogate ({char}): not text"
        ) from None
    return text


def _check_size(prompts, limits) -> None:
    for p, s in prompts:
        _utf8(p, "prompt")
        _utf8(s, "suffix")
    chars = sum(len(p) + len(s) for p, s in prompts)
    if chars > limits.max_prompt_chars:
        raise InvalidInputError(
            f"prompt and suffix hold {chars} characters: at most {limits.max_prompt_chars}"
        )


def parse_completion(body, limits) -> TextRequest:
    """OpenAI ``/v1/completions``: ``prompt`` (a string or a list of strings), ``suffix``,
    ``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``n``, ``stop``, ``stream``
    (``stream_options.include_usage``), ``echo``; extensions ``length`` and ``drafts``."""
    if not isinstance(body, dict):
        raise InvalidInputError("the body must be a JSON object")
    prompt = body.get("prompt", "")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise InvalidInputError("'prompt' must be a string or a non-empty list of strings "
                                "(token-id prompts are not supported)")  # fmt: skip
    suffix = _text(body, "suffix", "")
    n = _pick(body, "n", (int,), 1, what=f"an integer in [1, {limits.max_n}]",
              check=lambda v: 1 <= v <= limits.max_n)  # fmt: skip
    if len(prompts) * n > limits.max_n:
        raise InvalidInputError(f"{len(prompts)} prompts × n={n} choices: at most {limits.max_n}")
    if body.get("logprobs") not in (None, 0, False):
        raise InvalidInputError("'logprobs' is not supported by a diffusion sampler")
    if _pick(body, "best_of", (int,), 1, what="1", check=lambda v: v >= 1) != 1:
        raise InvalidInputError("'best_of' > 1 is not supported; use 'n'")
    if body.get("logit_bias") not in (None, {}):
        raise InvalidInputError("'logit_bias' is not supported (only an empty one)")
    for name in ("presence_penalty", "frequency_penalty"):  # OpenAI's range; no effect here
        _pick(body, name, (int, float), 0, what="a number in [-2, 2]",
              check=lambda v: -2 <= v <= 2)  # fmt: skip
    pairs = [(p, suffix) for p in prompts]
    _check_size(pairs, limits)
    echo = _pick(body, "echo", (bool,), False, what="true or false")
    options = _pick(body, "stream_options", (dict,), {}, what="an object")
    usage = _pick(options, "include_usage", (bool,), False, what="true or false")
    return TextRequest(pairs, n=n, echo=echo, usage_chunk=usage,
                       **_settings(body, limits, "max_tokens"))  # fmt: skip


def parse_infill(body, limits) -> TextRequest:
    """llama.cpp ``/infill``: ``input_prefix``, ``input_suffix``, ``prompt`` (text after the
    prefix, e.g. the cursor line), ``input_extra`` (``[{"filename", "text"}]`` context put
    before the prefix), ``n_predict``, ``temperature``, ``top_p``, ``seed``, ``stop``,
    ``stream``."""
    if not isinstance(body, dict):
        raise InvalidInputError("the body must be a JSON object")
    prefix = _text(body, "input_prefix", "") + _text(body, "prompt", "")
    extra = body.get("input_extra") or []
    if not isinstance(extra, list) or not all(
        isinstance(c, dict) and isinstance(c.get("text", ""), str) for c in extra
    ):
        raise InvalidInputError("'input_extra' must be a list of {'filename', 'text'} objects")
    texts = [_text(c, "text", "", f"input_extra[{i}].text") for i, c in enumerate(extra)]
    context = "".join(t + "\n" for t in texts if t)
    pairs = [(context + prefix, _text(body, "input_suffix", ""))]
    _check_size(pairs, limits)
    return TextRequest(pairs, **_settings(body, limits, "n_predict"))
