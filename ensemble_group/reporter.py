"""Where long work says what it is doing: a silent default, and the CLI plugs in rich progress bars."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Reporter:
    """Messages (`log`) and progress (`task`: a context giving an `advance(n)` callback); silent here."""

    def log(self, message: str) -> None:
        pass

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        yield lambda n: None
