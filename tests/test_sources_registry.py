"""The source registry: the real-data sources are registered, unknown names get a clear error."""

from __future__ import annotations

import pytest

from backend.errors import SourceError
from backend.sources import get_source, list_sources, load_source


def test_real_sources_registered_with_flags() -> None:
    names = {info.name for info in list_sources()}
    assert {"openi", "mimic-cxr", "chexpert-plus", "csv"} <= names
    assert get_source("mimic-cxr").credentialed and get_source("chexpert-plus").credentialed
    assert not get_source("openi").credentialed and get_source("openi").needs_root
    assert all(get_source(n).needs_root for n in ("mimic-cxr", "chexpert-plus", "csv"))


def test_unknown_source_names_the_known_ones() -> None:
    with pytest.raises(SourceError, match=r"Unknown source 'mimic'.*mimic-cxr"):
        load_source("mimic")


@pytest.mark.parametrize("name", ["mimic-cxr", "chexpert-plus", "csv"])
def test_credentialed_and_own_sources_need_a_folder(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CXR_MIMIC_ROOT", raising=False)
    monkeypatch.delenv("CXR_CHEXPERT_PLUS_ROOT", raising=False)
    with pytest.raises(SourceError, match="needs a data folder"):
        load_source(name)


@pytest.mark.parametrize("name", ["openi", "mimic-cxr", "chexpert-plus", "csv"])
def test_unknown_options_are_rejected(name: str, tmp_path) -> None:
    with pytest.raises(SourceError, match="Unknown option"):
        load_source(name, root=str(tmp_path), no_such_option=1)
