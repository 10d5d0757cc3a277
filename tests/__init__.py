"""The test suite is a package so that every helper module has one name, ``tests.<module>``.

Without this file pytest put ``tests/`` itself on ``sys.path`` and the repository root was there
too, so ``from rlds_helpers import`` and ``from tests.rlds_helpers import`` loaded the same file
twice as two modules (two copies of module state); with it only the ``tests.`` spelling imports.
It also keeps a third-party ``tests`` namespace directory in site-packages from merging with ours.
"""
