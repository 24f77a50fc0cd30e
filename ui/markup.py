"""Data text is shown as text, never as markup. Reports, ids and messages come from datasets and jobs: they are
never interpreted as Markdown, LaTeX, colour directives, icons or HTML (a report holding ![](http://host/x.png)
must not make the browser fetch anything). Two ways: plain() for the parameters that Streamlit renders as Markdown
(captions, alerts, image captions, labels), text_block() (st.html of escaped text) for report bodies; show_error()
shows an error's message as plain text."""

from __future__ import annotations

import html
import re
import string
from typing import Any

import streamlit as st

from backend.errors import RelinkError
from backend.views import explorer

_MD_PUNCT = re.compile(f"([{re.escape(string.punctuation)}])")
_WJ = "\u2060"  # word joiner: invisible, breaks the patterns that Markdown plugins find in plain text nodes

_AUTOMARKUP = tuple((re.compile(p, re.IGNORECASE), j) for p, j in (
    (r"(\\:)(material)", r"\1" + _WJ + r"\2"),  # :material/icon: (escaped colons still reach the icon plugin)
    (r"(\\:)(\\/\\/)", r"\1" + _WJ + r"\2"),  # scheme://host autolinks
    (r"(www)(\\\.)", r"\1" + _WJ + r"\2"),  # www.host autolinks
    (r"(\\@)", _WJ + r"\1"),  # user@host autolinks
))


def plain(value: object) -> str:
    """`value` as Markdown that renders as exactly its text: every ASCII punctuation backslash-escaped (no
    emphasis, links, images, code spans, LaTeX, :color[...] directives, HTML), and an invisible word joiner
    where a pattern in a plain text node would still become markup (:material/icon:, bare URLs, emails)."""
    text = _MD_PUNCT.sub(r"\\\1", str(value))
    for pattern, joined in _AUTOMARKUP:
        text = pattern.sub(joined, text)
    return text


def highlighted(text: str, words: set[str]) -> str:
    """HTML with the shared words marked; every segment escaped (for st.html, which runs no Markdown)."""
    return "".join(f"<mark>{html.escape(seg)}</mark>" if hit else html.escape(seg)
                   for seg, hit in explorer.highlight_segments(text, words))


def text_block(text: str, words: set[str] | None = None, *, container: Any = None) -> None:
    """Data text (a report) shown as text, line breaks kept, `words` marked; never Markdown or live HTML."""
    body = highlighted(str(text), words or set())
    (container or st).html(f'<div class="cxr-text" style="white-space:pre-wrap;overflow-wrap:anywhere">{body}</div>')


def show_error(exc: Exception) -> None:
    st.error(plain(str(exc) if isinstance(exc, RelinkError) else f"{type(exc).__name__}: {exc}"))
