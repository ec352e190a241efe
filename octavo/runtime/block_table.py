"""Block-table rows kept from one step to the next (the runner's persistent part of a batch).

Rebuilding every request's block table from Python lists each step was the largest host cost of
a large decode step (a nested list through torch.tensor). Rows persist instead: a request keeps
its row while it runs, and a step writes only the block ids added since the request's last step.

What makes the diff exact: a request's `block_ids` list only ever grows in place; whatever
shrinks or swaps it (KVCacheManager.free, truncate) puts a new list in its place. A row whose
request now holds another list object is rewritten whole. The table keeps a reference to each
list it mirrors, so an old list's identity cannot be taken by a new one. A row is only a cache:
rows of requests that left are taken back when the table runs out of rows.
"""

from __future__ import annotations

import numpy as np


class BlockTableRows:
    def __init__(self, num_rows: int = 64, width: int = 64) -> None:
        self.table = np.zeros((num_rows, width), dtype=np.int32)
        self.row_of: dict[str, int] = {}  # request id -> row
        self.mirrored: list[list[int] | None] = [None] * num_rows  # the block_ids list a row holds
        self.written = [0] * num_rows  # how many of its ids the row holds
        self.free_rows = list(range(num_rows - 1, -1, -1))

    def rows_for(self, requests: list) -> np.ndarray:
        """Each request's row, brought up to date with its block_ids (int64 array, one per request)."""
        unknown = sum(r.request_id not in self.row_of for r in requests)
        if unknown > len(self.free_rows):
            self._take_back(requests)
            if unknown > len(self.free_rows):
                self._grow_rows(self.table.shape[0] + unknown - len(self.free_rows))
        longest = max((len(r.block_ids) for r in requests), default=0)
        if longest > self.table.shape[1]:
            self._grow_width(longest)
        rows = np.empty(len(requests), dtype=np.int64)
        for i, request in enumerate(requests):
            row = self.row_of.get(request.request_id)
            if row is None:
                row = self.free_rows.pop()
                self.row_of[request.request_id] = row
            rows[i] = row
            ids = request.block_ids
            known = self.written[row]
            if ids is not self.mirrored[row]:
                self.table[row, : len(ids)] = ids
                if known > len(ids):
                    self.table[row, len(ids) : known] = 0
                self.mirrored[row] = ids
            elif len(ids) > known:
                self.table[row, known : len(ids)] = ids[known:]
            self.written[row] = len(ids)
        return rows

    def _take_back(self, keep: list) -> None:
        """Free the rows of every request not in `keep` (they are rewritten if they come back)."""
        wanted = {r.request_id for r in keep}
        for request_id in [rid for rid in self.row_of if rid not in wanted]:
            row = self.row_of.pop(request_id)
            self.table[row, : self.written[row]] = 0
            self.mirrored[row], self.written[row] = None, 0
            self.free_rows.append(row)

    def _grow_rows(self, needed: int) -> None:
        old = self.table.shape[0]
        new = max(needed, 2 * old)
        self.table = np.concatenate([self.table, np.zeros((new - old, self.table.shape[1]), dtype=np.int32)])
        self.mirrored += [None] * (new - old)
        self.written += [0] * (new - old)
        self.free_rows = list(range(new - 1, old - 1, -1)) + self.free_rows

    def _grow_width(self, needed: int) -> None:
        width = self.table.shape[1]
        while width < needed:
            width *= 2
        grown = np.zeros((self.table.shape[0], width), dtype=np.int32)
        grown[:, : self.table.shape[1]] = self.table
        self.table = grown
