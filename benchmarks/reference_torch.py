"""PyTorch CPU port of the official weighted approximate greedy coreset, the benchmark reference.

The loop is the official one (distances by the GEMM form with clamp and sqrt, min-distance update
with the new centre's distances times the sampling weights, argmax); it takes the starting points as
an argument and weights the initial min-distances as our implementation does, so that both run the
same algorithm on the same inputs and must return identical indices.
"""
import numpy as np
import torch


def _dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    aa = a.unsqueeze(1).bmm(a.unsqueeze(2)).reshape(-1, 1)
    bb = b.unsqueeze(1).bmm(b.unsqueeze(2)).reshape(1, -1)
    return (-2 * a.mm(b.T) + aa + bb).clamp(0, None).sqrt()


def weighted_greedy_coreset(x: np.ndarray, weights: np.ndarray, m: int,
                            starts: np.ndarray) -> np.ndarray:
    feats = torch.from_numpy(x)
    w = torch.from_numpy(weights).unsqueeze(-1)
    with torch.no_grad():
        mind = torch.mean(_dists(feats, feats[torch.from_numpy(starts)]), dim=-1,
                          keepdim=True) * w
        chosen = []
        for _ in range(m):
            idx = int(torch.argmax(mind))
            chosen.append(idx)
            d = _dists(feats, feats[idx:idx + 1]) * w
            mind = torch.minimum(mind, d)
    return np.array(chosen)
