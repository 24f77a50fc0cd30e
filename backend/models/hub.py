"""Fail-fast access to hub weights: check the local caches first and never contact the network
when offline, so that a model that cannot be had raises ModelUnavailableError at once (no hang)."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from backend import settings
from backend.errors import ModelUnavailableError

log = logging.getLogger(__name__)

# open_clip looks for these weight files in a hub repo (safetensors first)
OPEN_CLIP_WEIGHTS: tuple[str, ...] = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def cached_file(repo_id: str, filenames: tuple[str, ...]) -> str | None:
    """The local Hugging Face cache path of the first of `filenames` cached for `repo_id`, or None."""
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        found = try_to_load_from_cache(repo_id, name)
        if isinstance(found, str) and Path(found).is_file():
            return found
    return None


def how_to_fix(model: str, repo_id: str) -> str:
    return (f"Pre-download it on a machine with internet (e.g. `hf download {repo_id}` into the Hugging Face "
            f"cache, then copy ~/.cache/huggingface here), unset HF_HUB_OFFLINE/CXR_OFFLINE to allow the download, "
            f"or use model local:<path>#<config> with a checkpoint on disk.")


def require_cached(model: str, repo_id: str, filenames: tuple[str, ...], url_file: Path | None = None) -> None:
    """Raise ModelUnavailableError now when none of `filenames` is cached and we are offline.

    Online, an uncached file is left to open_clip to download (errors go through translate_errors)."""
    if cached_file(repo_id, filenames) or (url_file is not None and url_file.is_file()):
        return
    if settings.hub_offline():
        raise ModelUnavailableError(
            f"Model {model!r} is not in the local cache ({repo_id}: {' or '.join(filenames)}) and the hub is "
            f"offline (HF_HUB_OFFLINE=1 or CXR_OFFLINE=1). {how_to_fix(model, repo_id)}")
    if not reachable():
        raise ModelUnavailableError(
            f"Model {model!r} is not in the local cache and the Hugging Face hub ({_endpoint_host()}) cannot be "
            f"reached from this machine. {how_to_fix(model, repo_id)}")
    log.info("%s: %s not cached; downloading from the Hugging Face hub", model, repo_id)


def _endpoint_host() -> str:
    return urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"


def reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host accepts a TCP connection within `timeout` seconds (True behind a proxy,
    where a direct connection says nothing), so that a machine without network fails fast."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    try:
        with socket.create_connection((_endpoint_host(), 443), timeout=timeout):
            return True
    except OSError:
        return False


def require_module(model: str, module: str, why: str) -> None:
    """Raise ModelUnavailableError when an optional package a model needs is not installed."""
    if importlib.util.find_spec(module) is None:
        raise ModelUnavailableError(
            f"Model {model!r} needs the {module!r} package ({why}). Install it into this environment "
            f"(pin it in requirements.txt) and try again.")


@contextlib.contextmanager
def translate_errors(model: str, checkpoint: str | None = None) -> Iterator[None]:
    """Turn any failure to build or fetch a model (network, missing file, bad checkpoint) into one clear
    ModelUnavailableError; open_clip and huggingface_hub raise many unrelated exception types. `checkpoint`: the
    file or folder of a local model (nothing is downloaded: the message is about that file, not the network)."""
    try:
        yield
    except ModelUnavailableError:
        raise
    except Exception as exc:  # noqa: BLE001 -- third-party download/build errors of every kind
        if checkpoint is not None:
            raise ModelUnavailableError(
                f"Model {model!r}: the checkpoint {checkpoint} could not be loaded ({type(exc).__name__}: "
                f"{(str(exc).strip().splitlines() or [''])[0][:300]}). "
                "Check that it is a complete open_clip (or CLIP) checkpoint of the architecture named after '#' "
                "(a folder needs its open_clip_config.json beside the weights).") from exc
        raise ModelUnavailableError(
            f"Model {model!r} could not be loaded: {type(exc).__name__}: {exc}. Check the network or the "
            f"checkpoint path; pre-download into the Hugging Face cache, or use local:<path>#<config>.") from exc
