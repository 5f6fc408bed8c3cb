"""Fixtures shared by every test package."""

from __future__ import annotations

import pytest

from mdiff.provenance import keys


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A development signing identity in a fresh MDIFF_HOME (also set in the environment)
    for the module. ``tests/provenance`` overrides it with an empty home per test."""
    path = tmp_path_factory.mktemp("mdiff-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MDIFF_HOME", str(path))
        keys.init_dev_identity(path)
        yield path


def pytest_terminal_summary(terminalreporter):
    """The bad-input corpus's totals (tests/corpus.py), when any of its cases ran."""
    from tests.corpus import OUTCOMES, TOTALS

    if TOTALS:
        counts = ", ".join(f"{TOTALS[k]} {k}" for k in OUTCOMES)
        terminalreporter.write_line(f"bad-input corpus: {sum(TOTALS.values())} cases: {counts}")
