"""What the daemon remembers: per-record snapshots, stream checkpoints and the outbox."""

from daemon.state.sqlite import SnapshotStore

__all__ = ["SnapshotStore"]
