"""Progress bars for the phases of a study that take more than a few seconds.

One mechanism for all of them: a tqdm bar on stderr, as Optuna's bar over trials is
(the one place library code writes to a stream; everything else goes through
``logging``). The caller decides whether bars are shown: ``Study(progress=...)``,
``run_probe(progress=...)``, and on the command line ``--progress``/``--no-progress``
(default: when stderr is a terminal).
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

__all__ = ["progress_bar"]


def progress_bar(enabled: bool, desc: str, *, total: float | None = None, unit: str = "it") -> Any:
    """A tqdm bar named ``desc`` on stderr counting ``unit`` up to ``total``; does nothing unless ``enabled``.

    Use it as a context manager; ``update(n)`` advances it.

    Example:
        >>> with progress_bar(False, "probe: LR range test", total=3, unit="step") as bar:
        ...     bar.update(3)
    """
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=not enabled,
        file=sys.stderr,  # looked up at each call, so a redirected stderr is honoured
        dynamic_ncols=True,
        leave=True,
    )
