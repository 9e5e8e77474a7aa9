"""Fuzz targets for every parser of outside bytes, shared by ``tests/fuzz`` and ``bench.fuzz``.

One module per parser, each defining ``TARGET`` (a :class:`fuzzing.harness.Target`);
``tests/fuzz/test_fuzz_*.py`` run them under hypothesis, ``python -m bench.fuzz``
in a seeded mutation loop. Nothing here imports ``tests/``.
"""
