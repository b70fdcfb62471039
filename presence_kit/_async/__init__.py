"""The asyncio code, written once; ``.ci/unasync.py`` makes :mod:`presence_kit._sync` of it."""
