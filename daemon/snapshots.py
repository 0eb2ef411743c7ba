"""The daemon's side of the snapshotter boundary.

`pyctr.snapshotter` knows nothing of the daemon: it raises its own errors
(`pyctr.snapshotter.errors`). pyctrd reaches it only through `Snapshots`,
which raises the daemon's errors instead, with the same message and the same
gRPC code a client saw before the two were apart, so daemon code can keep
catching `NotFound` & co. The layer applier is handed the backend itself
(`Snapshots.backend_impl`): it handles the snapshotter's errors internally,
and its callers wrap it in `snapshotter_errors()`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path

from pyctr.daemon import errors
from pyctr.snapshotter import errors as sn_errors
from pyctr.snapshotter.base import Info, MetadataStore, Snapshotter, Usage
from pyctr.snapshotter.mount import Mount

# Most specific first; the base class alone keeps the daemon's UNKNOWN.
_CODES: tuple[tuple[type[sn_errors.SnapshotterError], type[errors.PyctrError]], ...] = (
    (sn_errors.NotFound, errors.NotFound),
    (sn_errors.AlreadyExists, errors.AlreadyExists),
    (sn_errors.InvalidArgument, errors.InvalidArgument),
    (sn_errors.FailedPrecondition, errors.FailedPrecondition),
    (sn_errors.ResourceExhausted, errors.ResourceExhausted),
    (sn_errors.DataLoss, errors.DataLoss),
    (sn_errors.SnapshotterError, errors.PyctrError),
)


def daemon_error(exc: sn_errors.SnapshotterError) -> errors.PyctrError:
    """The daemon's error for a snapshotter error: same message, matching code."""
    cls = next(d for s, d in _CODES if isinstance(exc, s))
    out = cls(str(exc))
    out.__cause__ = exc
    return out


@contextlib.contextmanager
def snapshotter_errors() -> Iterator[None]:
    """Around direct calls into pyctr.snapshotter (the applier, mount helpers)."""
    try:
        yield
    except sn_errors.SnapshotterError as e:
        raise daemon_error(e) from e


def open_snapshots(backend: str, db: MetadataStore, root: Path) -> Snapshots:
    from pyctr.snapshotter import open_snapshotter

    with snapshotter_errors():
        return Snapshots(open_snapshotter(backend, db, root))


class Snapshots:
    """A snapshotter backend whose errors are the daemon's (synchronous, like it)."""

    def __init__(self, backend: Snapshotter) -> None:
        self.backend_impl = backend

    @property
    def backend(self) -> str:
        return self.backend_impl.backend

    def prepare(self, key: str, parent: str | None = None) -> list[Mount]:
        with snapshotter_errors():
            return self.backend_impl.prepare(key, parent)

    def view(self, key: str, parent: str | None = None) -> list[Mount]:
        with snapshotter_errors():
            return self.backend_impl.view(key, parent)

    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        with snapshotter_errors():
            self.backend_impl.commit(name, key, labels)

    def remove(self, key: str) -> None:
        with snapshotter_errors():
            self.backend_impl.remove(key)

    def stat(self, key: str) -> Info:
        with snapshotter_errors():
            return self.backend_impl.stat(key)

    def update(self, key: str, labels: Mapping[str, str]) -> Info:
        with snapshotter_errors():
            return self.backend_impl.update(key, labels)

    def usage(self, key: str) -> Usage:
        with snapshotter_errors():
            return self.backend_impl.usage(key)

    def walk(self) -> Iterator[Info]:
        with snapshotter_errors():
            yield from self.backend_impl.walk()

    def mounts(self, key: str) -> list[Mount]:
        with snapshotter_errors():
            return self.backend_impl.mounts(key)

    def lower_dirs(self, name: str | None) -> list[Path]:
        with snapshotter_errors():
            return self.backend_impl.lower_dirs(name)

    def fs_usage(self) -> Usage:
        with snapshotter_errors():
            return self.backend_impl.fs_usage()

    def reconcile(self) -> None:
        with snapshotter_errors():
            self.backend_impl.reconcile()
