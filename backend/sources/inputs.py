"""The data a spec reads from the user's files, and its data hash.

A spec that reads a file-based source (csv, openi, mimic-cxr, chexpert-plus: data the user can edit) names data
that can change under the same run id. A finished run records the data hash it was computed from (every column
of the pair table and each image file's (size, mtime_ns)); a resubmission compares it with data_inputs(spec) to
decide whether the run is reused or recomputed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from backend.errors import RelinkError
from backend.sources import get_source, load_source
from backend.sources.schema import SIDE_COLUMNS, combined_digest
from backend.specs import AuditSpec, SourceSpec


def _nested(value: Any, kind: type) -> Iterator[Any]:
    """Every instance of `kind` inside a spec (itself, its dataclass fields, lists and tuples), in spec order."""
    if isinstance(value, kind):
        yield value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _nested(getattr(value, f.name), kind)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _nested(item, kind)


def file_sources(spec: Any) -> list[SourceSpec]:
    """The sources of a spec whose data lives in the user's files (needs_root), each once, in spec order."""
    found: dict[str, SourceSpec] = {}
    for value in _nested(spec, SourceSpec):
        try:
            if get_source(value.name).needs_root:
                found.setdefault(value.to_json(), value)
        except RelinkError:
            pass  # an unknown source fails the job itself, with its own message
    return list(found.values())


def matches_side_information(spec: Any) -> bool:
    """Whether an audit inside `spec` matches pools on side information (sex, age band, year: SIDE_COLUMNS)."""
    return any(set(m.split("+")) & set(SIDE_COLUMNS) for audit in _nested(spec, AuditSpec) for m in audit.match)


def data_inputs(spec: Any) -> dict[str, Any] | None:
    """{"data_hash", "n_pairs"} of the file-based sources `spec` reads (None when it reads none). With one
    source the hash is that source's `SourceData.digest()`, the one an AuditResult records, except that the side
    information columns count only when the spec matches pools on them (matches_side_information): no other
    result depends on them, so a source that starts to give them recomputes only the runs that use them."""
    digests, n_pairs = [], 0
    side = matches_side_information(spec)
    for src in file_sources(spec):
        data = load_source(src.name, root=src.root, section_policy=src.section_policy, **src.options)
        digests.append(data.digest(side_information=side))
        n_pairs += len(data.pairs)
    if not digests:
        return None
    return {"data_hash": combined_digest(digests), "n_pairs": n_pairs}
