"""Tools beside the measurements: ``python -m bench.tools.<name>`` (see bench/README.md).

* ``decompose``: our code versus the Redis work it asks for (also a table of the main
  run, ``--only decompose``).
* ``profile_hot_path``: pyinstrument on measurement 1's path (``--only profile``).
* ``sweep``: how long one dead node's sweep takes, for N connections.
* ``instructions``, ``frames``: our code in instructions per cycle (callgrind); the calls
  from a disconnect handler to its script's send.
* ``update_count``: ``handle_update`` against a disconnect and a connect; ``count_online``
  at 10 and 20,000 online users.
* ``metrics_cost``: what the OpenTelemetry metrics add per handler call.
* ``feed_cost``: what the presence feed adds per handler call, and Redis bytes per feed
  entry.
"""
