"""Varied English-like sentences from a fixed seed, for benchmarks, tests and the demo."""

from __future__ import annotations

import random

__all__ = ["sample_sentences"]

_SUBJECTS = (
    "the committee",
    "a young engineer",
    "our neighbours",
    "the old harbour",
    "every student",
    "the research team",
    "a quiet librarian",
    "the city council",
    "my grandmother",
    "the orchestra",
    "a delivery driver",
    "the new manager",
    "several farmers",
    "the museum",
    "a tired traveller",
)
_VERBS = (
    "discussed",
    "repaired",
    "painted",
    "measured",
    "described",
    "questioned",
    "celebrated",
    "ignored",
    "studied",
    "announced",
    "delivered",
    "compared",
    "rebuilt",
    "photographed",
)
_OBJECTS = (
    "the budget for next year",
    "a broken bicycle",
    "the results of the survey",
    "an unusual storm",
    "the history of the railway",
    "a plan for cheaper housing",
    "the winter festival",
    "the price of fresh bread",
    "a proposal to plant more trees",
    "the rules of the game",
    "an old map of the valley",
    "the noise from the factory",
    "a letter from abroad",
)
_TAILS = (
    "before the meeting ended",
    "while it rained all afternoon",
    "after a long delay",
    "because nobody else would",
    "with surprising patience",
    "during the summer holidays",
    "in front of a small crowd",
    "without asking for help",
    "as the sun went down",
    "although the evidence was thin",
    "so that the children could join",
    "on a cold morning",
)
_JOINS = ("and then", "but later", "while", "because", "so", "although")


def _clause(rng: random.Random) -> list[str]:
    words = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}".split()
    if rng.random() < 0.6:
        words += rng.choice(_TAILS).split()
    return words


def sample_sentences(n: int, seed: int = 0, min_words: int = 5, max_words: int = 60) -> list[str]:
    """``n`` sentences of ``min_words`` to ``max_words`` words, their lengths spread evenly."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        target = rng.randint(min_words, max_words)
        words = _clause(rng)
        while len(words) < target:
            words += [*rng.choice(_JOINS).split(), *_clause(rng)]
        words = words[:target]
        out.append(" ".join(words).capitalize() + rng.choice(".!?."))
    return out
