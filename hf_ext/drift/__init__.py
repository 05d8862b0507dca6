"""Representation dumping and drift analysis.

- :mod:`.recorders`: hooks that capture pooled hidden states of the embeddings and every block.
- :mod:`.shards`: safetensors dumps written by a background thread, resumable, read shard by shard.
- :mod:`.metrics`: streaming linear and debiased CKA and cosine (:func:`linear_cka`).
- :mod:`.measure`: drift between two dumps, or of a live model against its base.
- :mod:`.stats`: paired permutation tests and bootstrap intervals.
- :mod:`.callbacks`: :class:`DriftCallback`, drift logged during training.
- :mod:`.config`, :mod:`.study`, :mod:`.analysis`: the full-vs-LoRA study of ``recipes/drift.py``.
"""
