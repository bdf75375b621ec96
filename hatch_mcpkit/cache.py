"""Deprecated import path: the store now lives in :mod:`hatch_mcpkit.store`."""

from __future__ import annotations

from hatch_mcpkit.store import BundleCache, CacheEntry, PullOptions, PullResult, default_home

__all__ = ["BundleCache", "CacheEntry", "PullOptions", "PullResult", "default_home"]
