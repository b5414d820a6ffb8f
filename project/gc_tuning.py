"""Garbage collection in a web process that holds thousands of sockets.

CPython frees most objects by reference counting; its cyclic collector is
for the rest, and a collection of the oldest generation walks every tracked
object the process holds. A web process holds a lot of them: about 200,000
from start-up (modules, URL patterns, templates) and about 130 for each open
socket (Twisted's and autobahn's protocol objects, the consumer and its
task). With 5,000 sockets that is some 900,000 objects, and a full
collection stops the event loop for 0.5 to 1 s on this project's 2-core
benchmark machine.

With Python's default thresholds (700, 10, 10), and 500 events/s pushed to
5,000 sockets, such a full collection ran every 2.5 to 5 s: about a third of
the process's time, and every pushed frame waiting behind it. Full
collections are triggered by objects surviving the younger ones, and with a
collection every 700 allocations, everything in flight at that moment (a
request, a frame on its way) survives.

So the web process, once its application is loaded:

- freezes what start-up built (`gc.freeze()`): it lives as long as the
  process, and no collection looks at it again;
- collects the youngest generation every 5,000 allocations instead of 700,
  so fewer objects that are merely in flight get promoted. In 20 s at
  500 events/s this left no full collection at all; 2,000 promoted more and
  spent more time collecting than 5,000;
- waits for 100 middle-generation collections between full ones, not 10,
  so a reconnect storm (every socket's objects promoted at once) does not
  bring one every few seconds. Python also waits until the objects
  promoted since the last one reach a quarter of the oldest generation,
  so this is a minimum gap, not a schedule. Not more than 100: garbage
  that reached the oldest generation (the cycles of a socket that closed)
  waits for a full collection.

The middle generation's collections remain, about one every 5 s at
500 events/s. They took 100 to 150 ms each while every socket had a
channel of its own, because each socket's pending receive (a task, its
coroutine, asyncio.wait's futures) was replaced after every message and
outlived the youngest generation; with the sockets fed by one hub per
process (achievements.hub.SocketHub) they take 13 to 30 ms, and the
young collections at most about 30 ms. The cyclic garbage they find is
mostly what Django's ASGI handler leaves per request: a cancelled
disconnect listener with its traceback. (A database wrapper for each
request's new thread was another; project/asgi.py now keeps its threads.)

bench/latency.py measured the effect (README, Performance). The thresholds
are the WEB_GC_THRESHOLDS setting; "700,10,10" restores Python's. They
mean this on CPython 3.11 to 3.13; 3.14's incremental collector reads
them differently, so measure again before moving to it.
"""

from __future__ import annotations

import gc


def tune_for_server(thresholds: tuple[int, ...]) -> None:
    """Freeze the objects start-up built and set the collector's thresholds."""
    gc.collect()  # so garbage from start-up is not frozen with the rest
    gc.freeze()
    gc.set_threshold(*thresholds)
