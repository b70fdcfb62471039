"""presence_kit's benchmark suite (issue #6): ``python -m bench`` or ``make bench``.

See ``bench/README.md`` for what is measured and how to read the results.
"""
