"""Generated movie reviews whose sentiment is carried by a few learnable words (test data)."""

from __future__ import annotations

import random
from pathlib import Path

POSITIVE = ["wonderful", "superb", "moving", "brilliant", "delightful", "charming", "gripping",
            "masterful"]
NEGATIVE = ["dreadful", "boring", "clumsy", "tedious", "awful", "lifeless", "shallow", "dismal"]
NEUTRAL = [f"w{i}" for i in range(150)] + ["film", "movie", "plot", "actor", "scene", "story"]


def review(rng: random.Random, positive: bool, length: int) -> str:
    """``length`` neutral words with two or three sentiment words of one class among them."""
    words = [rng.choice(NEUTRAL) for _ in range(length)]
    for _ in range(rng.randint(2, 3)):
        words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if positive else NEGATIVE))
    return " ".join(words)


def reviews(n: int, seed: int = 0, lengths: tuple[int, int] = (4, 30)) -> list[tuple[str, int]]:
    """``n`` (text, label) pairs, half positive."""
    rng = random.Random(seed)
    return [(review(rng, i % 2 == 0, rng.randint(*lengths)), int(i % 2 == 0)) for i in range(n)]


def write_pos_neg(folder: Path, n: int = 400, seed: int = 0) -> Path:
    """``folder/reviews.pos`` and ``folder/reviews.neg``, one review per line."""
    folder.mkdir(parents=True, exist_ok=True)
    pairs = reviews(n, seed)
    (folder / "reviews.pos").write_text("\n".join(t for t, y in pairs if y) + "\n")
    (folder / "reviews.neg").write_text("\n".join(t for t, y in pairs if not y) + "\n")
    return folder
