"""Counting one round's replies: one home for what a majority is and what a reply means.

A node's reply is one of three things, and they must never be confused: it *accepted* (the
operation took effect there), it *refused* (it answered, and the answer was no: the key is
held by someone else, a newer token was seen), or it *failed* (an error: unreachable, OOM,
MOVED, a missing permission). A failure says nothing about what others did, so it is never
counted as a refusal; its text is kept so that whoever reports the outcome can name it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from redis.exceptions import AuthenticationError, AuthenticationWrongNumberOfArgsError, NoPermissionError

#: Errors that will not go away by retrying: wrong credentials, a missing ACL permission.
PERMANENT_ERRORS = (AuthenticationError, AuthenticationWrongNumberOfArgsError, NoPermissionError)


def majority(count: int) -> int:
    """How many of ``count`` nodes make a majority."""
    return count // 2 + 1


@dataclass(frozen=True)
class Tally:
    """One round's replies sorted by meaning; indexes are node positions in the NodeSet."""

    size: int
    accepted: tuple[int, ...]
    refused: tuple[int, ...]
    failed: tuple[tuple[int, BaseException], ...]

    @property
    def reached(self) -> bool:
        """A majority of all nodes accepted."""
        return len(self.accepted) >= majority(self.size)

    @property
    def refused_by_majority(self) -> bool:
        return len(self.refused) >= majority(self.size)

    @property
    def permanent(self) -> tuple[tuple[int, BaseException], ...]:
        return tuple((i, exc) for i, exc in self.failed if isinstance(exc, PERMANENT_ERRORS))

    def errors(self, labels: Sequence[str]) -> str:
        """The failed nodes and their own error texts, for a log line or an exception."""
        return "; ".join(f"{labels[i]}: {describe(exc)}" for i, exc in self.failed)

    def summary(self, labels: Sequence[str]) -> str:
        text = f"{len(self.accepted)} of {self.size} nodes accepted, {len(self.refused)} refused"
        return text + (f", {len(self.failed)} failed ({self.errors(labels)})" if self.failed else "")


def tally(replies: Sequence[Any], accepted: Callable[[Any], bool], size: int | None = None,
          only: Sequence[int] | None = None) -> Tally:
    """Sort ``replies`` (one per node, an exception for a failed node) with ``accepted``.

    ``only`` names the node indexes the replies belong to when a round went to some nodes only;
    ``size`` is then the number of nodes the majority is counted over.
    """
    indexes = list(range(len(replies)) if only is None else only)
    ok, no, failed = [], [], []
    for i, reply in zip(indexes, replies):
        if isinstance(reply, BaseException):
            failed.append((i, reply))
        elif accepted(reply):
            ok.append(i)
        else:
            no.append(i)
    return Tally(len(indexes) if size is None else size, tuple(ok), tuple(no), tuple(failed))


def describe(exc: BaseException) -> str:
    """An error as an operator needs it: its type and the node's own text."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
