"""The Kafka publisher: send a page of messages, flush, and succeed only if Kafka acked them all.

``publish`` returns, per (topic, partition), the offset of the page's last message there as
the broker acknowledged it (RecordMetadata): what scan markers carry (tansu misreports end
offsets, so nothing else would do).

Failure policy: any failure raises ``SinkError`` (nothing of the page counts as delivered).
The producer is shared by every stream, so it is thrown away only when it is broken
(``_broken``), not because one stream's page failed: kafka-python 3.0.12's idempotent
producer does not recover once a batch has expired (broker paused or restarted) or its
idempotent state failed, while a new producer works at once; the next ``publish`` builds
one. A refusal that concerns one page (a message over ``max_request_size``, a topic the
client may not write) keeps it, and the other streams' batches in flight with it. No
``kafka.errors`` exception leaves this module.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import structlog
from kafka import KafkaProducer
from kafka.codec import has_gzip, has_lz4, has_snappy, has_zstd
from kafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    TopicAlreadyExistsError,
)
from structlog.typing import FilteringBoundLogger

from daemon.errors import ConfigError, SinkError
from daemon.models import Message
from daemon.settings import KafkaSettings
from daemon.sink.kafka_clients import (
    CLOSE_TIMEOUT_SECONDS,
    admin_client,
    bootstrap_timeout_ms,
    client_configs,
    close_producer,
    flush_until,
    producer_configs,
)
from daemon.sink.partitioner import partition_for

# What talking to Kafka can raise: kafka-python's errors, and socket/TLS-file errors.
_KAFKA_FAILURES = (KafkaError, OSError)
_CODEC_AVAILABLE = {"gzip": has_gzip, "lz4": has_lz4, "snappy": has_snappy, "zstd": has_zstd}
# send() blocks while it waits for a topic's metadata: one round trip on a live cluster.
# Capped so a pass (and so a SIGTERM) never waits request_timeout_ms on a broker that left.
SEND_BLOCK_MS = 3000

Acked = dict[tuple[str, int], int]
"""(topic, partition) -> the offset of the last message of a publish there, as acked."""


class KafkaSink:
    """Publishes ``Message`` objects to Kafka; safe to share between stream threads.

    Construction does no network I/O, so the daemon starts (and reports not-ready) while
    Kafka is down; the producer is created by the first ``publish``.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        logger: FilteringBoundLogger | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        codec = settings.compression_type
        if codec != "none" and not _CODEC_AVAILABLE[codec]():
            raise ConfigError(
                "kafka.compression_type", f"{codec} needs a Python package that is not installed"
            )
        self._settings = settings
        # A stop request ends a flush early: what Kafka has not acknowledged stays in the
        # outbox (committed with its page) and is sent after the restart, same ids.
        self._stop = stop or threading.Event()
        self._log: FilteringBoundLogger = logger or structlog.get_logger(__name__)
        self._lock = threading.Lock()
        self._producer: KafkaProducer | None = None
        # Replaced, never mutated, so readers need no lock.
        self._known_topics: frozenset[str] = frozenset()
        password = settings.sasl_plain_password
        self._secret = password.get_secret_value() if password is not None else ""
        # kafka-python lets in-flight batches hang forever when the broker stops answering
        # (measured: 30 s+ with request_timeout_ms=1000), so publish enforces this itself.
        self._publish_timeout = settings.delivery_timeout_ms / 1000

    def __repr__(self) -> str:
        s = self._settings
        return f"KafkaSink(bootstrap={s.bootstrap_servers!r}, client_id={s.client_id!r})"

    # -- public API ----------------------------------------------------------------------

    def publish(self, messages: Sequence[Message]) -> Acked:
        """Send every message, flush, and return only when Kafka acknowledged ALL of them.

        Returns the acknowledged offset of the last message per (topic, partition).
        Otherwise raise SinkError: nothing is considered delivered (some messages may
        still reach Kafka, so a retry can duplicate them); a broken producer is closed so
        the next call builds a fresh one.
        """
        if not messages:
            return {}
        if self._settings.create_topics:
            topics = {m.topic for m in messages}
            if not topics <= self._known_topics:
                self.ensure_topics(topics)
        producer = self._current_producer()
        deadline = time.monotonic() + self._publish_timeout
        try:
            send = producer.send
            # Each topic's partitions once per page, not once per message (what the
            # default partitioner does), and the key's partition computed as Kafka does.
            layout: dict[str, list[int]] = {}
            futures = []
            for m in messages:
                partitions = layout.get(m.topic)
                if partitions is None:
                    known = producer.partitions_for(m.topic)  # waits for metadata, as send
                    partitions = layout[m.topic] = sorted(known or ())
                partition = (
                    partitions[partition_for(m.key, len(partitions))]
                    if m.key is not None and partitions
                    else None  # kafka-python's own choice
                )
                futures.append(
                    send(
                        m.topic,
                        value=m.value,
                        key=m.key,
                        headers=list(m.headers),
                        partition=partition,
                    )
                )
        except _KAFKA_FAILURES as exc:
            renewed = self._discard_if_broken(producer, exc)
            raise self._publish_error(messages, exc, renewed=renewed) from None
        except BaseException:
            self._discard(producer)
            raise
        try:
            flush_until(producer, futures, deadline, self._stop)
        except BaseException:
            self._discard(producer)
            raise
        failed = [f for f in futures if f.exception is not None or not f.is_done]
        if failed:
            # Read the cause before discarding: closing the producer fails what is pending
            # with its own, misleading "closed forcefully" error.
            first = next((f.exception for f in failed if f.exception is not None), None)
            unanswered = any(not f.is_done for f in failed)
            renewed = self._discard_if_broken(producer, first, unanswered=unanswered)
            raise self._publish_error(messages, first, failed=len(failed), renewed=renewed)
        acked: Acked = {}
        for future in futures:
            meta = future.value
            where = (meta.topic, meta.partition)
            if meta.offset > acked.get(where, -1):
                acked[where] = meta.offset
        return acked

    def ensure_topics(self, topics: Iterable[str]) -> None:
        """Create the missing ``topics`` with the configured partitions and replication.

        A no-op when ``create_topics`` is off. Idempotent: topics seen once are remembered,
        and a topic someone else created meanwhile is fine.
        """
        if not self._settings.create_topics:
            return
        wanted = set(topics) - self._known_topics
        if not wanted:
            return
        s = self._settings
        timeout_ms = s.request_timeout_ms
        missing: list[str] = []
        try:
            with admin_client(
                client_configs(s), timeout_ms, bootstrap_ms=bootstrap_timeout_ms(s)
            ) as admin:
                missing = sorted(wanted - set(admin.list_topics()))
                if missing:
                    spec = {
                        "num_partitions": s.partitions,
                        "replication_factor": s.replication_factor,
                    }
                    result = admin.create_topics(
                        {topic: spec for topic in missing},
                        timeout_ms=timeout_ms,
                        raise_errors=False,
                    )
                    self._check_created(result)
        except _KAFKA_FAILURES as exc:
            raise SinkError(
                self._scrub(
                    f"cannot create Kafka topic(s) {', '.join(sorted(wanted))} at "
                    f"{s.bootstrap_servers}: {_describe(exc)}"
                )
            ) from None
        with self._lock:
            self._known_topics = self._known_topics | wanted
        if missing:
            self._log.info(
                "kafka_topics_created",
                topics=missing,
                partitions=s.partitions,
                replication_factor=s.replication_factor,
            )

    def check_ready(self, timeout_seconds: float = 5.0) -> None:
        """Raise SinkError unless cluster metadata can be fetched within about the timeout."""
        timeout_ms = max(int(timeout_seconds * 1000), 1)
        try:
            with admin_client(client_configs(self._settings), timeout_ms) as admin:
                admin.describe_cluster()
        except _KAFKA_FAILURES as exc:
            raise SinkError(
                self._scrub(
                    f"Kafka at {self._settings.bootstrap_servers} is not reachable: "
                    f"{_describe(exc)}"
                )
            ) from None

    def close(self) -> None:
        """Deliver what is still buffered (briefly) and close the producer; safe to call twice."""
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            # Stopping: the outbox holds whatever is unsent, so do not wait for a dead broker.
            close_producer(producer, 1.0 if self._stop.is_set() else CLOSE_TIMEOUT_SECONDS)

    # -- internals -----------------------------------------------------------------------

    def _current_producer(self) -> KafkaProducer:
        with self._lock:
            if self._producer is None:
                self._producer = self._new_producer()
            return self._producer

    def _new_producer(self) -> KafkaProducer:
        s = self._settings
        try:
            producer = KafkaProducer(
                **producer_configs(s),
                # Both bound how long publish can block before the first byte is sent.
                max_block_ms=min(s.request_timeout_ms, SEND_BLOCK_MS),
                bootstrap_timeout_ms=bootstrap_timeout_ms(s),
                # When we create topics, a producer must not auto-create one first with the
                # broker's default partition count. (tansu 0.6.0 ignores this flag.)
                allow_auto_create_topics=not s.create_topics,
            )
        except _KAFKA_FAILURES as exc:
            raise SinkError(
                self._scrub(
                    f"cannot connect a Kafka producer to {s.bootstrap_servers}: {_describe(exc)}"
                )
            ) from None
        self._log.info("kafka_producer_created", bootstrap_servers=s.bootstrap_servers)
        return producer

    def _discard_if_broken(
        self, producer: KafkaProducer, exc: BaseException | None, *, unanswered: bool = False
    ) -> bool:
        """Close ``producer`` if the failure left it unfit for any stream; True if so."""
        why = _broken(producer, exc, unanswered=unanswered)
        if why is None:
            cause = _describe(exc) if exc is not None else None
            self._log.info("kafka_producer_kept", reason=cause and self._scrub(cause))
            return False
        self._log.info("kafka_producer_discarded", reason=self._scrub(why))
        self._discard(producer)
        return True

    def _discard(self, producer: KafkaProducer) -> None:
        with self._lock:
            if self._producer is producer:
                self._producer = None
        close_producer(producer, 0.0)

    def _publish_error(
        self,
        messages: Sequence[Message],
        exc: BaseException | None,
        *,
        failed: int | None = None,
        renewed: bool = True,
    ) -> SinkError:
        topics = ", ".join(sorted({m.topic for m in messages}))
        count = len(messages)
        what = f"{failed} of {count}" if failed is not None else f"a page of {count}"
        cause = _describe(exc) if exc is not None else "no answer from the broker"
        message = self._scrub(
            f"Kafka at {self._settings.bootstrap_servers} did not acknowledge {what} "
            f"message(s) for topic(s) {topics} within {self._publish_timeout:g}s: {cause}; "
            "none of them count as delivered"
            + (", the next publish uses a new producer" if renewed else "")
        )
        self._log.warning(
            "kafka_publish_failed",
            bootstrap_servers=self._settings.bootstrap_servers,
            topics=topics,
            messages=count,
            failed=failed,
            error=self._scrub(cause),
            producer_replaced=renewed,
        )
        return SinkError(message)

    def _check_created(self, result: dict[str, Any]) -> None:
        problems = []
        for topic in result.get("topics", []):
            code = topic.get("error_code", 0)
            if code in (0, TopicAlreadyExistsError.errno):
                continue
            detail = topic.get("error_message") or f"error code {code}"
            problems.append(f"{topic.get('name')}: {detail}")
        if problems:
            raise SinkError(
                self._scrub(
                    f"Kafka at {self._settings.bootstrap_servers} refused to create topic(s): "
                    + "; ".join(problems)
                )
            )

    def _scrub(self, text: str) -> str:
        # Belt and braces: kafka-python error texts are not ours to vet.
        return text.replace(self._secret, "**********") if self._secret else text


def _broken(producer: KafkaProducer, exc: BaseException | None, *, unanswered: bool) -> str | None:
    """Why ``producer`` must not send another page (for any stream), or None if it may.

    Broken: its idempotent state failed (kafka-python 3.0.12 then refuses every later
    send; a non-retriable error in a produce response puts it there, e.g. a topic
    authorization the broker refuses only at produce time), or the broker did not answer
    in time (an expired batch resets the producer id and the producer stays unable to
    send; its reconnect back-off may have grown to 30 s, while a new producer connects at
    once). A topic missing from the metadata also ends in a timeout, so it counts as the
    latter. Not broken: a refusal of this page alone with the state sound: a message over
    ``max_request_size`` (refused by ``send``), a topic the metadata says we may not write.
    """
    manager = getattr(producer, "_transaction_manager", None)
    if manager is None or not callable(getattr(manager, "has_error", None)):
        return "its state cannot be inspected (kafka-python changed): replaced to be safe"
    if manager.has_error():
        cause = manager.last_error or exc
        return "its idempotent state failed" + (f": {_describe(cause)}" if cause else "")
    if unanswered:
        return "the broker did not acknowledge the page in time"
    if exc is None or isinstance(exc, KafkaTimeoutError | KafkaConnectionError | OSError):
        return f"the broker did not answer: {_describe(exc) if exc else 'no error given'}"
    return None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__name__
    # kafka-python prefixes most messages with the class name already.
    return text if text.startswith(name) else f"{name}: {text}" if text else name
