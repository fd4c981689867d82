"""kombu's Redis transport, with one fix: a channel whose connection was already released
(Celery closes a broken broker connection after ``collect()`` released it, and acks of
messages from that channel can still arrive) failed with ``AttributeError`` while building a
new Redis client, an error neither kombu nor Celery expects there, so the worker stopped
("Unrecoverable error") on a Redis restart (found by the fault suite's Redis scenario, 3 of 5
runs). It now raises Redis's ``ConnectionError``, which both handle: the close is ignored,
the ack is logged as failed, the consumer reconnects, and the unacknowledged messages come
back from Redis's unacked set after the visibility timeout.

Used for ``redis://`` / ``rediss://`` brokers (``shared.celery_app``); other URLs use their
own transport."""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError

TRANSPORT = "jobfit.shared.redis_transport:Transport"


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise RedisConnectionError("the channel's broker connection was already released")
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call]


class Transport(kombu_redis.Transport):
    Channel = Channel
