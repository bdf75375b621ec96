"""Small helpers shared by the test suite."""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(ok: object, what: str) -> None:
    """Skip when a prerequisite is missing -- except in CI, where that is a failure.

    A green CI run must mean every test really ran.
    """
    if ok:
        return
    if IN_CI:
        pytest.fail(f"prerequisite missing in CI: {what}", pytrace=False)
    pytest.skip(f"prerequisite missing: {what}")
