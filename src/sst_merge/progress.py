"""Progress bars for long work (rich); when stderr is not a terminal (a log file, nohup), a plain line at
most once a minute instead."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

console = Console(stderr=True)


def make_progress() -> Progress:
    """A rich Progress with the project's columns, writing to stderr."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    )


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate over `items` with a progress bar labelled `description`."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if not console.is_terminal:
        yield from plain_progress(items, description, total, _log_line)
        return
    with make_progress() as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)


def _log_line(line: str) -> None:
    """One timestamped line on stderr (no source location: it would name this module every time)."""
    console.print(f"{time.strftime('%H:%M:%S')} {line}", markup=False, highlight=False, soft_wrap=True)


def plain_progress(items: Iterable[T], description: str, total: int | None, write: Callable[[str], object],
                   every_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> Iterator[T]:
    """Iterate over `items`, writing "description: done/total, elapsed" at most once every `every_s`
    seconds and, for work that took that long, once at the end (a log shows where a long stage is)."""
    start = last = clock()
    done, of = 0, total if total is not None else "?"
    for item in items:
        yield item
        done += 1
        now = clock()
        if now - last >= every_s:
            write(f"{description}: {done}/{of}, {now - start:.0f} s")
            last = now
    end = clock()
    if end - start >= every_s:
        write(f"{description}: {done}/{of} done, {end - start:.0f} s")
