"""A set of archived events' keys, (partition_id, sequence_number, event_id): the identity of
an archived row when deciding whether a file's events are held elsewhere (compaction,
settling its staged outputs, the rebuild's leftover check).

The event_id is part of it because (partition_id, sequence_number) alone is not unique in
every archive: Event Hubs sequence numbers restart when a hub is recreated or after a geo-DR
failover to another namespace, and items replayed before round 10 (partition "replay",
sequence number = the failed item's id, which restarts after a database rebuild; now derived
from the event_id: naming.replay_sequence_number) may share one. Ingest keeps both events of such
a pair; anything that took one for the other would delete or skip a distinct event
(docs/decisions.md, "Archive row identity").

Held as numpy columns: per partition the sequence numbers (8 bytes a key) and a keyed 64-bit
hash of the event_id (8 bytes), sorted by (sequence number, hash), and a mark per key (1
byte), where a Python set of (str, int, str) tuples takes well over 200 bytes a key: a day
of 100 million events needs about 1.7 GB here. Partition ids are few (an event hub has at
most a few dozen partitions, plus "replay"), so a dict of them costs nothing.

Why a 64-bit hash of the event_id is enough where a deletion or a skip follows (a false
match would make a distinct event look held): a key matches only when the partition and the
sequence number are equal exactly AND the hashes are equal. Distinct events share a
partition and sequence number only after a sequence restart or an id re-use, so the pairs
that could collide are few (at most the events of a day, 10^8 at the extreme); the hash is
blake2b keyed with a random secret of each ArchiveKeys (chosen when it is made, never
stored), so no sender can choose event ids that collide, and a pair collides with
probability 2^-64: across 10^8 such pairs, below 10^-11, far below the odds of an undetected
storage error. Rows equal on all three parts are one event (a redelivery written twice).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

# one key per row: the rows' partition ids (str objects), sequence numbers and event ids (str objects)
KeyColumns = tuple[npt.NDArray[np.object_], npt.NDArray[np.int64], npt.NDArray[np.object_]]


def hash_ids(event_ids: Sequence[object] | npt.NDArray[np.object_], secret: bytes) -> npt.NDArray[np.uint64]:
    """A keyed 64-bit hash (blake2b) of each event_id's UTF-8 bytes (about 0.5 us an id)."""
    digests = b"".join(hashlib.blake2b(str(e).encode("utf-8", "surrogatepass"), digest_size=8, key=secret).digest()
                       for e in event_ids)
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


class _Partition:
    """One partition's keys: sorted by (sequence number, hash), unique."""

    __slots__ = ("hashes", "run", "seqs")

    def __init__(self, seqs: npt.NDArray[np.int64], hashes: npt.NDArray[np.uint64]) -> None:
        order = np.lexsort((hashes, seqs))
        seqs, hashes = seqs[order], hashes[order]
        # unique: a key added twice (a file read twice, a redelivery written twice) is one key
        keep = np.ones(len(seqs), dtype=bool)
        keep[1:] = (seqs[1:] != seqs[:-1]) | (hashes[1:] != hashes[:-1])
        self.seqs: npt.NDArray[np.int64] = seqs[keep]
        self.hashes: npt.NDArray[np.uint64] = hashes[keep]
        # the most keys sharing one sequence number (1 but after a sequence restart)
        starts = np.flatnonzero(np.r_[True, self.seqs[1:] != self.seqs[:-1]]) if len(self.seqs) else np.zeros(0)
        self.run = int(np.diff(np.r_[starts, len(self.seqs)]).max()) if len(self.seqs) else 0

    def find(self, seqs: npt.NDArray[np.int64], hashes: npt.NDArray[np.uint64]
             ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.intp]]:
        """Per row: found or not, and where (valid where found)."""
        found = np.zeros(len(seqs), dtype=bool)
        at = np.zeros(len(seqs), dtype=np.intp)
        if not len(self.seqs):
            return found, at
        first = np.searchsorted(self.seqs, seqs)
        for k in range(self.run):            # the keys sharing a row's sequence number, one by one
            pos = np.minimum(first + k, len(self.seqs) - 1)
            hit = ~found & (self.seqs[pos] == seqs) & (self.hashes[pos] == hashes)
            found |= hit
            at[hit] = pos[hit]
        return found, at


class ArchiveKeys:
    """Add the keys of some files, then ask, for the rows of another, which are among them
    (`contains`), and record which of them another file holds (`mark`, `all_marked`)."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret if secret is not None else secrets.token_bytes(16)
        self._added: dict[str, list[tuple[npt.NDArray[np.int64], npt.NDArray[np.uint64]]]] = {}
        self._sorted: dict[str, _Partition] = {}
        self._marks: dict[str, npt.NDArray[np.bool_]] = {}

    def add(self, keys: KeyColumns) -> None:
        pids, seqs, ids = keys
        hashes = hash_ids(ids, self._secret)
        for pid in np.unique(pids):
            rows = pids == pid
            self._added.setdefault(str(pid), []).append((seqs[rows].astype(np.int64), hashes[rows]))
            self._sorted.pop(str(pid), None)       # sorted again when next asked
            self._marks.pop(str(pid), None)        # marks are for a finished set: add before marking

    def contains(self, keys: KeyColumns) -> npt.NDArray[np.bool_]:
        """Per row of `keys`: is its key among the keys added."""
        found, _, _ = self._lookup(keys)
        return found

    def mark(self, keys: KeyColumns) -> None:
        """Mark the added keys that are among `keys`."""
        _, pids, at = self._lookup(keys)
        for pid, positions in zip(pids, at, strict=True):
            marks = self._marks.setdefault(pid, np.zeros(len(self._known(pid).seqs), dtype=bool))
            marks[positions] = True

    def all_marked(self) -> bool:
        """Is every key added marked (held by some file `mark` was given)."""
        return all(bool(self._marks.get(pid, np.zeros(1, dtype=bool)).all()) for pid in self._added)

    def _known(self, pid: str) -> _Partition:
        known = self._sorted.get(pid)
        if known is None:
            added = self._added[pid]
            known = self._sorted[pid] = _Partition(np.concatenate([s for s, _ in added]),
                                                   np.concatenate([h for _, h in added]))
        return known

    def _lookup(self, keys: KeyColumns) -> tuple[npt.NDArray[np.bool_], list[str], list[npt.NDArray[np.intp]]]:
        """Per row: found or not; and per partition met, the positions of the keys found."""
        pids, seqs, ids = keys
        found = np.zeros(len(seqs), dtype=bool)
        met: list[str] = []
        positions: list[npt.NDArray[np.intp]] = []
        hashes: npt.NDArray[np.uint64] | None = None
        for pid in np.unique(pids):
            if str(pid) not in self._added:
                continue
            if hashes is None:
                hashes = hash_ids(ids, self._secret)
            rows = np.flatnonzero(pids == pid)
            hit, at = self._known(str(pid)).find(seqs[rows].astype(np.int64), hashes[rows])
            found[rows] = hit
            met.append(str(pid))
            positions.append(at[hit])
        return found, met, positions
