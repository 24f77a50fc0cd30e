"""One small exception hierarchy. Every message says what happened and what to do about it."""

from __future__ import annotations


class RelinkError(Exception):
    """Base class of every error this project raises on purpose (never raise bare Exception)."""


class SourceError(RelinkError):
    """A dataset could not be loaded: missing folder, file, column, section, or an unknown source."""


class ImageReadError(SourceError):
    """One image could not be read (missing, unreadable or corrupt)."""


class SpecError(RelinkError):
    """A job specification is invalid (bad epsilon, unknown pool kind, ...)."""


class DeviceError(SpecError):
    """The requested compute device is unknown or not present on this machine (e.g. cuda without CUDA)."""


class ModelUnavailableError(RelinkError):
    """A model cannot be built or its weights cannot be fetched (offline, missing checkpoint)."""


class PrivacyBudgetError(SpecError):
    """The accountant cannot reach the requested (epsilon, delta) with the given schedule."""


class StoreError(RelinkError):
    """The results database could not be opened or written (e.g. locked for too long)."""


class CacheError(RelinkError):
    """The cache folder (CXR_CACHE_DIR) cannot be created or written."""


class OutputError(RelinkError):
    """An output file (a result JSON, an export, embeddings) could not be written; what was there is kept."""


class JobError(RelinkError):
    """A background job failed, was cancelled, or is unknown."""


class UnknownRunError(StoreError):
    """A run id that is not in the results database (a typo, or another CXR_CACHE_DIR)."""
