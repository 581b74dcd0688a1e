"""A simulator of the Bindbee LMS API, for tests and benchmarks of lms-changefeed.

Serves ``/api/lms/v1/{users,courses,contents,enrollments,completions}`` and
``/api/lms/v1/connectors`` as ``bindbee-api.md`` describes them (auth, cursor
pages, filters, ``expand``, per-token rate limits), Bindbee's sync cycle
(``live`` or ``scheduled``, see ``syncs.py``) with signed webhooks, plus
``/_sim`` to edit records, run syncs, change connectors, inject faults and
read stats. Run it with ``bindbee-sim`` or, in a test, ``with SimServer(...)
as sim:``.
"""

from bindbee_sim.runner import SimServer
from bindbee_sim.server import build_app
from bindbee_sim.state import (
    ORG_STATS_KEY,
    UNKNOWN_CONNECTOR,
    Conflict,
    NotFound,
    Refused,
    SimState,
)
from bindbee_sim.webhooks import SIGNATURE_HEADER, sign

__all__ = [
    "ORG_STATS_KEY",
    "SIGNATURE_HEADER",
    "UNKNOWN_CONNECTOR",
    "Conflict",
    "NotFound",
    "Refused",
    "SimServer",
    "SimState",
    "build_app",
    "sign",
]
