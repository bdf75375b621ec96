"""Fixtures for the rust tests (filled in by that area)."""

from __future__ import annotations
