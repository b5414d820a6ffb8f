"""Garbage collection in a web process that holds thousands of sockets.

The process freezes what start-up built and collects less often
(WEB_GC_THRESHOLDS), so a full collection does not stop the event loop
every few seconds under load. Why, and what was measured: docs/performance.md,
"Garbage collection in the web process".
"""

from __future__ import annotations

import gc


def tune_for_server(thresholds: tuple[int, ...]) -> None:
    """Freeze the objects start-up built and set the collector's thresholds."""
    gc.collect()  # so garbage from start-up is not frozen with the rest
    gc.freeze()
    gc.set_threshold(*thresholds)
