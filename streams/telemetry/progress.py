"""A progress bar on a text stream (stderr) for the long-running commands (bootstrap,
backfill): ``\\r<done>/<total> <what> (<pct>%)``, a newline when a phase ends."""

from __future__ import annotations

from typing import TextIO


class Progress:
    """``\\r<done>/<total> <what> (<pct>%)`` on ``out``; a newline when a phase ends."""

    def __init__(self, out: TextIO | None, what: str, total: int) -> None:
        self.out, self.what, self.total, self.done = out, what, total, 0
        self.show()

    def add(self, count: int) -> None:
        self.done += count
        self.show()

    def show(self) -> None:
        if self.out is None:
            return
        pct = 100 if self.total == 0 else self.done * 100 // self.total
        self.out.write(f"\r{self.done}/{self.total} {self.what} ({pct}%)")
        self.out.flush()

    def end(self) -> None:
        if self.out is not None:
            self.out.write("\n")
            self.out.flush()
