"""Oracles for infilling tests: a character tokenizer and models that know the true middles."""

import torch
from torch import nn

from mdiff.nn import KVCache
from mdiff.text.model.spec import DenoiserSpec

V, PAD, EOS, MASK = 100, 0, 2, 3
SPECIAL = {"[PAD]": 0, "[BOS]": 1, "[EOS]": 2, "[MASK]": 3, "[PRE]": 4, "[SUF]": 5, "[MID]": 6}


class CharTokenizer:
    """One id per printable ASCII character (ids 10..), enough for splicing tests."""

    special_ids = SPECIAL

    def encode(self, text):
        return [10 + ord(c) - 32 if " " <= c <= "~" else 10 for c in text]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(i - 10 + 32) for i in ids if i >= 10)


TOK = CharTokenizer()


class WordTokenizer(CharTokenizer):
    """CharTokenizer plus a few multi-character tokens (greedy longest match), so that, as in a
    byte-level BPE, a space and the word after it can be one token."""

    def __init__(self, words=(" os", " sys", " return", "\n   ")):
        self.words = list(words)
        self.vocab_size = 10 + 95 + len(self.words)

    def encode(self, text):
        ids, i = [], 0
        while i < len(text):
            w = max((w for w in self.words if text.startswith(w, i)), key=len, default=None)
            ids.append(105 + self.words.index(w) if w else TOK.encode(text[i])[0])
            i += len(w) if w else 1
        return ids

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.words[i - 105] if i >= 105 else TOK.decode([i]) for i in ids)


class LengthOracle(nn.Module):
    """Knows the true middles: with a hole of the right length it predicts the middle with
    certainty, with any other length it has no idea (uniform logits)."""

    def __init__(self, cases, tok=TOK, vocab=V):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.cases = [(tok.encode(p), tok.encode(m), tok.encode(s)) for p, m, s in cases]
        self.spec = DenoiserSpec(vocab_size=vocab, mask_id=MASK, pad_id=PAD)
        self.vocab = vocab

    def forward(self, x, attention_mask=None, position_ids=None, cache=None, cache_at=None):
        real = torch.ones_like(x, dtype=torch.bool) if attention_mask is None else attention_mask
        out = torch.zeros(*x.shape, self.vocab)
        for b in range(x.shape[0]):
            row = x[b][real[b]].tolist()
            for pre, mid, suf in self.cases:
                if len(row) == len(pre) + len(mid) + len(suf) and row[: len(pre)] == pre:
                    full = torch.tensor(pre + mid + suf)
                    out[b, -len(row) :] = 20.0 * nn.functional.one_hot(full, self.vocab)
        return out


class ARMiddleOracle(nn.Module):
    """A "causal model with a cache" that reads the FIM prompt ``[PRE] p [SUF] s [MID]``, looks
    the task up, and emits its middle then EOS, one token per cached forward."""

    def __init__(self, cases):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.cases = {tuple(TOK.encode(p)): TOK.encode(m) for p, m, _ in cases}
        self.spec = DenoiserSpec(vocab_size=V, mask_id=MASK, pad_id=PAD, eos_ids=(EOS,),
                                 attention="causal", supports_cache=True)  # fmt: skip
        self.config = type("C", (), {"max_len": 512})()

    def new_cache(self):
        return KVCache(1)

    def forward(self, x, attention_mask=None, position_ids=None, cache=None, cache_at=None):
        if x.shape[1] > 1:  # the prompt: remember the middle to emit
            ids = x[0].tolist()
            pre = tuple(ids[ids.index(SPECIAL["[PRE]"]) + 1 : ids.index(SPECIAL["[SUF]"])])
            self._todo = self.cases[pre] + [EOS]
        k = torch.zeros(1, 1, x.shape[1], 1)
        cache.stage(0, k, k)
        out = torch.zeros(*x.shape, V)
        out[0, -1, self._todo.pop(0)] = 1.0
        return out
