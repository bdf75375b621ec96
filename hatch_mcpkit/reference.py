from __future__ import annotations
def parse_repository(s: str) -> object:
    return s
