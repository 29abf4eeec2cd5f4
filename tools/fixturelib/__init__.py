"""Building blocks of ``tools/make_fixtures.py`` (tiny reference checkpoints in the released layout)."""
