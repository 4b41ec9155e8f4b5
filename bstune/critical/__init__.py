"""The critical batch size measured directly, from branches of one reference run.

See :mod:`bstune.critical._branching` for the method; the entry point is
:func:`measure_critical_batch`.
"""

from bstune.critical._branching import measure_critical_batch
from bstune.critical._results import (
    BranchRun,
    BranchSettings,
    CriticalBatchMeasurement,
    SegmentMeasurement,
)

__all__ = [
    "BranchRun",
    "BranchSettings",
    "CriticalBatchMeasurement",
    "SegmentMeasurement",
    "measure_critical_batch",
]
