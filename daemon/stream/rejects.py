"""Poison items: what a page's rejected items mean for the scan.

Each distinct bad content goes to the dead-letter topic once: its fingerprint is
committed with the page, and a content already known is not sent again. A rejected item
that names a record (its id, a fingerprint already tied to one, or a stored row's
``remote_id``) counts as seen, so that record is never taken for deleted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import structlog

from daemon.models import Message, Page, RejectedItem, RejectWrite
from daemon.sink.events import fingerprint, rejected_message
from daemon.stream.context import StreamContext


@dataclass(frozen=True, slots=True)
class RejectVerdict:
    """What one rejected item stands for, and whether its content is new."""

    record_id: str | None  # the stored record it names; None when nothing identifies it
    fresh: bool  # a content not dead-lettered before: it goes to the dead-letter topic


@dataclass(slots=True)
class PageRejections:
    """A page's poison items, ready to commit and send with the page."""

    writes: list[RejectWrite] = field(default_factory=list)  # fingerprints to remember
    letters: list[Message] = field(default_factory=list)  # dead letters of fresh contents
    reasons: list[str] = field(default_factory=list)  # one per letter, for the metric
    named: list[str] = field(default_factory=list)  # record ids they name: seen


def unknown_remote_ids(
    items: Sequence[RejectedItem], digests: Sequence[str], known: Mapping[str, str | None]
) -> list[str]:
    """The ``remote_id``s worth looking up: of items with no usable id, whose content is
    not already tied to a record."""
    return [
        item.remote_id
        for item, digest in zip(items, digests, strict=True)
        if item.record_id is None and known.get(digest) is None and item.remote_id
    ]


def reject_verdicts(
    items: Sequence[RejectedItem],
    digests: Sequence[str],
    known: Mapping[str, str | None],
    by_remote: Mapping[str, str],
) -> list[RejectVerdict]:
    """For each item (with its content's fingerprint): the record it names and whether
    its content is fresh. ``known``: fingerprints already dead-lettered -> their record;
    ``by_remote``: stored rows by ``remote_id``."""
    seen = dict(known)
    verdicts: list[RejectVerdict] = []
    for item, digest in zip(items, digests, strict=True):
        record_id = (
            item.record_id
            or seen.get(digest)
            or (by_remote.get(item.remote_id) if item.remote_id else None)
        )
        fresh = digest not in seen
        if fresh:
            seen[digest] = record_id  # the same content twice in one page: one letter
        verdicts.append(RejectVerdict(record_id, fresh))
    return verdicts


def all_dead_lettered(stream: StreamContext, rejected: Sequence[RejectedItem]) -> bool:
    """Whether every one of a page's rejected items was dead-lettered before: the client
    then takes the page at one request instead of a round of retries."""
    digests = list(dict.fromkeys(fingerprint(item.raw) for item in rejected))
    return len(stream.store.known_rejections(stream.key, digests)) == len(digests)


def page_rejections(
    stream: StreamContext, page: Page, scan: int, log: structlog.BoundLogger
) -> PageRejections:
    """A page's poison items: what to remember, the dead letters of the contents not
    sent before (and their reasons), and the record ids they name."""
    store, key = stream.store, stream.key
    digests = [fingerprint(item.raw) for item in page.rejected]
    known = store.known_rejections(key, list(dict.fromkeys(digests)))
    unnamed = unknown_remote_ids(page.rejected, digests, known)
    by_remote = store.find_remote_ids(key, unnamed) if unnamed else {}
    verdicts = reject_verdicts(page.rejected, digests, known, by_remote)
    now = stream.clock()
    out = PageRejections()
    for item, digest, verdict in zip(page.rejected, digests, verdicts, strict=True):
        if verdict.record_id is not None:
            out.named.append(verdict.record_id)  # seen: never a false `deleted`
        if verdict.fresh:
            out.letters.append(
                rejected_message(
                    stream.dead_letter_topic,
                    key,
                    item,
                    digest=digest,
                    page=page.number,
                    scan=scan,
                    record_id=verdict.record_id,
                    now=now,
                    schema_base_uri=stream.settings.kafka.schema_base_uri,
                )
            )
            out.reasons.append(item.reason)
        out.writes.append(RejectWrite(digest, item.reason, verdict.record_id, now))
        log.warning(
            "item_rejected",
            page=page.number,
            position=item.position,
            reason=item.reason,
            detail=item.detail,
            record_id=verdict.record_id,
            fingerprint=digest,
            dead_lettered=verdict.fresh,
        )
    return out
