"""Every example in the pure core's docstrings runs as written (a doctest that nobody runs rots: state.py's
example of `glob_word` had said the opposite of what it does)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import pyinfra_backup

MODULES = sorted(info.name for info in pkgutil.iter_modules(pyinfra_backup.__path__))


@pytest.mark.parametrize("name", MODULES)
def test_the_examples_of_each_core_module_run_as_written(name):
    module = importlib.import_module(f"pyinfra_backup.{name}")
    assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0
