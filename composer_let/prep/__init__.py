"""Tooling around the method: teacher preparation, corpora as MDS shards, SALT_DS selection, tiny offline
assets for tests and benchmarks, and the quickstart. Nothing here is needed to train with ``let``/``salt``."""
