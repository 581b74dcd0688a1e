"""One pass over one (connector, model), page by page, through a transactional outbox.

For each page: fetch it, diff it against the stored snapshot, then commit the page's rows,
the scan cursor and the page's events (the outbox) in one transaction; only then publish the
events, flush, and clear the outbox. A crash or failure after the commit leaves the events in
the outbox, and the next pass publishes them before anything else, so Kafka never misses a
committed change and never gets one the store does not know about (a resend keeps its ids).
Deletes after a full scan go the same way: commit the removals with their events, publish,
clear.

Poison records (items of a page the client rejected after its retries: ``Page.rejected``)
never stop the stream: each distinct bad content goes to the dead-letter topic once, its
message in the page's outbox and its fingerprint committed with the page. A rejected item
that names a record (its id, or a stored row's ``remote_id``) counts as seen, so it is
never taken for deleted; one that names nothing makes its full scan withhold the deletes.

The modules, by job::

    run.py       StreamPass: start or resume a scan, pending outbox, walk, deletes, marker
    pages.py     the page walk: page → diff → commit → publish
    deletes.py   a full scan's deletes and their guards
    rejects.py   poison items: fingerprints, dead letters
    progress.py  counts (once per page), the scan's progress for its marker, PassResult
    context.py   one stream's settings and parts, its outbox sends; EventSink
    rules.py     the pure rules (delete guard, watermark ceiling, which scan is due, ...)
    hint_reads.py   the targeted read: hinted ids read by id, diffed, through the outbox
    hint_measure.py a walk's changes that no hint named (hint_missed)
    hint_rules.py   pure: when to walk (full_scan_every_syncs), auto spacing, read or walk
"""

from daemon.stream.context import EventSink
from daemon.stream.progress import PassResult, ScanProgressBook
from daemon.stream.run import StreamPass

__all__ = ["EventSink", "PassResult", "ScanProgressBook", "StreamPass"]
