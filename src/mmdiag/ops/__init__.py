"""Fused and reference tensor ops: the selective scan (Mamba S6) and SS2D's cross-scan."""

from mmdiag.ops.cross_scan import (
    cross_merge,
    cross_merge_ref,
    cross_scan,
    cross_scan_ref,
    cross_selective_scan,
    direction_positions,
)
from mmdiag.ops.selective_scan import IMPLS, ScanImplError, selective_scan, selective_scan_ref

__all__ = [
    "IMPLS",
    "ScanImplError",
    "cross_merge",
    "cross_merge_ref",
    "cross_scan",
    "cross_scan_ref",
    "cross_selective_scan",
    "direction_positions",
    "selective_scan",
    "selective_scan_ref",
]
