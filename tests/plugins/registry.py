"""Fixtures for the registry tests (filled in by that area)."""

from __future__ import annotations
