"""What a restarted manager must not forget, written down per group before it matters.

A manager restarted by Ray starts with an empty engine. Two things would be
lost: the groups registered at run time (their waiting acquires, retried by
Ray, would fail with UnknownGroup), and the slots still held by callers that
keep running (the new manager would grant them again, past the group's
limit). So each group's spec, and each lease a capped group holds (its id,
epoch and caller), is written down as it changes: an entry per group spec and
one per held lease, keyed, a release writing its lease's key gone. A change
costs its own entry, whatever else its group holds. The entries go to two
places:

- **ahead**, to a file on the manager's own machine (the head node, where
  Ray restarts it), before the change is told to anyone: a capped group's
  lease is handed to its caller only after the write that includes it. A
  file write outlives the manager's process (the kernel keeps it, no fsync
  needed for that) and costs microseconds on the grant's path, where a write
  to Ray's GCS costs a round trip and two thread hops; a batch's changes are
  one write;
- **behind**, a copy in Ray's GCS key-value store, written by a thread of its
  own: each changed group's entries as one value, at most once a group per
  ``LAZY_SECONDS`` (a GCS write is a round trip; a lease held and freed within
  that time costs it nothing): for a head node that comes back on a new
  machine under GCS fault tolerance, whose files are gone. That copy may lack
  the changes of its last moments: a grant made then is unknown to the new
  manager, which may grant the slot again until its holder's next renewal.

A restarted manager restores each group's record, its spec and held leases
(the file's where it has the group): the held leases are held again, with a
fresh ttl. Their holders renew them
as usual (Ray retries the renewals that were in flight) and release them
when done; the leases of holders that died meanwhile expire after one ttl.
Until then the group is full, which is the fencing: no slot is granted twice.

Recovery is per group, so groups can be spread over several managers.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydantic import TypeAdapter

from actors.groups import GroupSpec

log = logging.getLogger(__name__)

# After a failed copy, wait this long before trying again (the store is Ray's GCS).
RETRY_SECONDS = 0.5
# How long a change may wait to be copied behind with the next ones.
LAZY_SECONDS = 0.05
# A FileStore is rewritten no sooner than at this size.
COMPACT_BYTES = 1 << 20
# Before each entry's key and value: their sizes; a key written gone has no value.
_HEADER = struct.Struct("<II")
_GONE = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class HeldLease:
    # The epoch of the manager that granted it, the caller that holds it, and whether it
    # is lent to that caller's process (see actors.lending).
    epoch: int
    caller: str | None = None
    lent: bool = False


@dataclass(frozen=True, slots=True)
class GroupRecord:
    spec: GroupSpec
    held: dict[str, HeldLease]


# Entries by key: a group's spec under its id, a held lease under its group's id and
# its own (see held_entry); None: gone.
Entries = Mapping[str, bytes | None]
# Between a group's id and a held lease's: no group id has a line break.
_SEPARATOR = "\n"
_SPEC = TypeAdapter(GroupSpec)
_HELD = TypeAdapter(HeldLease)


def spec_entry(spec: GroupSpec) -> tuple[str, bytes]:
    return spec.id, _SPEC.dump_json(spec)


def held_entry(group_id: str, lease_id: str, held: HeldLease | None) -> tuple[str, bytes | None]:
    """A held lease's entry; None: no longer held."""
    return group_id + _SEPARATOR + lease_id, None if held is None else _HELD.dump_json(held)


def records(entries: Mapping[str, bytes]) -> dict[str, GroupRecord]:
    """The groups' records that ``entries`` make up, by group id (a lease without its
    group's spec is dropped: the spec is written first)."""
    specs: dict[str, GroupSpec] = {}
    held: dict[str, dict[str, HeldLease]] = {}
    for key, value in entries.items():
        group_id, _, lease_id = key.partition(_SEPARATOR)
        if lease_id:
            held.setdefault(group_id, {})[lease_id] = _HELD.validate_json(value)
        else:
            specs[group_id] = _SPEC.validate_json(value)
    return {g: GroupRecord(spec, held.get(g, {})) for g, spec in specs.items()}


def recorded(ahead: Store, behind: Store) -> list[GroupRecord]:
    """What a restarted manager restores: each group's record, the one written ahead
    where both stores have it (the copy behind is never the newer)."""
    copied = {key: v for data in behind.load().values() for key, v in _parsed(data).items()}
    return list({**records(copied), **records(ahead.load())}.values())


class Store(Protocol):
    """Bytes by key, outliving the manager."""

    def write(self, entries: Entries) -> None:
        """Each entry's value by its key, or its key gone (None)."""
        ...

    def load(self) -> dict[str, bytes]: ...

    def clear(self) -> None: ...


class FileStore:
    """Bytes by key in one file, each write appended to it (a few microseconds: no open,
    no rename). Reading it back, the last value of each key wins, a key written gone
    is dropped, and a write cut short by a crash is dropped. Once the file has grown
    to twice its size after the last rewrite (and past ``compact_at`` bytes), it is
    rewritten with each key's last value."""

    def __init__(self, path: Path, compact_at: int = COMPACT_BYTES) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._compact_at = compact_at
        self._latest = self._read()
        self._fd = -1
        self._rewrite()

    def write(self, entries: Entries) -> None:
        for key, value in entries.items():
            if value is None:
                self._latest.pop(key, None)
            else:
                self._latest[key] = value
        self._size += os.write(self._fd, _framed(entries))
        if self._size > max(self._compact_at, 2 * self._compacted):
            self._rewrite()

    def load(self) -> dict[str, bytes]:
        """Each key's last value: what the file held when opened, and every write since."""
        return dict(self._latest)

    def _read(self) -> dict[str, bytes]:
        try:
            return _parsed(self._path.read_bytes())
        except FileNotFoundError:
            return {}

    def clear(self) -> None:
        self._latest = {}
        self._rewrite()

    def _rewrite(self) -> None:
        partial = self._path.with_name(self._path.name + ".partial")
        partial.write_bytes(_framed(self._latest))
        os.replace(partial, self._path)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND)
        self._size = self._compacted = os.fstat(self._fd).st_size


def _framed(entries: Entries) -> bytes:
    """``entries`` as the file holds them: each its key's and value's sizes, then both."""
    frames = []
    for key, value in entries.items():
        encoded = key.encode()
        if value is None:
            frames.append(_HEADER.pack(len(encoded), _GONE) + encoded)
        else:
            frames.append(_HEADER.pack(len(encoded), len(value)) + encoded + value)
    return b"".join(frames)


def _parsed(data: bytes) -> dict[str, bytes]:
    """Each key's last value in ``data`` (see :func:`_framed`), a key written gone left
    out; a last entry cut short is dropped."""
    values: dict[str, bytes] = {}
    at = 0
    while at + _HEADER.size <= len(data):
        key_size, value_size = _HEADER.unpack_from(data, at)
        gone = value_size == _GONE
        end = at + _HEADER.size + key_size + (0 if gone else value_size)
        if end > len(data):
            break  # cut short
        key = data[at + _HEADER.size : at + _HEADER.size + key_size].decode()
        if gone:
            values.pop(key, None)
        else:
            values[key] = data[end - value_size : end]
        at = end
    return values


class Journal:
    """Writes changed entries ahead, in the caller's thread, and hands them to a thread
    that copies them behind (see the module's docstring)."""

    def __init__(self, ahead: Store, behind: Store | None = None) -> None:
        self._ahead = ahead
        self._behind = None if behind is None else _Copier(behind)

    def write(self, entries: Entries) -> None:
        try:
            self._ahead.write(entries)
        except OSError:
            log.error(
                "writing %d journal entries ahead failed: a restarted manager knows only "
                "their copy behind",
                len(entries),
                exc_info=True,
            )
        if self._behind is not None:
            self._behind.keep(entries)

    def stop(self) -> None:
        """Write what the copy behind still lacks, and stop its thread."""
        if self._behind is not None:
            self._behind.stop()


class _Copier:
    """The copy behind: every group's entries, each changed group's written as one value
    by a thread of its own, retried until the store takes it."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._changed = threading.Condition()
        # Each group's entries (its spec, its held leases), and the groups changed since
        # the last write.
        self._groups: dict[str, dict[str, bytes]] = {}
        self._dirty: set[str] = set()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="raygate-journal", daemon=True)
        self._thread.start()

    def keep(self, entries: Entries) -> None:
        with self._changed:
            for key, value in entries.items():
                group_id = key.partition(_SEPARATOR)[0]
                kept = self._groups.setdefault(group_id, {})
                if value is None:
                    kept.pop(key, None)
                else:
                    kept[key] = value
                self._dirty.add(group_id)
            self._changed.notify()

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._dirty or self._stopped)
                # A burst's changes join this write.
                self._changed.wait_for(lambda: self._stopped, LAZY_SECONDS)
                changed = {g: _framed(self._groups[g]) for g in self._dirty}
                self._dirty = set()
                stopped = self._stopped
            if changed:
                self._put(changed)
            if stopped:
                return

    def _put(self, groups: Entries) -> None:
        while True:
            try:
                self._store.write(groups)
                return
            except Exception:
                log.warning(
                    "copying %d groups' journal entries failed; retrying",
                    len(groups),
                    exc_info=True,
                )
                time.sleep(RETRY_SECONDS)
