"""The snapshotter's own errors reach clients with the codes the daemon's had.

pyctr.snapshotter raises pyctr.snapshotter.errors; pyctrd maps them at its
boundary (pyctr.daemon.snapshots) and, for direct calls, in the interceptor.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from pyctr.daemon import errors
from pyctr.daemon.metadata import Metadata
from pyctr.daemon.server import _status_for
from pyctr.daemon.snapshots import daemon_error, open_snapshots
from pyctr.snapshotter import errors as sn_errors

CODES = [
    (sn_errors.NotFound, errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (sn_errors.AlreadyExists, errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (sn_errors.InvalidArgument, errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (sn_errors.FailedPrecondition, errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (sn_errors.ResourceExhausted, errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (sn_errors.DataLoss, errors.DataLoss, grpc.StatusCode.DATA_LOSS),
]


@pytest.mark.parametrize(("raised", "daemon_cls", "code"), CODES)
def test_each_snapshotter_error_maps_to_its_code(
    raised: type[sn_errors.SnapshotterError],
    daemon_cls: type[errors.PyctrError],
    code: grpc.StatusCode,
) -> None:
    exc = raised("snapshot x: why")
    mapped = daemon_error(exc)
    assert type(mapped) is daemon_cls and str(mapped) == "snapshot x: why"
    assert mapped.code == code
    assert _status_for("/pyctr.v1.Snapshots/Info", exc) == (code, "snapshot x: why")


def test_every_snapshotter_error_class_is_mapped() -> None:
    classes = {c for c in vars(sn_errors).values() if isinstance(c, type)}
    subclasses = {c for c in classes if issubclass(c, sn_errors.SnapshotterError)}
    assert subclasses - {sn_errors.SnapshotterError} == {r for r, _, _ in CODES}


def test_disk_full_is_still_recognised() -> None:
    mapped = daemon_error(sn_errors.ResourceExhausted("entry 'a': No space left on device"))
    assert errors.disk_full(mapped)


def test_the_daemon_sees_its_own_errors(tmp_path: Path) -> None:
    db = Metadata(tmp_path / "meta.db")
    try:
        snaps = open_snapshots("native", db, tmp_path / "sn")
        with pytest.raises(errors.NotFound):
            snaps.stat("missing")
        with pytest.raises(errors.InvalidArgument):
            snaps.prepare("")
        with pytest.raises(errors.InvalidArgument):
            open_snapshots("zfs", db, tmp_path / "other")
    finally:
        db.close()
