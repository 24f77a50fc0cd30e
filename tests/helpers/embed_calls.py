"""Count the image chunks embed_split computes (tests of caching and resuming)."""

from __future__ import annotations

import pytest

import backend.embed.compute as embed_mod


def count_image_chunks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Wrap backend.embed.compute's chunk function; the returned list gets each computed chunk's length."""
    calls: list[int] = []
    real = embed_mod._image_chunk

    def wrapped(lm, paths, batch_size, feed):
        calls.append(len(paths))
        return real(lm, paths, batch_size, feed)

    monkeypatch.setattr(embed_mod, "_image_chunk", wrapped)
    return calls
