"""A set of archived events' keys, (partition_id, sequence_number): the archive's identity
of an event (contract section 3: each at most once across the archive).

Held as numpy columns: per partition one sorted array of sequence numbers (8 bytes a key)
and a mark per key (1 byte), where a Python set of (str, int) tuples takes about 157 bytes
a key: a day of 100 million events needs about 0.9 GB here, not 16 GB. Partition ids are
few (an event hub has at most a few dozen partitions), so a dict of them costs nothing.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

# one key per row: the rows' partition ids (str objects) and their sequence numbers
KeyColumns = tuple[npt.NDArray[np.object_], npt.NDArray[np.int64]]


class ArchiveKeys:
    """Add the keys of some files, then ask, for the rows of another, which are among them
    (`contains`), and record which of them another file holds (`mark`, `all_marked`)."""

    def __init__(self) -> None:
        self._added: dict[str, list[npt.NDArray[np.int64]]] = {}
        self._sorted: dict[str, npt.NDArray[np.int64]] = {}
        self._marks: dict[str, npt.NDArray[np.bool_]] = {}

    def add(self, keys: KeyColumns) -> None:
        pids, seqs = keys
        for pid in np.unique(pids):
            self._added.setdefault(str(pid), []).append(seqs[pids == pid].astype(np.int64))
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
            marks = self._marks.setdefault(pid, np.zeros(len(self._known(pid)), dtype=bool))
            marks[positions] = True

    def all_marked(self) -> bool:
        """Is every key added marked (held by some file `mark` was given)."""
        return all(bool(self._marks.get(pid, np.zeros(1, dtype=bool)).all()) for pid in self._added)

    def _known(self, pid: str) -> npt.NDArray[np.int64]:
        known = self._sorted.get(pid)
        if known is None:
            # unique: a key added twice (a file read twice) is one key, marked once
            known = self._sorted[pid] = np.unique(np.concatenate(self._added[pid]))
        return known

    def _lookup(self, keys: KeyColumns) -> tuple[npt.NDArray[np.bool_], list[str], list[npt.NDArray[np.intp]]]:
        """Per row: found or not; and per partition met, the positions of the keys found."""
        pids, seqs = keys
        found = np.zeros(len(seqs), dtype=bool)
        met: list[str] = []
        positions: list[npt.NDArray[np.intp]] = []
        for pid in np.unique(pids):
            if str(pid) not in self._added:
                continue
            known = self._known(str(pid))
            rows = np.flatnonzero(pids == pid)
            at = np.minimum(np.searchsorted(known, seqs[rows]), len(known) - 1)
            hit = known[at] == seqs[rows]
            found[rows] = hit
            met.append(str(pid))
            positions.append(at[hit])
        return found, met, positions
