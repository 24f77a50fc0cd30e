"""Progress reporting: a plain callback `progress(done, total, message)` that long work calls.

The command line wraps it in tqdm; the job worker throttles it into the store. A callback may raise
(e.g. JobError on cancel) to stop the work between chunks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Progress(Protocol):
    def __call__(self, done: int, total: int, message: str = "") -> None: ...


def null_progress(done: int, total: int, message: str = "") -> None:
    """A progress callback that does nothing."""


def tqdm_progress(desc: str = "") -> Progress:
    """A callback that drives a tqdm bar on stderr (for the command line).

    The bar opens at the first call with `initial` set to where the work already is, so its rate and time
    left count only work done since then: a phase that jumps (cached chunks, a resumed job) shows no
    nonsense rate like "3414123.45it/s"."""
    from tqdm.auto import tqdm

    state: dict[str, object] = {"bar": None}

    def update(done: int, total: int, message: str = "") -> None:
        bar = state["bar"]
        if bar is None:
            bar = state["bar"] = tqdm(total=total, initial=done, desc=f"{desc} {message}".strip(), dynamic_ncols=True)
        if bar.total != total:
            bar.total = total
        if message:
            bar.set_description(f"{desc} {message}".strip(), refresh=False)
        bar.n = done
        bar.refresh()
        if total and done >= total:
            bar.close()

    return update


def phased_progress(desc: str) -> Progress:
    """tqdm bars for multi-phase work (render, train, embed, relink): tqdm_progress closes its bar when a
    phase completes, so a new bar is opened whenever the total changes or the last phase has finished."""
    state: dict[str, object] = {"bar": None, "total": None, "finished": False}

    def update(done: int, total: int, message: str = "") -> None:
        if state["bar"] is None or total != state["total"] or state["finished"]:
            state.update(bar=tqdm_progress(desc), total=total)
        state["finished"] = bool(total) and done >= total
        state["bar"](done, total, message)  # type: ignore[operator]

    return update


def scaled(progress: Progress, start: int, span: int, total: int) -> Progress:
    """A sub-task's callback mapped into [start, start + span] of a parent task of size `total`."""

    def update(done: int, sub_total: int, message: str = "") -> None:
        frac = done / sub_total if sub_total else 1.0
        progress(start + int(round(frac * span)), total, message)

    return update


def forward_only(progress: Progress) -> Progress:
    """A callback whose bar never moves back: sub-phases that each count from zero (embed images, embed texts,
    score) keep the furthest point reached and only update the message until they pass it."""
    state = {"done": 0}

    def update(done: int, total: int, message: str = "") -> None:
        state["done"] = max(state["done"], min(done, total) if total else done)
        progress(state["done"], total, message)

    return update


def staged(progress: Progress, stage: str) -> Progress:
    """A callback whose messages name the stage of a multi-part job ("auditing the demo model: embedding ..."), so
    a page showing only the job's message knows which part runs; a message that names its stage already is kept."""

    def update(done: int, total: int, message: str = "") -> None:
        progress(done, total, message if message.startswith(stage) else f"{stage}: {message}" if message else stage)

    return update


ProgressLike = Callable[[int, int, str], None]
