"""Selective-scan (Mamba-1) engine. See `neurofuse.ssm.scan` for semantics, shapes and backends."""

from neurofuse.ssm.reference import selective_scan_ref
from neurofuse.ssm.scan import BACKENDS, available_backends, selective_scan

__all__ = ["BACKENDS", "available_backends", "selective_scan", "selective_scan_ref"]
