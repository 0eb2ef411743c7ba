"""The snapshotter's own errors, independent of the daemon.

Each says what kind of failure it is, in the same terms as the gRPC status
codes, so whoever serves the snapshotter can map them one to one (pyctrd
does so in pyctr.daemon.snapshots). The message is meant for the client.
"""

from __future__ import annotations


class SnapshotterError(Exception):
    """Base of every error the snapshotter raises on purpose."""


class NotFound(SnapshotterError):
    """No snapshot (or layer) by that key."""


class AlreadyExists(SnapshotterError):
    """The key is taken."""


class InvalidArgument(SnapshotterError):
    """A bad key, label, mount or layer (a malformed or hostile tar, too)."""


class FailedPrecondition(SnapshotterError):
    """The request is fine but the state forbids it (e.g. removing a parent)."""


class ResourceExhausted(SnapshotterError):
    """Out of disk space or inodes while writing a snapshot."""


class DataLoss(SnapshotterError):
    """A layer whose content does not match its diff ID."""
