"""The chosen rows counted as a survey's batches go by: every match, or for a sample (O2)
the N lowest-ranked matches, with how many of them have each structure number."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class Tally:
    """The chosen rows as they go by: every match, or for a sample (O2) the N lowest-ranked
    matches, kept N at a time (rank, structure number, id)."""

    def __init__(self, size: int | None) -> None:
        self.size = size
        self.matched = 0
        self.numbers: list[np.ndarray] = []
        self.held: list[tuple[np.ndarray, np.ndarray, pa.ChunkedArray]] = []
        self.count = 0

    def add(
        self,
        keep: np.ndarray,
        rank: np.ndarray | None,
        number: np.ndarray,
        ids: pa.ChunkedArray,
    ) -> None:
        """Take one batch: its matches, their ranks (sampling) and structure numbers."""
        if self.size is None:
            self.matched += int(keep.sum())
            self.numbers.append(counts_of(number[keep]))
            return
        assert rank is not None
        where = np.flatnonzero(keep)
        self.held.append((rank[where], number[where], ids.take(where)))
        self.count += len(where)
        if self.count > 2 * self.size:  # only ever the N lowest can be chosen: drop the rest
            self.held = [self._lowest()]
            self.count = len(self.held[0][0])

    def _lowest(self) -> tuple[np.ndarray, np.ndarray, pa.ChunkedArray]:
        """The held rows ranked at or below the N-th lowest rank (ties at it all kept)."""
        rank = np.concatenate([part[0] for part in self.held])
        number = np.concatenate([part[1] for part in self.held])
        ids = pa.chunked_array([c for part in self.held for c in part[2].chunks], pa.string())
        assert self.size is not None
        if len(rank) > self.size:
            bound = np.partition(rank, self.size - 1)[self.size - 1]
            where = np.flatnonzero(rank <= bound)
            rank, number = rank[where], number[where]
            ids = ids.take(where)
        return rank, number, ids

    def result(self) -> tuple[int, np.ndarray, tuple[int, str] | None]:
        """How many rows are chosen, how many of them have each structure number, the
        cutoff."""
        if self.size is None:
            return self.matched, summed_counts(self.numbers), None
        if not self.held:
            return 0, np.zeros(0, np.int64), None
        rank, number, ids = self._lowest()
        if len(rank) < self.size:  # fewer matches than sample_size: every match
            return len(rank), counts_of(number), None
        # ties at the N-th rank are broken by id (byte order, as DuckDB compares text)
        bound = rank.max()
        tied = np.flatnonzero(rank == bound)
        below = len(rank) - len(tied)
        order = pc.sort_indices(ids.take(tied)).to_numpy()
        taken = tied[order[: self.size - below]]
        keep = np.concatenate([np.flatnonzero(rank < bound), taken])
        return len(keep), counts_of(number[keep]), (int(bound), ids[int(taken[-1])].as_py())


def counts_of(numbers: np.ndarray) -> np.ndarray:
    """How many times each structure number occurs (-1: none, not counted)."""
    return np.bincount(numbers[numbers >= 0])


def summed_counts(counts: list[np.ndarray]) -> np.ndarray:
    """Counts per number, added up from arrays of different lengths."""
    total = np.zeros(max((len(c) for c in counts), default=0), dtype=np.int64)
    for found in counts:
        total[: len(found)] += found
    return total
