"""The row codec (daemon/state/codec.py): round trips, from several threads at once."""

from __future__ import annotations

import threading

import orjson

from daemon.models import Message
from daemon.state.codec import SAMPLES, BlobCodec, pack_messages, unpack_messages


def _record(n: int) -> bytes:
    return orjson.dumps(
        {"id": f"id-{n}", "remote_id": f"R-{n}", "grade": n % 7, "x": "y" * (n % 50)}
    )


def test_blobs_and_outboxes_round_trip_from_many_threads() -> None:
    """The store's worker threads share one codec: zstandard's (de)compressors are not
    thread-safe, so each thread must have its own (shared ones corrupted frames)."""
    codec = BlobCodec()
    codec.want_samples(1)
    for n in range(SAMPLES):
        codec.encode(1, _record(n))
    trained = codec.train(1)
    assert trained is not None
    codec.add(7, trained, sid=1)
    failures: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for n in range(offset, offset + 1500):
                raw = _record(n)
                for sid in (1, 2):  # with the dictionary, and plain zstd
                    assert codec.decode(codec.encode(sid, raw)) == raw
                messages = [
                    Message("t", b"k%d" % n, raw, (("h", b"\x00\x01"),)),
                    Message("t", b"k", None, ()),
                ]
                assert unpack_messages(pack_messages(messages)) == messages
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n * 10_000,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:1]
    assert codec.decode(_record(3)) == _record(3)  # raw JSON (before 0005) reads as it is
