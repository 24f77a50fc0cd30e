"""Pre-projection features and projection heads of open_clip towers (what the DP heads retrain).

Every supported tower ends in one linear map, its *projection head*:

| tower                         | head (the final linear map)               |
| ---                           | ---                                       |
| VisionTransformer             | `visual.proj` (parameter, (width, d))     |
| ModifiedResNet                | `visual.attnpool.c_proj` (Linear)         |
| TimmModel                     | last Linear of `visual.head` (proj, or fc2 of an mlp), else the trunk classifier |
| text Transformer (CLIP)       | `model.text_projection` (parameter or Linear) |
| TextTransformer (custom text) | `model.text.text_projection`              |
| HFTextEncoder                 | `model.text.proj` (Linear, or the last Linear of its mlp) |

The features are the head's input, computed by running the tower with its head swapped for the
identity; the head is returned as an `nn.Linear` copy, so `head(features) == encode_*(x)` (before
L2 normalisation) up to float rounding. For an mlp projection only its last Linear is the head
(the hidden layer stays part of the frozen encoder).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from backend.errors import ModelUnavailableError


@dataclass(frozen=True)
class HeadSlot:
    """Where a tower's head lives: `getattr(owner, attr)` is an nn.Parameter (d_in, d) or an nn.Linear."""

    owner: nn.Module
    attr: str
    identity: Callable[[], object]  # what to put in the slot so the tower outputs its features

    def current(self) -> nn.Parameter | nn.Linear | None:
        return getattr(self.owner, self.attr)

    def as_linear(self) -> nn.Linear:
        """A detached nn.Linear copy of the head: features (b, d_in) -> embedding (b, d)."""
        head = self.current()
        if head is None or isinstance(head, nn.Identity):
            raise ModelUnavailableError("This tower has no projection head; its output is already the embedding.")
        if isinstance(head, nn.Linear):
            weight, bias = head.weight.detach(), None if head.bias is None else head.bias.detach()
        else:  # parameter used as `x @ proj`
            weight, bias = head.detach().t(), None
        out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            out.weight.copy_(weight.float())
            if bias is not None:
                out.bias.copy_(bias.float())
        return out.to(weight.device)

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """Temporarily replace the head by the identity (not thread-safe: one forward at a time)."""
        original = self.current()
        setattr(self.owner, self.attr, self.identity())
        try:
            yield
        finally:
            setattr(self.owner, self.attr, original)


def _none() -> None:
    return None


def _identity_linear(template: nn.Linear) -> Callable[[], nn.Linear]:
    """An identity nn.Linear, for heads that are read as `.weight`/`.bias` instead of called."""

    def make() -> nn.Linear:
        eye = nn.Linear(template.in_features, template.in_features, bias=True)
        with torch.no_grad():
            eye.weight.copy_(torch.eye(template.in_features))
            eye.bias.zero_()
        return eye.to(device=template.weight.device, dtype=template.weight.dtype)

    return make


def _last_linear(module: nn.Module) -> tuple[nn.Module, str] | None:
    """(parent, attribute name) of the last nn.Linear registered under `module`, or None."""
    found = None
    for parent in module.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                found = (parent, name)
    return found


def _find_child(module: nn.Module, target: nn.Module) -> tuple[nn.Module, str] | None:
    """(parent, attribute name) of `target` under `module` when it is an nn.Linear, else None."""
    if not isinstance(target, nn.Linear):
        return None
    for parent in module.modules():
        for name, child in parent.named_children():
            if child is target:
                return parent, name
    return None


def _slot(owner: nn.Module, attr: str) -> HeadSlot:
    # open_clip's text towers skip a `text_projection` that is None, whether it was a Linear or a parameter
    return HeadSlot(owner, attr, _none)


def image_head_slot(visual: nn.Module) -> HeadSlot:
    """The projection head of an open_clip image tower (see the module table)."""
    kind = type(visual).__name__
    if kind == "VisionTransformer" and getattr(visual, "proj", None) is not None:
        return HeadSlot(visual, "proj", _none)
    if kind == "ModifiedResNet":
        c_proj = visual.attnpool.c_proj
        return HeadSlot(visual.attnpool, "c_proj", _identity_linear(c_proj))
    if kind == "TimmModel":
        found = _last_linear(visual.head)
        if found is None and hasattr(visual.trunk, "get_classifier"):
            found = _find_child(visual.trunk, visual.trunk.get_classifier())
        if found is not None:
            return HeadSlot(found[0], found[1], nn.Identity)
    raise ModelUnavailableError(
        f"Image tower {kind} has no supported projection head (supported: VisionTransformer with proj, "
        "ModifiedResNet, TimmModel with a linear/mlp head); pre-projection features are unavailable.")


def text_head_slot(model: nn.Module) -> HeadSlot:
    """The projection head of an open_clip text tower (see the module table)."""
    text = getattr(model, "text", None)
    if text is None:  # CLIP keeps its text tower's parts on the model itself
        if getattr(model, "text_projection", None) is None:
            raise ModelUnavailableError("This CLIP model has no text_projection; features equal embeddings.")
        return _slot(model, "text_projection")
    kind = type(text).__name__
    if kind == "TextTransformer" and getattr(text, "text_projection", None) is not None:
        return _slot(text, "text_projection")
    if kind == "HFTextEncoder":
        proj = text.proj
        if isinstance(proj, nn.Linear):
            return HeadSlot(text, "proj", nn.Identity)
        found = _last_linear(proj)
        if found is not None:
            return HeadSlot(found[0], found[1], nn.Identity)
    raise ModelUnavailableError(
        f"Text tower {kind} has no supported projection head (supported: CLIP text transformer, "
        "TextTransformer, HFTextEncoder with a linear/mlp proj); pre-projection features are unavailable.")

