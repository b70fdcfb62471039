# Generated from presence_kit/_async/__init__.py by .ci/unasync.py: do not edit.
# Change the asyncio original, then run `make unasync`.
"""The asyncio code, written once; ``.ci/unasync.py`` generates the blocking twins
in :mod:`presence_kit._sync` from it."""
