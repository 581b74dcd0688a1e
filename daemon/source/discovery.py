"""Connector discovery: the streams to follow, from Bindbee's connectors list.

With ``bindbee.discover_connectors`` the daemon follows every listed connector that
passes ``bindbee.discover_filter``, with the ``connector_token`` the list gives (a
secret: it stays a SecretStr). A discovered connector is known to the state store by its
Bindbee id, which never changes; people, metrics and topics see its display name, from
``end_user.origin_id``. Configured ``connectors:`` entries are matched to listed
connectors by token and win: they keep their name and their state.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence

from daemon.settings import ConnectorSettings, DiscoverFilter
from daemon.source.connectors import ConnectorInfo

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def display_name(info: ConnectorInfo) -> str:
    """A name for logs, metrics and topics: the origin id made safe, else the id."""
    name = _UNSAFE.sub("-", (info.origin_id or "").strip()).strip("-.")
    return name[:100] or info.id


def wanted(info: ConnectorInfo, rule: DiscoverFilter) -> bool:
    """True when discovery should follow this connector (inactive ones are dropped)."""
    if not info.is_active:
        return False
    if rule.integration_slug and info.integration_slug not in rule.integration_slug:
        return False
    if rule.is_test_connector is not None and info.is_test_connector != rule.is_test_connector:
        return False
    return fnmatch.fnmatchcase(info.origin_id or "", rule.origin_id)


def discovered(
    listing: Iterable[ConnectorInfo],
    configured: Sequence[ConnectorSettings],
    rule: DiscoverFilter,
) -> list[ConnectorSettings]:
    """The connectors to follow besides the configured ones, in list order."""
    tokens = {c.token.get_secret_value() for c in configured if c.token is not None}
    taken = {c.name for c in configured}
    found: list[ConnectorSettings] = []
    for info in listing:
        if info.token.get_secret_value() in tokens or not wanted(info, rule):
            continue
        name = display_name(info)
        if name in taken:  # two connectors of one origin, or a configured name
            name = f"{name}-{info.id[:8]}"
        taken.add(name)
        found.append(ConnectorSettings.discovered(name, info.token, info.id))
    return found
