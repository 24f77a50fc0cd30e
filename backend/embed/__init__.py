"""Embeddings of one split under one model: the `EmbeddingSet` and its files (backend/embed/files.py,
torch-free, what the explorer and the audit read) and their computation (backend/embed/compute.py,
`embed_split`: chunked, cached by content, resumable; imports torch)."""

from backend.embed.files import META_COLUMNS, EmbeddingSet, load_embedding_set, load_npz, save_npz

__all__ = ["META_COLUMNS", "EmbeddingSet", "load_embedding_set", "load_npz", "save_npz"]
