"""The weights hash: one digest of a model's state_dict, recorded with every run that used the model.

sha256 over the tensors in sorted name order, each contributing its name, dtype, shape and raw bytes (CPU,
contiguous, native little-endian on every supported machine). It reads the tensors themselves, not a file, so it
does not depend on how torch serialises a checkpoint (zip layout, pickle protocol, storage sharing): two models
with equal weights have equal hashes, and one changed bit changes it. ViT-B/16 (about 600 MB) takes about a
second; the demo model a few milliseconds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

HASH_CHARS = 16  # hex characters kept (64 bits): as short as the other identities the runs record


def state_dict_digest(state: Mapping[str, Any]) -> str:
    """The weights hash of a state_dict (name -> tensor): HASH_CHARS hex characters of the sha256 described above."""
    import torch  # late: the registry and the pages import backend.models without torch

    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor):
            continue  # e.g. an int buffer stored as a Python value: not weights
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}\0{flat.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()[:HASH_CHARS]
