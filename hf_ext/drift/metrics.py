"""Drift metrics between paired representations: linear CKA, debiased CKA and cosine, exact and streaming.

Rows ``x[i]`` and ``y[i]`` describe the same token (or example) under two models. Everything is
accumulated in float64 over batches of paired rows:

- **Feature space**: ``n``, column sums, ``X^T X``, ``Y^T Y`` and ``X^T Y`` (plus a few vectors for the
  debiased estimator). Memory is ``O(d^2)`` whatever the number of rows.
- **Gram space**: while there are no more rows than the width, the rows themselves are kept and CKA
  comes from the ``n x n`` Gram matrices, which is cheaper (mean-pooled sets of a few hundred examples).

:class:`CKAAccumulator` starts in Gram space and moves to feature space once the rows outnumber the
width, so the choice is automatic and both give the textbook value. Rows are shifted by the first
batch's mean before accumulating: centred quantities do not change, and the uncentred sums stay small,
which keeps the subtraction of the mean exact enough for 1e-10 agreement on float64 data.

Linear CKA (Kornblith et al. 2019) is ``HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` with linear
kernels and the biased HSIC ``tr(K H L H)``; it is biased upward when there are few rows. The debiased
option uses the unbiased HSIC estimator (Song et al. 2012) instead, which needs at least 4 rows.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import torch

logger = logging.getLogger(__name__)

COSINE_BINS = 2000  # histogram over [-1, 1]: quantiles to 0.001 in constant memory


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class CKAAccumulator:
    """Streaming linear and debiased CKA between paired rows ``x`` ``[m, dx]`` and ``y`` ``[m, dy]``."""

    def __init__(self) -> None:
        self.n = 0
        self._rows: tuple[list[torch.Tensor], list[torch.Tensor]] | None = ([], [])
        self._shift: tuple[torch.Tensor, torch.Tensor] | None = None
        self._sums: dict[str, torch.Tensor] = {}

    @property
    def space(self) -> str:
        """``"gram"`` while the rows are kept, ``"feature"`` once they are summed."""
        return "gram" if self._rows is not None else "feature"

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add a batch of paired rows."""
        if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
            raise ValueError(f"expected paired rows [n, dx] and [n, dy], got {tuple(x.shape)} and {tuple(y.shape)}")
        if self._shift is None:
            self._shift = (x.double().mean(0), y.double().mean(0))
        elif (x.shape[1], y.shape[1]) != (self._shift[0].shape[0], self._shift[1].shape[0]):
            raise ValueError(
                f"rows of width ({x.shape[1]}, {y.shape[1]}) after rows of width "
                f"({self._shift[0].shape[0]}, {self._shift[1].shape[0]})"
            )
        dtype = _compute_dtype(x)
        xs = (x.to(dtype) - self._shift[0].to(device=x.device, dtype=dtype)).to(dtype)
        ys = (y.to(dtype) - self._shift[1].to(device=y.device, dtype=dtype)).to(dtype)
        self.n += x.shape[0]
        if self._rows is not None:
            self._rows[0].append(xs.double())
            self._rows[1].append(ys.double())
            if self.n > max(x.shape[1], y.shape[1]):
                rows, self._rows = self._rows, None
                self._add_features(torch.cat(rows[0]), torch.cat(rows[1]))
            return
        self._add_features(xs, ys)

    def _add_features(self, x: torch.Tensor, y: torch.Tensor) -> None:
        qx, qy = (x.double() ** 2).sum(1), (y.double() ** 2).sum(1)
        batch = {
            "sx": x.sum(0, dtype=torch.float64),
            "sy": y.sum(0, dtype=torch.float64),
            "xx": (x.T @ x).double(),
            "yy": (y.T @ y).double(),
            "xy": (x.T @ y).double(),
            # the extra sums of the unbiased HSIC estimator (see _hsic_unbiased_features)
            "qx": qx.sum(),
            "qy": qy.sum(),
            "qxx": (qx * qx).sum(),
            "qyy": (qy * qy).sum(),
            "qxy": (qx * qy).sum(),
            "x_qx": qx @ x.double(),
            "y_qy": qy @ y.double(),
            "x_qy": qy @ x.double(),
            "y_qx": qx @ y.double(),
        }
        for key, value in batch.items():
            self._sums[key] = value if key not in self._sums else self._sums[key] + value

    def _gram(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self._rows is not None
        x, y = torch.cat(self._rows[0]), torch.cat(self._rows[1])
        return x @ x.T, y @ y.T

    def cka(self) -> float:
        """Linear CKA of the rows seen so far."""
        self._require(2)
        if self._rows is not None:
            return gram_linear_cka(*self._gram())
        s, n = self._sums, self.n
        cxx = s["xx"] - torch.outer(s["sx"], s["sx"]) / n
        cyy = s["yy"] - torch.outer(s["sy"], s["sy"]) / n
        cxy = s["xy"] - torch.outer(s["sx"], s["sy"]) / n
        return _ratio((cxy * cxy).sum(), (cxx * cxx).sum(), (cyy * cyy).sum())

    def debiased_cka(self) -> float:
        """CKA with the unbiased HSIC estimator (needs at least 4 rows)."""
        self._require(4)
        if self._rows is not None:
            k, l_ = self._gram()
            return _ratio(hsic_unbiased(k, l_), hsic_unbiased(k, k), hsic_unbiased(l_, l_))
        s = self._sums
        return _ratio(
            self._hsic_unbiased_features(s["xy"], s["sx"], s["sy"], s["qx"], s["qy"], s["qxy"], s["x_qy"], s["y_qx"]),
            self._hsic_unbiased_features(s["xx"], s["sx"], s["sx"], s["qx"], s["qx"], s["qxx"], s["x_qx"], s["x_qx"]),
            self._hsic_unbiased_features(s["yy"], s["sy"], s["sy"], s["qy"], s["qy"], s["qyy"], s["y_qy"], s["y_qy"]),
        )

    def _hsic_unbiased_features(self, cross, sa, sb, qa, qb, qab, a_qb, b_qa) -> torch.Tensor:
        # With K = A A^T, L = B B^T and their zero-diagonal versions Kt, Lt (q = squared row norms):
        #   tr(Kt Lt)     = ||A^T B||^2 - sum q_a q_b
        #   1^T Kt 1      = |sum a|^2 - sum q_a
        #   1^T Kt Lt 1   = sa^T (A^T B) sb - sa . sum(q_b a) - sb . sum(q_a b) + sum q_a q_b
        n = self.n
        trace = (cross * cross).sum() - qab
        ones_k, ones_l = sa @ sa - qa, sb @ sb - qb
        ones_kl = sa @ cross @ sb - sa @ a_qb - sb @ b_qa + qab
        return _hsic_u(trace, ones_k, ones_l, ones_kl, n)

    def _require(self, rows: int) -> None:
        if self.n < rows:
            raise ValueError(f"CKA needs at least {rows} paired rows, got {self.n}")


def _center(gram: torch.Tensor) -> torch.Tensor:
    return gram - gram.mean(0, keepdim=True) - gram.mean(1, keepdim=True) + gram.mean()


def gram_linear_cka(k: torch.Tensor, l_: torch.Tensor) -> float:
    """Linear CKA from the Gram matrices ``X X^T`` and ``Y Y^T`` of paired rows (e.g. indexed by a bootstrap
    resample, ``k[idx][:, idx]``, which avoids recomputing them)."""
    kc, lc = _center(k.double()), _center(l_.double())
    return _ratio((kc * lc).sum(), (kc * kc).sum(), (lc * lc).sum())


def _hsic_u(trace, ones_k, ones_l, ones_kl, n: int) -> torch.Tensor:
    return (trace + ones_k * ones_l / ((n - 1) * (n - 2)) - 2 * ones_kl / (n - 2)) / (n * (n - 3))


def hsic_unbiased(k: torch.Tensor, l_: torch.Tensor) -> torch.Tensor:
    """The unbiased HSIC estimator of two ``n x n`` Gram matrices (Song et al. 2012), float64."""
    n = k.shape[0]
    if n < 4:
        raise ValueError(f"the unbiased HSIC estimator needs at least 4 rows, got {n}")
    kt, lt = k.double().clone(), l_.double().clone()
    kt.fill_diagonal_(0)
    lt.fill_diagonal_(0)
    return _hsic_u((kt * lt).sum(), kt.sum(), lt.sum(), kt.sum(0) @ lt.sum(1), n)


def _ratio(cross: torch.Tensor, xx: torch.Tensor, yy: torch.Tensor) -> float:
    denominator = (xx * yy).item()
    if not denominator > 0:
        raise ValueError(
            "CKA is undefined: one side's representations do not vary across rows (every row is the same), "
            "or the debiased estimate of its self-similarity is not positive (too few rows)"
        )
    return cross.item() / denominator**0.5


def linear_cka(x: torch.Tensor, y: torch.Tensor, *, debiased: bool = False) -> float:
    """Linear CKA of paired rows ``x`` ``[n, dx]`` and ``y`` ``[n, dy]`` (1 = same up to rotation and scale).

    Computed in float64 in Gram space when ``n`` is at most the larger width, else in feature space.
    ``debiased=True`` uses the unbiased HSIC estimator, for small ``n`` where linear CKA is biased upward.
    """
    accumulator = CKAAccumulator()
    accumulator.update(x, y)
    return accumulator.debiased_cka() if debiased else accumulator.cka()


@dataclass(frozen=True)
class LayerDrift:
    """Drift of one layer between two models over the same rows."""

    rows: int
    cka: float
    debiased_cka: float | None
    cosine_mean: float | None
    cosine_std: float | None
    cosine_p05: float | None
    cosine_p50: float | None
    cosine_p95: float | None
    mean_vector_cosine: float | None

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


class DriftAccumulator:
    """CKA (linear and debiased) and cosine statistics of one layer, streamed over paired batches.

    Cosines need both sides to have the same width; they are ``None`` otherwise. The distribution of
    the per-row cosine is kept as a fixed histogram, so memory does not grow with the number of rows.
    """

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.cka = CKAAccumulator()
        self._hist = torch.zeros(COSINE_BINS, dtype=torch.float64)
        self._cos_sum = self._cos_sq = 0.0
        self._cos_range = (1.0, -1.0)
        self._mean_x: torch.Tensor | None = None
        self._mean_y: torch.Tensor | None = None

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.cka.update(x, y)
        self._mean_x = x.sum(0, dtype=torch.float64) + (0 if self._mean_x is None else self._mean_x)
        self._mean_y = y.sum(0, dtype=torch.float64) + (0 if self._mean_y is None else self._mean_y)
        if x.shape[1] == y.shape[1]:
            cos = torch.nn.functional.cosine_similarity(x, y, dim=1, eps=1e-12).double()
            self._cos_sum += cos.sum().item()
            self._cos_sq += (cos * cos).sum().item()
            self._cos_range = (min(self._cos_range[0], cos.min().item()), max(self._cos_range[1], cos.max().item()))
            bins = ((cos.clamp(-1, 1) + 1) / 2 * COSINE_BINS).long().clamp_(max=COSINE_BINS - 1)
            self._hist += torch.bincount(bins.cpu(), minlength=COSINE_BINS).double()

    def _quantile(self, q: float) -> float:
        cumulative = self._hist.cumsum(0)
        index = int(torch.searchsorted(cumulative, q * cumulative[-1]).clamp(max=COSINE_BINS - 1))
        low, high = self._cos_range
        return min(max(-1 + (index + 0.5) * 2 / COSINE_BINS, low), high)

    def _or_nan(self, value) -> float:
        try:
            return value()
        except ValueError as err:  # e.g. the embedding of a token every example ends with: constant rows
            logger.warning("%s: CKA is NaN: %s", self.name or "drift", err)
            return math.nan

    def result(self) -> LayerDrift:
        """The layer's statistics; CKA that is undefined (rows that do not vary) is NaN, with a warning."""
        n = self.cka.n
        cosines = self._hist.sum().item() > 0
        mean = self._cos_sum / n if cosines else None
        same_width = self._mean_x is not None and self._mean_y is not None and self._mean_x.shape == self._mean_y.shape
        return LayerDrift(
            rows=n,
            cka=self._or_nan(self.cka.cka),
            debiased_cka=self._or_nan(self.cka.debiased_cka) if n >= 4 else None,
            cosine_mean=mean,
            cosine_std=max(self._cos_sq / n - mean * mean, 0.0) ** 0.5 if cosines else None,
            cosine_p05=self._quantile(0.05) if cosines else None,
            cosine_p50=self._quantile(0.5) if cosines else None,
            cosine_p95=self._quantile(0.95) if cosines else None,
            mean_vector_cosine=torch.nn.functional.cosine_similarity(self._mean_x, self._mean_y, dim=0).item()
            if same_width
            else None,
        )
