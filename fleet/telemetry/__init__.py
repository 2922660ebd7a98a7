"""Telemetry: the per-box live status, the raw sample store (partitioned), rollups and retention."""
