"""The FactorVAE disentanglement metric (Kim & Mnih 2018), computed as disentanglement_lib does.

1. Global variance of each code dimension over `num_variance` random images (ddof=1).
2. Dimensions with std < `prune_threshold` (0.05) are collapsed to the prior and pruned.
3. A vote: pick a factor k uniformly, draw `batch_size` (64) factor rows with factor k fixed to
   one value, encode the images, and take d* = argmin over active dims of var_d / global var_d.
   The vote is (k, d*).
4. The classifier maps each dimension to the factor that got most of its votes, from `num_train`
   (10,000) votes; accuracy = share of votes it gets right, on those votes (train) and on
   `num_eval` (5,000) fresh votes (eval).

The representation is whatever `represent` returns (the encoder mean in this project). Votes are
drawn one after another from one seeded generator as in disentanglement_lib, and encoded many at a
time, which changes nothing since the representation is deterministic.
`active_dims` is the number of active dimensions (disentanglement_lib's num_active_dims reports
len() of its boolean mask, i.e. the code size; we report the count it means).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Protocol

import numpy as np


class GroundTruthData(Protocol):
    num_factors: int

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray: ...

    def images_for_factors(self, factors: np.ndarray) -> np.ndarray: ...


Represent = Callable[[np.ndarray], np.ndarray]  # observations [N, ...] -> codes [N, D]


class FactorVAEScore(NamedTuple):
    train_accuracy: float
    eval_accuracy: float
    active_dims: int
    active: np.ndarray  # bool [D]
    global_variance: np.ndarray  # [D]
    train_votes: np.ndarray  # int [num_factors, D]
    eval_votes: np.ndarray  # int [num_factors, D]

    def summary(self) -> dict[str, float | int]:
        return {"train_accuracy": self.train_accuracy, "eval_accuracy": self.eval_accuracy,
                "active_dims": self.active_dims}


def _votes(data: GroundTruthData, represent: Represent, n_votes: int, batch_size: int, rng: np.random.Generator,
           global_var: np.ndarray, active: np.ndarray, chunk: int) -> np.ndarray:
    votes = np.zeros((data.num_factors, len(global_var)), dtype=np.int64)
    active_idx = np.flatnonzero(active)
    done = 0
    while done < n_votes:
        m = min(chunk, n_votes - done)
        ks, rows = [], []
        for _ in range(m):  # same draw order as disentanglement_lib: factor, then the batch
            k = int(rng.integers(data.num_factors))
            f = data.sample_factors(batch_size, rng)
            f[:, k] = f[0, k]
            ks.append(k)
            rows.append(f)
        codes = represent(data.images_for_factors(np.concatenate(rows))).reshape(m, batch_size, -1)
        local = codes.var(axis=1, ddof=1)
        best = active_idx[np.argmin(local[:, active_idx] / global_var[active_idx], axis=1)]
        np.add.at(votes, (np.array(ks), best), 1)
        done += m
    return votes


def _accuracy(votes: np.ndarray, classifier: np.ndarray) -> float:
    total = votes.sum()
    return float(votes[classifier, np.arange(votes.shape[1])].sum() / total) if total else 0.0


def factor_vae_metric(data: GroundTruthData, represent: Represent, seed: int = 0, batch_size: int = 64,
                      num_train: int = 10_000, num_eval: int = 5_000, num_variance: int = 10_000,
                      prune_threshold: float = 0.05, chunk: int = 16) -> FactorVAEScore:
    """Train and eval accuracy of the majority-vote classifier (see the module docstring)."""
    if batch_size < 2 or num_train < 1 or num_eval < 1 or num_variance < 2:
        raise ValueError("batch_size and num_variance must be >= 2, num_train and num_eval >= 1")
    rng = np.random.default_rng(seed)
    codes = represent(data.images_for_factors(data.sample_factors(num_variance, rng)))
    global_var = codes.var(axis=0, ddof=1)
    active = np.sqrt(global_var) >= prune_threshold
    d = len(global_var)
    empty = np.zeros((data.num_factors, d), dtype=np.int64)
    if not active.any():
        return FactorVAEScore(0.0, 0.0, 0, active, global_var, empty, empty)
    train = _votes(data, represent, num_train, batch_size, rng, global_var, active, chunk)
    classifier = np.argmax(train, axis=0)
    evaluation = _votes(data, represent, num_eval, batch_size, rng, global_var, active, chunk)
    return FactorVAEScore(_accuracy(train, classifier), _accuracy(evaluation, classifier), int(active.sum()),
                          active, global_var, train, evaluation)
