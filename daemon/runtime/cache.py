"""The container table with every record kept decoded in memory.

The runtime manager's `store`: reads (get, resolve, list: the hot paths of
`ps`, CRI ListContainers/ContainerStatus and every call that names a
container) cost no SQL and no JSON decoding; writes go to SQLite first, in
its transaction, then to the cache. It must be the only writer of the table
(`ctx.runtime.store`); a record someone else added is still found by `get`.
"""

from __future__ import annotations

import sys
from typing import Any

from pyctr.daemon.errors import InvalidArgument, NotFound
from pyctr.daemon.metadata import Metadata
from pyctr.daemon.runtime.records import Container, copy_record
from pyctr.daemon.runtime.store import ID_RE, ContainerStore


class CachedStore(ContainerStore):
    """ContainerStore, answered from memory.

    Callers get copies: fields, labels, annotations, lists and sub-records
    are theirs to change; the spec is shared and must be treated as
    read-only (it is large). Changes are stored with `update`.
    """

    def __init__(self, db: Metadata) -> None:
        super().__init__(db)
        self._records: dict[str, Container] = {c.id: c for c in super().list()}
        self._names: dict[str, str] = {c.name: c.id for c in self._records.values()}

    def add(self, c: Container) -> None:
        super().add(c)
        self._remember(_copy(c))

    def update(self, cid: str, **fields: Any) -> Container:
        c = super().update(cid, **fields)
        self._remember(c)
        return _copy(c)

    def delete(self, cid: str) -> None:
        super().delete(cid)
        old = self._records.pop(cid, None)
        if old is not None and self._names.get(old.name) == cid:
            del self._names[old.name]

    def _remember(self, c: Container) -> None:
        c.spec = _interned(c.spec)
        old = self._records.get(c.id)
        if old is not None and old.name != c.name:
            self._names.pop(old.name, None)
        self._records[c.id] = c
        self._names[c.name] = c.id

    def get(self, cid: str) -> Container:
        c = self._records.get(cid)
        if c is None:
            c = super().get(cid)  # raises NotFound; a hit means someone bypassed us
            self._remember(c)
        return _copy(c)

    def resolve(self, ref: str, kind: str | None = None) -> Container:
        if not ref or len(ref) > 256 or "\0" in ref:
            raise NotFound(f"container {ref[:80]!r} not found")
        what = "pod sandbox" if kind == "sandbox" else "container"
        # Exact ID, then exact name, then unique ID prefix: a name made of
        # hex digits ("cafe") still names its container.
        found = self._records.get(ref)
        if found is None and ref in self._names:
            found = self._records.get(self._names[ref])
        if found is None and ID_RE.match(ref):
            matches = [cid for cid in self._records if cid.startswith(ref)]
            if len(matches) > 1:
                raise InvalidArgument(f"{what} ID prefix {ref!r} is ambiguous")
            if matches:
                found = self._records[matches[0]]
        if found is None or (kind and found.kind != kind):
            raise NotFound(f"{what} {ref!r} not found")
        return _copy(found)

    def name_taken(self, name: str) -> bool:
        return name in self._names

    def list(self, kind: str | None = None, sandbox_id: str | None = None) -> list[Container]:
        out = [
            _copy(c)
            for c in self._records.values()
            if (not kind or c.kind == kind) and (sandbox_id is None or c.sandbox_id == sandbox_id)
        ]
        out.sort(key=lambda c: c.created_at)
        return out


def _interned(value: Any) -> Any:
    """A copy whose strings are interned: specs repeat the same mount options,
    capabilities and paths, so every cached spec shares them (15 KB → 6 KB each)."""
    if isinstance(value, str):
        return sys.intern(value)
    if isinstance(value, list):
        return [_interned(v) for v in value]
    if isinstance(value, dict):
        return {sys.intern(k) if isinstance(k, str) else k: _interned(v) for k, v in value.items()}
    return value


_copy = copy_record
