"""How our Kafka clients are made, flushed and closed: their configs (one definition for the
producer, the admin client, ``tail`` and the benchmark's floor producer) and the
workarounds kafka-python 3.0.12 needs (a leaked admin I/O thread, a close that raises,
a flush timeout applied per batch). The publishing policy is ``kafka.py``'s.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaTimeoutError
from kafka.net.compat import KafkaNetClient

from daemon.settings import KafkaSettings

# Measured with ~600-byte records on tansu, one 20,000-message publish: 16 KiB batches (the
# default) ~30k msg/s, 256 KiB ~60k msg/s, larger no better. kafka-python grows batch
# buffers on demand, so small pages pay nothing for the headroom.
_BATCH_SIZE = 256 * 1024
CLOSE_TIMEOUT_SECONDS = 5.0
_FLUSH_STEP_SECONDS = 0.25
# Bootstrapping (connect, handshake, first metadata) takes milliseconds on a LAN and well
# under a second over TLS+SASL; a broker that has not answered in 5 s is down or
# unreachable. Without this cap a refused connection was retried for request_timeout_ms
# (30 s) per stream and pass; requests to a connected broker keep request_timeout_ms.
BOOTSTRAP_TIMEOUT_MS = 5000


def producer_configs(settings: KafkaSettings) -> dict[str, Any]:
    """How every producer of ours sends (the benchmark's bare floor producer too)."""
    return {
        **client_configs(settings),
        "acks": "all",
        "enable_idempotence": True,
        "compression_type": None
        if settings.compression_type == "none"
        else settings.compression_type,
        "linger_ms": settings.linger_ms,
        "batch_size": _BATCH_SIZE,
        "request_timeout_ms": settings.request_timeout_ms,
        "delivery_timeout_ms": settings.delivery_timeout_ms,
    }


def client_configs(settings: KafkaSettings) -> dict[str, Any]:
    """Connection settings (servers, TLS, SASL) for any client of ours: the producer, the
    admin client, ``tail``."""
    password = settings.sasl_plain_password
    return {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        "security_protocol": settings.security_protocol,
        "sasl_mechanism": settings.sasl_mechanism,
        "sasl_plain_username": settings.sasl_plain_username,
        "sasl_plain_password": password.get_secret_value() if password is not None else None,
        "ssl_cafile": settings.ssl_cafile,
        "ssl_certfile": settings.ssl_certfile,
        "ssl_keyfile": settings.ssl_keyfile,
    }


def bootstrap_timeout_ms(settings: KafkaSettings) -> int:
    """How long a new client may take to reach the cluster before it counts as unreachable."""
    return min(settings.request_timeout_ms, BOOTSTRAP_TIMEOUT_MS)


@contextlib.contextmanager
def admin_client(
    configs: dict[str, Any], timeout_ms: int, *, bootstrap_ms: int | None = None
) -> Iterator[KafkaAdminClient]:
    """A short-lived admin client whose requests take ``timeout_ms`` and whose connection
    attempt takes ``bootstrap_ms`` (default: ``timeout_ms``).

    kafka-python 3.0.12's KafkaAdminClient starts its I/O thread before bootstrapping and
    leaks it when bootstrapping fails; keeping hold of the network client lets us stop it.
    """
    created: list[KafkaNetClient] = []

    def network_client(**kwargs: Any) -> KafkaNetClient:
        client = KafkaNetClient(**kwargs)
        created.append(client)
        return client

    try:
        admin = KafkaAdminClient(
            **configs,
            request_timeout_ms=timeout_ms,
            bootstrap_timeout_ms=bootstrap_ms or timeout_ms,
            kafka_client=network_client,
        )
    except BaseException:
        for client in created:
            with contextlib.suppress(Exception):
                client.close()
        raise
    try:
        yield admin
    finally:
        with contextlib.suppress(Exception):
            admin.close()


def close_producer(producer: KafkaProducer, timeout: float) -> None:
    """Close ``producer`` within ``timeout`` seconds, dropping whatever it could not send.

    ``KafkaProducer.close`` flushes first and raises when records are still pending, before
    it stops its I/O thread; aborting the sender then lets that thread end and free sockets.
    """
    try:
        producer.close(timeout=timeout)
    except Exception:  # whatever went wrong, the same cleanup is left to do
        sender = getattr(producer, "_sender", None)
        if sender is not None:
            sender.force_close()
            sender.join(CLOSE_TIMEOUT_SECONDS)
        with contextlib.suppress(Exception):
            producer.close(timeout=0)


def flush_until(
    producer: KafkaProducer, futures: list[Any], deadline: float, stop: threading.Event
) -> None:
    """Flush until every future is done, the deadline passed or a stop was requested.

    ``KafkaProducer.flush(timeout)`` applies the timeout to each pending batch in turn, so
    one call can overrun it several times (measured: 4 s for a 2 s timeout); short steps
    keep the overrun below one step.
    """
    while True:
        remaining = deadline - time.monotonic()
        try:
            producer.flush(timeout=max(min(remaining, _FLUSH_STEP_SECONDS), 0.0))
            return
        except KafkaTimeoutError:
            # Other threads' batches count in a flush too; only ours matter here.
            if remaining <= _FLUSH_STEP_SECONDS or all(f.is_done for f in futures):
                return
            if stop.is_set():
                return  # the caller finds the unacknowledged futures and fails the page
