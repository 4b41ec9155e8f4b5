"""Declarative search spaces: what a study may vary, and within which limits.

Batch size and learning rate are not listed as ordinary parameters: the study
searches them in coordinates aligned with the LR rule η ∝ B^α (ln η/η_rule(B)),
drawing its first trials from the band below the measured noise scale B_noise and
fewer and fewer after (``prior``: widths of the band and the rule, ``weight`` of the
draws, ``lr_search_width`` of the search around the rule).
``batch_size`` and ``lr`` give hard limits for those, and the bounds of the
log-uniform LR of the baseline (prior-free) mode. Everything else goes in
``params``: a TrainConfig setting or a keyword of the model factory (``model.*``).

A space is a YAML file (read with ``yaml.safe_load`` only: no tag runs code)::

    name: mlp_classifier
    optimizer: {family: sgd, momentum: 0.9, weight_decay: 0.0}   # OptimizerSpec fields
    batch_size: {min: 8, max: 1024}        # max: null means the training-set size
    lr: {min: 1.0e-4, max: 3.0}
    prior: {batch_width: 4, batch_top: 1, lr_width: 3, lr_search_width: 30, weight: 3, adam_alpha: 0.8, lr_anchor: 0.25}
    params:
      weight_decay: {type: float, low: 1.0e-6, high: 1.0e-2, log: true}
      warmup_fraction: {type: float, low: 0.0, high: 0.2}
      schedule: {type: categorical, choices: [constant, cosine]}
      model.hidden: {type: int, low: 32, high: 256, log: true}

Only ``name`` is required. A parameter also fixed under ``optimizer`` is searched
(the search overrides the fixed value). Note that YAML reads ``1e-4`` (no dot) as
a string; numeric strings are accepted wherever a number is expected.

Every problem raises :class:`~bstune.errors.ConfigError` naming the file, the
dotted key (``params.weight_decay.low``) and what was expected.

Example:
    >>> space = SearchSpace.from_dict({"name": "demo", "batch_size": {"min": 8, "max": 512}})
    >>> space.batch_min, space.batch_max, space.optimizer.family
    (8, 512, 'sgd')
    >>> SearchSpace.from_dict({"name": "demo", "batch_size": {"min": 0}})
    Traceback (most recent call last):
    ...
    bstune.errors.ConfigError: <dict>: batch_size.min: must be a positive integer, got 0
"""

from bstune.space._param import MODEL_PREFIX, ParamSpec
from bstune.space._space import PriorSettings, SearchSpace

__all__ = ["MODEL_PREFIX", "ParamSpec", "PriorSettings", "SearchSpace"]
