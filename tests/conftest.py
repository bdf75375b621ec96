from __future__ import annotations

pytest_plugins = [
    "tests.plugins.rust",
    "tests.plugins.registry",
    "tests.plugins.runtime",
    "tests.plugins.hatch",
]
