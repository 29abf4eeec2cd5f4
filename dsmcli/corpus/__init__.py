"""Corpus-scale runs of ``dsm transcribe`` / ``dsm speak``: many inputs, resumable and recorded.

* ``inputs``: files, directories (``--recursive``, ``--glob``) and ``--inputs LIST`` → input paths, and the
  ``--shard I/N`` split (a stable hash of each path, so N job-array tasks take disjoint parts).
* ``atomic``: outputs written under a temporary name and renamed when complete.
* ``manifest``: one JSON line per input as it finishes (``ok`` / ``failed`` / ``skipped``).
* ``record``: the hooks the run modules call as inputs open, produce words and finish.
* ``plan``: the ``--resume`` check and the corpus run of ``dsm transcribe`` / ``dsm speak``.
* ``ray_api`` / ``ray_runner``: the same job on a Ray cluster (``dsm transcribe --ray``), and a callable
  class for ``ray.data.Dataset.map_batches``.
"""
