"""kombu's Redis transport, with one fix: a channel whose connection was already released
(Celery closes a broken broker connection after ``collect()`` released it, and acks of
messages from that channel can still arrive) failed with ``AttributeError`` while building a
new Redis client, an error neither kombu nor Celery expects there, so the worker stopped
("Unrecoverable error") on a Redis restart (found by the fault suite's Redis scenario, 3 of 5
runs). It now raises Redis's ``ConnectionError``, which both handle: the close is ignored,
the ack is logged as failed, the consumer reconnects, and the unacknowledged messages come
back from Redis's unacked set after the visibility timeout.

And two changes. Leases: kombu keeps each delivered, unacknowledged message in a sorted set
scored by the time it was delivered, and any worker puts back on its queue the messages
older than the visibility timeout (their worker is presumed dead). One timeout cannot serve
both a 2-second ingest batch and a 30-minute retrain: here a worker renews, on its event loop
every ``sweep_interval_s`` (a sixth of the timeout, 1 to 10 s), the score of every message it
holds (``QoS.renew_leases``). A message comes back only when its worker stopped renewing
(killed, or its loop stuck) for a whole timeout: a minute by default, however long the task
runs. Every worker also looks for expired ones at that interval (kombu's
``unacked_restore_interval``).

And on a worker's event loop, the acknowledgements made in one turn of the loop
(an ingest batch's, ``tasks.consumer``) are written together, in one pipeline at the next
turn, instead of one round trip per message (``QoS``).

Used for ``redis://`` / ``rediss://`` brokers (``shared.celery_app``); other URLs use their
own transport."""

from __future__ import annotations

import logging
import time
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from redis.exceptions import ConnectionError as RedisConnectionError

log = logging.getLogger(__name__)

TRANSPORT = "jobfit.shared.redis_transport:Transport"


def sweep_interval_s(visibility_timeout_s: float) -> float:
    """How often a worker renews its leases and looks for expired ones: a sixth of the
    visibility timeout, between 1 and 10 s (a renewal late by most of a timeout is needed to
    lose a lease; an expired one is found at most this long after it expired)."""
    return min(10.0, max(1.0, visibility_timeout_s / 6))


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

    def renew_leases(self) -> int:
        """Score every message this channel holds (delivered, not yet acknowledged) with the
        time now, so no worker puts it back while this one lives; returns how many. ``XX``:
        a message acknowledged meanwhile is not added back."""
        tags = list(self._delivered)
        if tags:
            with self.channel.conn_or_acquire() as client:
                client.zadd(self.unacked_index_key, dict.fromkeys(tags, time.time()), xx=True)
        return len(tags)

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
    lease_timer: Any = None

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        super().register_with_event_loop(connection, loop)  # type: ignore[no-untyped-call]
        self.event_loop = loop
        if self.lease_timer is not None:
            self.lease_timer.cancel()
        timeout = connection.client.transport_options.get(
            "visibility_timeout", kombu_redis.Channel.visibility_timeout
        )
        self.lease_timer = loop.call_repeatedly(sweep_interval_s(timeout), self.renew_leases)

    def renew_leases(self) -> None:
        """Renew the leases of every open channel's messages (on the event loop, as its acks);
        a connection that has no channel left (closed: Celery made a new one) stops its timer.
        A renewal that fails (Redis unreachable) is logged; the next one may succeed."""
        channels = list(self.channels)
        if not channels:
            if self.lease_timer is not None:
                self.lease_timer.cancel()
            return
        for channel in channels:
            try:
                channel.qos.renew_leases()
            except Exception:  # on the event loop: never raise into it
                log.warning("could not renew the leases of held messages", exc_info=True)
