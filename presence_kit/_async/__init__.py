"""The asyncio code, written once; ``.ci/unasync.py`` generates the blocking twins
in :mod:`presence_kit._sync` from it."""
