"""A simulator of the Bindbee LMS API, for tests and benchmarks of lms-changefeed.

Serves ``/api/lms/v1/{users,courses,contents,enrollments,completions}`` and
``/api/lms/v1/connectors`` as ``bindbee-api.md`` describes them (auth, cursor
pages, filters, ``expand``, per-token rate limits), plus ``/_sim`` to edit
records, inject faults and read stats. Run it with ``bindbee-sim`` or, in a
test, ``with SimServer(...) as sim:``.
"""

from bindbee_sim.runner import SimServer
from bindbee_sim.server import build_app
from bindbee_sim.state import UNKNOWN_CONNECTOR, Conflict, NotFound, SimState

__all__ = ["UNKNOWN_CONNECTOR", "Conflict", "NotFound", "SimServer", "SimState", "build_app"]
