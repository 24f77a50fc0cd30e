"""Test helpers: seeded stores, tiny models, dataset fixtures and the browser kit (also used by bench/)."""
