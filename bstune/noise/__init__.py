"""Gradient noise scale: estimators, intervals, the exact reference and in-training tracking.

See McCandlish et al. 2018, "An Empirical Model of Large-Batch Training", App. A.
"""

from bstune.noise._curvature import (
    CURVATURE_MAX_PARAMS,
    CurvatureNoiseEstimate,
    curvature_skip_reason,
    measure_curvature_noise_scale,
)
from bstune.noise._estimate import NoiseScaleEstimate, ratio_interval, summarize
from bstune.noise._gradients import adam_preconditioner, per_example_gradients, sq_norm_of
from bstune.noise._measure import exact_noise_scale, measure_noise_scale, resolve_device
from bstune.noise._per_example import PerExampleNorms
from bstune.noise._tracker import NoiseTracker, TrajectoryPoint, seed_spread_interval
from bstune.noise._two_batch import per_example_estimate, two_batch_estimate

__all__ = [
    "CURVATURE_MAX_PARAMS",
    "CurvatureNoiseEstimate",
    "NoiseScaleEstimate",
    "NoiseTracker",
    "PerExampleNorms",
    "TrajectoryPoint",
    "adam_preconditioner",
    "curvature_skip_reason",
    "exact_noise_scale",
    "measure_curvature_noise_scale",
    "measure_noise_scale",
    "per_example_estimate",
    "per_example_gradients",
    "ratio_interval",
    "resolve_device",
    "seed_spread_interval",
    "sq_norm_of",
    "summarize",
    "two_batch_estimate",
]
