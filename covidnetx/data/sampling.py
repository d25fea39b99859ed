"""Which sample each rank reads at each position, and with which augmentation: one sharding scheme (by
global rank, equal per-rank counts) and counter-based random draws, shared by both loaders.

Sharding
  * training is a stream of steps: every epoch is a permutation seeded by (seed, epoch), identical on
    all ranks; its first ``n - n % size`` entries are dealt round-robin (rank r takes entries r, r+size,
    ...), so each rank gets the same count and no sample appears twice in an epoch (the ``n % size``
    left over go to no rank that epoch; they differ from epoch to epoch). Position p of the stream is a
    pure function of (seed, rank, size, p): resuming at step s restarts at p = s * batch exactly. A
    training set smaller than the number of ranks (few-shot k=1 with 3 classes on a 4-GPU node) makes
    each epoch ``ceil(size / n)`` permutations back to back, so every rank still gets samples.
  * evaluation gives rank r the contiguous block r of ``ceil(n / size)`` samples, padded at the end
    to whole batches with masked entries (valid = 0), so every sample is evaluated exactly once.

Augmentation parameters (random-resized-crop box, flip, small rotation) are drawn from a generator
seeded by (seed, global slot), in Python, and applied by either loader: both paths augment alike and a
resumed run sees the same augmentations as an uninterrupted one. The global slot of rank r's position p
is ``p * size + r`` (= p on one rank), so no two ranks draw the same augmentations: a global batch of
B per rank on N ranks holds N x B different crops, flips and angles, not B patterns repeated N times.
"""
from __future__ import annotations

import math

import numpy as np

from covidnetx.data.transforms import Preprocess
from covidnetx.utils import UserError


_MASK64 = (1 << 64) - 1


def _splitmix64(state: int) -> tuple:
    """One step of SplitMix64: (next state, 64-bit output)."""
    state = (state + 0x9E3779B97F4A7C15) & _MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return state, z ^ (z >> 31)


class _Counter:
    """Counter-based uniform draws keyed by (seed, position): a few microseconds to set up, where a seeded
    numpy Generator costs ~50 us, which showed per sample in the loaders."""

    def __init__(self, seed: int, position: int):
        _, k = _splitmix64(seed & _MASK64)
        self.state = (k ^ (position * 0xD1B54A32D192ED03)) & _MASK64

    def uniform(self, lo: float = 0.0, hi: float = 1.0) -> float:
        self.state, z = _splitmix64(self.state)
        return lo + (hi - lo) * ((z >> 11) * (1.0 / 9007199254740992.0))

    def integer(self, n: int) -> int:
        """uniform in [0, n)."""
        return min(n - 1, int(self.uniform() * n))


def augment_params(seed: int, position: int, h: int, w: int, pp: Preprocess) -> np.ndarray:
    """[y0, x0, ch, cw, flip, angle] for stream position ``position`` (random-resized-crop style)."""
    rng = _Counter(seed, position)
    for _ in range(10):
        area = h * w * rng.uniform(pp.crop_scale, 1.0)
        ar = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = int(round(math.sqrt(area * ar))), int(round(math.sqrt(area / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            break
    else:
        ch, cw = h, w
    y0 = rng.integer(h - ch + 1)
    x0 = rng.integer(w - cw + 1)
    flip = float(rng.uniform() < 0.5 and pp.hflip)         # drawn either way: the stream stays aligned
    angle = rng.uniform(-pp.rotate_deg, pp.rotate_deg) if pp.rotate_deg > 0 else 0.0
    return np.array([y0, x0, ch, cw, flip, angle], np.float32)


# ---------------------------------------------------------------------------------------------------
# sharding
# ---------------------------------------------------------------------------------------------------
class TrainStream:
    """Stream of sample indices for one rank (see module docstring)."""

    def __init__(self, n: int, rank: int, size: int, seed: int):
        if n < 1:
            raise UserError("the training set is empty")
        self.n, self.rank, self.size, self.seed = n, rank, size, seed
        self.repeats = -(-size // n)             # permutations per epoch: 1 unless n < size
        self.per_rank = n * self.repeats // size
        self._cache: dict = {}

    def epoch_indices(self, epoch: int) -> np.ndarray:
        got = self._cache.get(epoch)
        if got is None:
            if self.repeats == 1:              # the usual case, seeded as it always was
                perm = np.random.default_rng([self.seed, epoch, 11]).permutation(self.n)
            else:
                perm = np.concatenate([np.random.default_rng([self.seed, epoch, 11, j]).permutation(self.n)
                                       for j in range(self.repeats)])
            got = perm[: self.per_rank * self.size][self.rank::self.size]
            self._cache = {epoch: got}
        return got

    def __getitem__(self, position: int) -> int:
        e, j = divmod(position, self.per_rank)
        return int(self.epoch_indices(e)[j])

    def slot(self, position: int) -> int:
        """Global slot of this rank's stream position: unique across ranks (keys the augmentation)."""
        return position * self.size + self.rank


def eval_block(n: int, rank: int, size: int, batch: int) -> tuple:
    """(indices, valid) for rank's contiguous block, padded to whole batches."""
    per = -(-n // size)
    start, stop = min(n, rank * per), min(n, (rank + 1) * per)
    real = np.arange(start, stop)
    padded = max(batch, -(-per // batch) * batch)
    idx = np.zeros(padded, np.int64)
    valid = np.zeros(padded, np.int32)
    idx[: len(real)] = real
    valid[: len(real)] = 1
    return idx, valid
