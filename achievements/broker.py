"""The Redis broker transport, with one kombu failure mode turned into a recoverable one.

When the broker connection drops while a worker holds unacknowledged
messages, kombu closes the channel and tries to restore those messages. If
the connection object has already been released by then, the transport
builds its connection parameters from `None` and raises AttributeError.
Celery treats an AttributeError as unrecoverable and the worker exits
("Unrecoverable error: AttributeError('NoneType' object has no attribute
'hostname')"); the soak test hit this when Redis restarted (bench/soak.py).

Raising the transport's own connection error instead lets kombu's cleanup
ignore it and Celery's consumer reconnect as it does for any lost broker.
The messages that could not be restored stay in Redis's unacked set until
the visibility timeout, and the stranded-event sweeper re-enqueues their
events long before that.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection is None or self.connection.client is None:
            raise kombu_redis.get_redis_ConnectionError()(
                "the broker connection was released; reconnecting"
            )
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel
