"""Plain NumPy references for InReaCh's channels, written from the official code's loops
(tests/ops/test_channels.py, tests/methods/test_inreach.py)."""
import numpy as np


def associate_numpy(x, seeds):
    """The official gen_channels' association, float64: for each seed s and image c > s the
    Euclidean distances, each patch j of c its nearest seed patch i and whether j is i's
    nearest patch in c; then each patch keeps the seed with the smallest distance (the first
    on ties)."""
    b, p, _ = x.shape
    x = x.astype(np.float64)
    dist = np.full((seeds, b, p), np.inf)
    near = np.full((seeds, b, p), -1)
    mutual = np.zeros((seeds, b, p), bool)
    for s in range(min(seeds, b - 1)):
        for c in range(s + 1, b):
            d = np.sqrt(((x[c][:, None] - x[s][None]) ** 2).sum(-1))  # (Pc, Ps)
            near[s, c] = d.argmin(1)
            dist[s, c] = d.min(1)
            back = d.argmin(0)  # seed patch -> its nearest patch of c
            mutual[s, c] = back[near[s, c]] == np.arange(p)
    best = dist.argmin(0)
    pick = lambda a: np.take_along_axis(a, best[None], 0)[0]  # noqa: E731
    seed = np.where(np.isfinite(pick(dist)), best, -1)
    return seed, np.where(seed >= 0, pick(near), -1), pick(dist), pick(mutual) & (seed >= 0)


def members_numpy(x, seed, seed_patch, mutual, min_length, max_std, spread):
    """The official channel dictionary and filter loop (channels keyed by seed image and seed
    patch, the seed's own patch first), float64."""
    b, p, _ = x.shape
    chans = {}
    for c in range(b):
        for j in range(p):
            if mutual[c, j]:
                key = (seed[c, j], seed_patch[c, j])
                chans.setdefault(key, [key]).append((c, j))
    nominal = np.zeros((b, p), bool)
    for members in chans.values():
        if len(members) <= min_length:
            continue
        v = np.array([x[c, j] for c, j in members], np.float64)
        d = np.sqrt(((v - v.mean(0)) ** 2).sum(1))
        sigma = d.std() if spread == "code" else np.sqrt((d ** 2).mean())
        stay = [m for m, dm in zip(members, d) if dm < max_std * sigma]
        if len(stay) > min_length:
            for c, j in stay:
                nominal[c, j] = True
    return nominal
