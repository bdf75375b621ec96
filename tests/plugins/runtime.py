"""Fixtures for the runtime tests (filled in by that area)."""

from __future__ import annotations
