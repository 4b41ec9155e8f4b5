"""Connections to training frameworks, each an optional extra imported on its own.

- :mod:`bstune.integrations.lightning` (``pip install 'bstune[lightning]'``): a Lightning
  ``Trainer`` as a bstune trial: :func:`~bstune.integrations.lightning.fit` and
  :class:`~bstune.integrations.lightning.BstuneCallback`.

``import bstune`` imports none of them.
"""

__all__: list[str] = []
