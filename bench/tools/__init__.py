"""Tools beside the measurements: ``python -m bench.tools.<name>`` (see bench/README.md).

* ``decompose``: our code versus the Redis work it asks for (also a table of the main
  run, ``--only decompose``).
* ``profile_hot_path``: pyinstrument on measurement 1's path (``--only profile``).
* ``sweep``: how long one dead node's sweep takes, for N connections.
"""
