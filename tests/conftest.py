from __future__ import annotations

import os
import re
from pathlib import Path

pytest_plugins = [
    "tests.plugins.rust",
    "tests.plugins.registry",
    "tests.plugins.runtime",
    "tests.plugins.hatch",
    "tests.faultproxy",  # the fault_proxy fixture
]

_ENV_FILES = ("registry-env.sh",)


def _load_setup_env() -> None:
    """Take the variables ``.ci/setup`` recorded (e.g. DOCKER_HOST for the podman socket).

    So that plain ``python -m pytest`` works after ``bash .ci/setup`` without sourcing anything.
    Variables already set in the environment win.
    """
    cache = Path(__file__).resolve().parents[1] / ".ci" / "cache"
    for name in _ENV_FILES:
        path = cache / name
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            m = re.fullmatch(r'\s*export ([A-Za-z_][A-Za-z0-9_]*)=(?:"(.*)"|\'(.*)\'|(\S*))\s*', line)
            if m:
                os.environ.setdefault(m.group(1), next(g for g in m.groups()[1:] if g is not None))


_load_setup_env()
