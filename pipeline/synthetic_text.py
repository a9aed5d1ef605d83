"""A deterministic synthetic English-like corpus, for tests and the ``tiny`` preset.

Pseudo-words start with every letter of the alphabet equally often (so first-letter probes have data
for rare letters too) and are combined into sentences with Zipf-like word frequencies.
"""
from __future__ import annotations

import random
import string

_CONSONANTS = "bcdfghjklmnprstvwz"
_VOWELS = "aeiou"


def vocabulary(n_words: int = 2600, seed: int = 1234) -> list[str]:
    rng = random.Random(seed)
    words: list[str] = []
    seen: set[str] = set()
    letters = string.ascii_lowercase
    i = 0
    while len(words) < n_words:
        first = letters[i % 26]
        i += 1
        body = "".join(rng.choice(_VOWELS if j % 2 == 0 else _CONSONANTS) for j in range(rng.randint(2, 6)))
        word = first + body
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def documents(n_docs: int, seed: int = 0, words: list[str] | None = None) -> list[str]:
    """``n_docs`` short documents of a few sentences each; the same seed gives the same text."""
    words = words or vocabulary()
    rng = random.Random(seed)
    weights = [1.0 / (r + 10) for r in range(len(words))]  # Zipf-like, not too peaked
    docs = []
    for _ in range(n_docs):
        sentences = []
        for _ in range(rng.randint(2, 6)):
            ws = rng.choices(words, weights=weights, k=rng.randint(5, 14))
            sentences.append(" ".join(ws).capitalize() + rng.choice([".", ".", "!", "?"]))
        docs.append(" ".join(sentences))
    return docs
