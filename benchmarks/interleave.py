"""Shuffled round-robin batches: how every benchmark here runs its subjects side by side.

Machine noise (a busy core, a page cache flush) then falls on all subjects alike, so the
ratios between them hold even when absolute times drift.
"""

from __future__ import annotations

import random
from typing import Callable, Sequence, TypeVar

S = TypeVar("S")


def run_interleaved(subjects: Sequence[S], cycles: int, batch: int, rng: random.Random,
                    run_cycle: Callable[[S], None]) -> None:
    """Run ``cycles`` cycles per subject, in batches, the subjects shuffled every round."""
    done = 0
    while done < cycles:
        size = min(batch, cycles - done)
        order = list(subjects)
        rng.shuffle(order)
        for subject in order:
            for _ in range(size):
                run_cycle(subject)
        done += size
