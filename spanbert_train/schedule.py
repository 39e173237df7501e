"""Which dataset each row of a blend comes from: a low-discrepancy schedule, exact after every row (DESIGN §8).

The rows of all global batches form one stream: global row r = b·G + i is row i of global batch b (G the global
batch size). Dataset k has the integer weight w_k (the ratio of the weights given: spanbert_train.weights), and
W = Σ w_k. Row r, with t = r + 1 rows placed so far and c_k rows of dataset k before it, goes to the dataset
that is behind its share and whose next row is due first: among the k with t·w_k > W·c_k, the smallest
(c_k + 1) / w_k; ties go to the smaller k. Then after every row, for every dataset,

    -1 < c_k - t·w_k / W < 1,

so after every global batch each dataset's count is within one row of its share, whatever G is:

- *Never a row ahead*: k is chosen only while c_k < t·w_k / W, so afterwards c_k < t·w_k / W + 1.
- *Never a row behind*: the j-th row of k may go at rows t > (j-1)·W / w_k (its release) and must go by row
  ⌈j·W / w_k⌉ (else c_k ≤ t·w_k / W - 1 at the row before). In any window of rows [a, b] at most
  Σ_k ⌊(b-a+1)·w_k / W⌋ ≤ b-a+1 rows are both released and due, so a placement meeting every deadline exists,
  and earliest-deadline-first, which this rule is, finds one (it is optimal for unit jobs with integer release
  times). Some dataset is always eligible: the t·w_k - W·c_k sum to W > 0.

After W rows every count equals its weight exactly, so the schedule repeats with period W: it is computed once
(Numba) and every count is then a closed form of r. A dataset of weight 0 never gets a row; one dataset of any
weight gets every row. The schedule depends on the weights alone: the seed orders the rows within each dataset
(spanbert_train.blend).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _period(weights: np.ndarray) -> np.ndarray:
    """The dataset of each of the first W rows (the module docstring's rule, in integers)."""
    n, total = weights.size, weights.sum()
    pattern = np.empty(total, dtype=np.int32)
    counts = np.zeros(n, dtype=np.int64)
    for r in range(total):
        t = r + 1
        best = -1
        for k in range(n):
            if weights[k] > 0 and t * weights[k] > total * counts[k]:
                # due first: (c_k + 1) / w_k smallest, compared without division
                if best < 0 or (counts[k] + 1) * weights[best] < (counts[best] + 1) * weights[k]:
                    best = k
        pattern[r] = best
        counts[best] += 1
    return pattern


class Schedule:
    """The blend's schedule for integer weights (the module docstring): counts and assignments in closed form."""

    def __init__(self, weights: list[int]):
        self.weights = np.asarray(weights, dtype=np.int64)
        if self.weights.ndim != 1 or self.weights.size == 0 or (self.weights < 0).any() or self.weights.sum() <= 0:
            raise ValueError(f"weights must be integers >= 0, not all 0 (got {weights})")
        self.period = int(self.weights.sum())
        self.pattern = _period(self.weights)  # dataset of rows 0 .. W-1 (and of every later period)
        n = self.weights.size
        # prefix[k, m]: rows of dataset k among the first m rows of a period
        self.prefix = np.zeros((n, self.period + 1), dtype=np.int64)
        for k in range(n):
            np.cumsum(self.pattern == k, out=self.prefix[k, 1:])
        self.rows_in_period = [np.flatnonzero(self.pattern == k) for k in range(n)]

    def counts(self, r: int) -> np.ndarray:
        """Rows each dataset gets among global rows 0 .. r-1."""
        q, m = divmod(int(r), self.period)
        return q * self.weights + self.prefix[:, m]

    def assign(self, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
        """For global rows r0 .. r1-1: the dataset of each, and its position in that dataset's own row stream."""
        r = np.arange(r0, r1, dtype=np.int64)
        if self.weights.size == 1:
            return np.zeros(r.size, dtype=np.int32), r
        q, m = np.divmod(r, self.period)
        k = self.pattern[m]
        return k, q * self.weights[k] + self.prefix[k, m]

    def row_of(self, k: int, position: int) -> int:
        """The global row that takes position `position` of dataset k's stream (k must have weight > 0)."""
        q, j = divmod(int(position), int(self.weights[k]))
        return q * self.period + int(self.rows_in_period[k][j])
