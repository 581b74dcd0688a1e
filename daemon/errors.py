"""The errors of lms-changefeed, grouped by what the caller should do about them.

    ChangefeedError
    ├── Refused                     a person must change something first (the CLI exits 2)
    │   ├── ConfigError             invalid configuration: refuse to start; names the field
    │   ├── UsageError              a bad argument (names it), an unknown stream, no
    │   │                           confirmation, a command whose extra is not installed
    │   └── StoreMissing            no state store where the config points, or one not
    │                               migrated to this version (names `lms-changefeed migrate`)
    ├── StreamFatalError            this stream cannot go on until a person acts
    │   ├── AuthError               401/403: API key or connector token rejected
    │   ├── InvalidRequestError     422: a parameter the API refuses (carries the detail)
    │   └── NotFoundError           404
    ├── RetriableError              try again later; the next pass resumes where this stopped
    │   ├── ApiUnavailableError     5xx, timeouts, dropped connections (retries exhausted)
    │   ├── RateLimitedError        429 that outlasted our patience
    │   ├── MalformedResponseError  body not JSON, no items, cursor loop (a malformed *item*
    │   │                           is dead-lettered, not an error)
    │   ├── SinkError               Kafka did not acknowledge a page
    │   ├── StateStoreError         the snapshot store could not be read or written
    │   └── ScanInterrupted         shutdown asked the pass to stop at a page boundary
    ├── StreamHeldElsewhere         another replica runs this stream now (shared state)
    └── StoredRowsFound             never leaves the walk: a page committed as new rows met
                                    stored ones (nothing committed; loaded, diffed again)

The scheduler decides from the class alone: fatal errors back off long, retriable
ones back off short. Messages never contain API keys or connector tokens.
"""

from __future__ import annotations


class ChangefeedError(Exception):
    """Base class of every error this package raises on purpose."""


class Refused(ChangefeedError):
    """The command refuses to do anything until a person acts: exit code 2, one line."""


class ConfigError(Refused):
    """The configuration is invalid; the daemon must not start."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"invalid config: {field}: {message}")


class UsageError(Refused):
    """The command cannot do what was asked: a bad argument (the message names it), an
    unknown stream, no confirmation, an extra that is not installed. Never "invalid config"."""


class StoreMissing(Refused):
    """An inspecting command found no state store at the configured place (it creates
    none), or a store not at this version's schema (``lms-changefeed migrate`` fixes it)."""

    def __init__(self, where: str, message: str | None = None) -> None:
        self.where = where
        super().__init__(
            message
            or f"no state store at {where}: check state.path (or CHANGEFEED_STATE__PATH); "
            "`lms-changefeed poll` or `migrate` creates it"
        )


class StreamFatalError(ChangefeedError):
    """A stream cannot make progress until someone changes config or credentials."""


class AuthError(StreamFatalError):
    """The API rejected the API key or the connector token (401/403)."""


class InvalidRequestError(StreamFatalError):
    """The API rejected a request parameter (422); ``detail`` is the API's explanation."""

    def __init__(self, message: str, detail: object = None) -> None:
        self.detail = detail
        super().__init__(message)


class NotFoundError(StreamFatalError):
    """The API answered 404."""


class RetriableError(ChangefeedError):
    """A transient failure: the pass stops and the next pass retries.

    Pages committed before the failure stay committed, each with its events in the outbox
    until Kafka acknowledged them; the failing page is either wholly committed or not at
    all. The next pass first sends what the outbox still holds, then resumes after the last
    committed page, so a failure costs at most a resend of that page's events (same ids).
    """


class ApiUnavailableError(RetriableError):
    """5xx, timeouts or dropped connections outlasted the retry budget."""


class RateLimitedError(RetriableError):
    """The API kept answering 429 beyond the retry budget."""


class MalformedResponseError(RetriableError):
    """The API answered something we cannot trust; the page is not used."""


class SinkError(RetriableError):
    """Kafka did not acknowledge every event of a page."""


class StateStoreError(RetriableError):
    """The snapshot store could not be read or written."""


class StreamHeldElsewhere(ChangefeedError):
    """Another replica sharing the PostgreSQL state runs this stream; not an error."""


class LeaseLost(StreamHeldElsewhere):
    """The pass's lease expired and may be another replica's now: it stopped before
    writing (the page in flight is re-read by the new holder)."""


class StoredRowsFound(ChangefeedError):
    """A page committed as new rows only (diffed without loading, as an initial sync's
    pages are) met rows already stored: nothing was committed. Not an error: the walk
    loads the page's rows and diffs it again."""


class ScanInterrupted(RetriableError):
    """A stop was requested; the pass ended at a page boundary with nothing half-done."""
