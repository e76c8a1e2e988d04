"""Selective-scan (Mamba-1) engine. See `neurofuse.ssm.scan` for semantics and shapes."""

from neurofuse.ssm.reference import selective_scan_ref
from neurofuse.ssm.scan import selective_scan

__all__ = ["selective_scan", "selective_scan_ref"]
