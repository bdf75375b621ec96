"""Hatch glue: build hook, builder, publisher and environment collector named ``mcpkit``."""
