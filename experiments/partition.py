"""Split a data set among federated clients: IID and label-skewed (Dirichlet) partitions.

Every function returns one sorted int64 index array per client; together they hold every sample
exactly once, no client is empty, and the result depends only on the arguments (``seed`` included).
"""

from __future__ import annotations

import numpy as np


def _check_labels(labels: np.ndarray, num_clients: int, min_size: int = 1) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
        raise ValueError(f"num_clients must be a positive integer, got {num_clients!r}")
    if min_size < 1:
        raise ValueError(f"min_size must be at least 1, got {min_size}")
    if num_clients * min_size > len(labels):
        raise ValueError(
            f"cannot give {num_clients} clients at least {min_size} sample(s) each from {len(labels)} samples"
        )
    return labels


def iid_partition(labels: np.ndarray, num_clients: int, seed: int = 0) -> list[np.ndarray]:
    """Shuffle the samples and deal them out in near-equal shares (sizes differ by at most one).

    Parameters
    ----------
    labels : numpy.ndarray
        Integer labels, shape ``(N,)`` (only their number matters here).
    num_clients : int
        Number of clients, at most ``N``.
    seed : int
        Seeds the shuffle.

    Returns
    -------
    list of numpy.ndarray
        ``num_clients`` sorted int64 index arrays.
    """
    labels = _check_labels(labels, num_clients)
    order = np.random.default_rng(seed).permutation(len(labels))
    return [np.sort(part).astype(np.int64) for part in np.array_split(order, num_clients)]


def _dirichlet_draw(
    labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator
) -> list[list[np.ndarray]]:
    """One draw: each class is shuffled and cut among the clients in Dirichlet(alpha) proportions."""
    shares: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        proportions = rng.dirichlet(np.full(num_clients, alpha))
        cuts = (np.cumsum(proportions)[:-1] * len(idx)).astype(np.int64)
        for client, part in enumerate(np.split(idx, cuts)):
            shares[client].append(part)
    return shares


def _rebalance(parts: list[np.ndarray], min_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Move random samples from the currently largest client to each client below ``min_size``."""
    parts = [p.copy() for p in parts]
    for client in range(len(parts)):
        while len(parts[client]) < min_size:
            donor = int(np.argmax([len(p) for p in parts]))
            take = min(min_size - len(parts[client]), len(parts[donor]) - min_size)
            moved = rng.choice(len(parts[donor]), size=take, replace=False)
            keep = np.ones(len(parts[donor]), dtype=bool)
            keep[moved] = False
            parts[client] = np.concatenate([parts[client], parts[donor][moved]])
            parts[donor] = parts[donor][keep]
    return parts


def dirichlet_partition(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    seed: int = 0,
    min_size: int = 1,
    max_draws: int = 100,
) -> list[np.ndarray]:
    """Label-skewed partition: per class, client shares drawn from Dirichlet(``alpha``).

    The usual non-IID benchmark split (Hsu et al. 2019; Li et al., NIID-Bench 2022): small
    ``alpha`` (0.1) gives each client few classes, large ``alpha`` (100) approaches IID.
    Draws are repeated (up to ``max_draws``) until every client has at least ``min_size`` samples;
    if none succeeds, the last draw is rebalanced by moving random samples from the largest client
    to the small ones, so the result always satisfies ``min_size``.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer labels, shape ``(N,)``.
    num_clients : int
        Number of clients.
    alpha : float
        Dirichlet concentration, > 0.
    seed : int
        Seeds all draws.
    min_size : int
        Smallest allowed client (>= 1); ``num_clients * min_size`` must not exceed ``N``.
    max_draws : int
        Redraws before falling back to rebalancing.

    Returns
    -------
    list of numpy.ndarray
        ``num_clients`` sorted int64 index arrays covering ``range(N)`` exactly once.
    """
    labels = _check_labels(labels, num_clients, min_size)
    if not alpha > 0 or not np.isfinite(alpha):
        raise ValueError(f"alpha must be a positive finite number, got {alpha!r}")
    if max_draws < 1:
        raise ValueError(f"max_draws must be at least 1, got {max_draws}")
    rng = np.random.default_rng(seed)
    for _ in range(max_draws):
        parts = [np.concatenate(s).astype(np.int64) for s in _dirichlet_draw(labels, num_clients, alpha, rng)]
        if min(len(p) for p in parts) >= min_size:
            break
    else:
        parts = _rebalance(parts, min_size, rng)
    return [np.sort(p) for p in parts]


def label_counts(labels: np.ndarray, parts: list[np.ndarray], num_classes: int | None = None) -> np.ndarray:
    """Per-client class histogram, shape ``(num_clients, num_classes)``."""
    labels = np.asarray(labels)
    k = int(num_classes if num_classes is not None else labels.max() + 1)
    return np.stack([np.bincount(labels[p], minlength=k) for p in parts])


def label_skew(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between each client's label distribution and the global one.

    0 for perfectly stratified clients, close to 1 when each client holds a single rare class.
    Clients are weighted equally.
    """
    counts = label_counts(labels, parts).astype(np.float64)
    global_dist = counts.sum(axis=0) / counts.sum()
    client_dist = counts / counts.sum(axis=1, keepdims=True)
    return float(0.5 * np.abs(client_dist - global_dist).sum(axis=1).mean())


__all__ = ["dirichlet_partition", "iid_partition", "label_counts", "label_skew"]
