"""kombu's Redis transport, with one fix: a channel whose connection was already released
(Celery closes a broken broker connection after ``collect()`` released it, and acks of
messages from that channel can still arrive) failed with ``AttributeError`` while building a
new Redis client, an error neither kombu nor Celery expects there, so the worker stopped
("Unrecoverable error") on a Redis restart (found by the fault suite's Redis scenario, 3 of 5
runs). It now raises Redis's ``ConnectionError``, which both handle: the close is ignored,
the ack is logged as failed, the consumer reconnects, and the unacknowledged messages come
back from Redis's unacked set after the visibility timeout.

And one change: on a worker's event loop, the acknowledgements made in one turn of the loop
(an ingest batch's, ``tasks.consumer``) are written together, in one pipeline at the next
turn, instead of one round trip per message (``QoS``).

Used for ``redis://`` / ``rediss://`` brokers (``shared.celery_app``); other URLs use their
own transport."""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from redis.exceptions import ConnectionError as RedisConnectionError

log = logging.getLogger(__name__)

TRANSPORT = "jobfit.shared.redis_transport:Transport"


class QoS(kombu_redis.QoS):
    """kombu's Redis acknowledgement emulation, its acks written together on an event loop.

    kombu writes each ack as it is made: one round trip per message (the message leaves the
    unacked index and hash). With an event loop (a worker's), an ack is queued and the loop
    writes the acks queued during its turn in one pipeline at its next turn; a batch's
    messages, acknowledged in one turn, cost one round trip. Safe for at-least-once: an ack
    is only ever later, never earlier; one not yet written when the worker dies leaves its
    message in the unacked set, delivered again (and found done: ``tasks.delivery``); one
    not yet written when the channel closes (a warm shutdown) is written first, before kombu
    puts the unacknowledged messages back on the queue."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._acks: list[Any] = []

    def ack(self, delivery_tag: Any) -> None:
        loop = getattr(self.channel.connection, "event_loop", None)
        if loop is None:
            super().ack(delivery_tag)  # type: ignore[no-untyped-call]
            return
        if not self._acks:
            loop.call_soon(self.flush_acks)
        self._acks.append(delivery_tag)

    def flush_acks(self) -> None:
        """Write the queued acks (one pipeline). On an error they are logged and left
        unwritten: their messages stay unacknowledged, and come back."""
        tags, self._acks = self._acks, []
        if not tags:
            return
        try:
            with self.pipe_or_acquire() as pipe:
                for tag in tags:
                    self._remove_from_indices(tag, pipe)  # type: ignore[no-untyped-call]
                pipe.execute()
        except Exception:  # on the event loop: never raise into it
            log.exception("could not acknowledge %d message(s)", len(tags))
            return
        for tag in tags:
            virtual.QoS.ack(self, tag)  # type: ignore[no-untyped-call]

    def restore_unacked(self, client: Any = None) -> None:
        """On close: the queued acks first, so finished messages are not put back."""
        self.flush_acks()
        super().restore_unacked(client)  # type: ignore[no-untyped-call]


class Channel(kombu_redis.Channel):
    QoS = QoS

    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise RedisConnectionError("the channel's broker connection was already released")
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call]


class Transport(kombu_redis.Transport):
    Channel = Channel
    # The worker's event loop, once registered with one (``QoS.ack`` queues acks on it).
    event_loop: Any = None

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        super().register_with_event_loop(connection, loop)  # type: ignore[no-untyped-call]
        self.event_loop = loop
