import pytest
import torch

from hf_ext.drift.metrics import CKAAccumulator, DriftAccumulator, linear_cka


def _data(n=300, dx=24, dy=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dx, generator=g, dtype=torch.float64) * torch.linspace(0.5, 3, dx, dtype=torch.float64) + 4
    y = x @ torch.randn(dx, dy, generator=g, dtype=torch.float64) + torch.randn(
        n, dy, generator=g, dtype=torch.float64
    )
    return x, y


def _orthogonal(d, seed):
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def textbook_cka(x, y):
    """tr(K H L H) / sqrt(tr(K H K H) tr(L H L H)) with linear kernels."""
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    k, l_ = x @ x.T, y @ y.T

    def hsic(a, b):
        return torch.trace(a @ h @ b @ h)

    return (hsic(k, l_) / torch.sqrt(hsic(k, k) * hsic(l_, l_))).item()


def u_centered(k):
    """U-centering (Szekely & Rizzo 2014): an independent route to the unbiased HSIC estimator."""
    n = k.shape[0]
    k = k.clone()
    k.fill_diagonal_(0)
    u = k - k.sum(0, keepdim=True) / (n - 2) - k.sum(1, keepdim=True) / (n - 2) + k.sum() / ((n - 1) * (n - 2))
    u.fill_diagonal_(0)
    return u


def direct_debiased_cka(x, y):
    n = x.shape[0]
    ku, lu = u_centered(x @ x.T), u_centered(y @ y.T)

    def hsic_u(a, b):
        return (a * b).sum() / (n * (n - 3))

    return (hsic_u(ku, lu) / torch.sqrt(hsic_u(ku, ku) * hsic_u(lu, lu))).item()


def test_cka_of_a_representation_with_itself_is_one():
    x, _ = _data()
    assert linear_cka(x, x) == pytest.approx(1, abs=1e-12)
    assert linear_cka(x[:10], x[:10]) == pytest.approx(1, abs=1e-12)  # Gram space
    assert linear_cka(x, x, debiased=True) == pytest.approx(1, abs=1e-12)


def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling_of_either_side():
    x, y = _data()
    reference = linear_cka(x, y)
    assert linear_cka(x @ _orthogonal(24, 1), y) == pytest.approx(reference, abs=1e-12)
    assert linear_cka(x, y @ _orthogonal(32, 2)) == pytest.approx(reference, abs=1e-12)
    assert linear_cka(7.5 * x, y) == pytest.approx(reference, abs=1e-12)
    assert linear_cka(x, 0.01 * y) == pytest.approx(reference, abs=1e-12)
    assert linear_cka(x + 100, y - 3) == pytest.approx(reference, abs=1e-10)  # translation too


def test_cka_is_not_invariant_to_non_isotropic_scaling():
    x, y = _data()
    stretch = torch.ones(24, dtype=torch.float64)
    stretch[:4] = 10
    assert abs(linear_cka(x * stretch, y) - linear_cka(x, y)) > 1e-2


@pytest.mark.parametrize("n", [20, 300])  # below the width (Gram space) and above it (feature space)
@pytest.mark.parametrize("splits", [[1.0], [0.1, 0.3, 0.6], [0.01] * 50 + [0.5]])
def test_streaming_cka_equals_the_textbook_gram_formula(n, splits):
    x, y = _data(n=n)
    accumulator = CKAAccumulator()
    bounds = [0] + [min(n, max(1, round(n * sum(splits[: i + 1])))) for i in range(len(splits))] + [n]
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        if hi > lo:
            accumulator.update(x[lo:hi], y[lo:hi])
    assert accumulator.n == n
    assert accumulator.space == ("gram" if n <= 32 else "feature")
    assert accumulator.cka() == pytest.approx(textbook_cka(x, y), abs=1e-10)


@pytest.mark.parametrize("n", [12, 300])
def test_debiased_cka_equals_a_direct_unbiased_hsic_implementation(n):
    x, y = _data(n=n)
    accumulator = CKAAccumulator()
    for chunk in torch.arange(n).split(7):
        accumulator.update(x[chunk], y[chunk])
    assert accumulator.debiased_cka() == pytest.approx(direct_debiased_cka(x, y), abs=1e-10)
    # the debiased estimate is lower for unrelated small sets, where linear CKA is biased upward
    noise = torch.randn(n, 32, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert abs(linear_cka(x, noise, debiased=True)) < linear_cka(x, noise)


def test_float32_rows_accumulate_in_float64_to_float32_precision():
    x, y = _data(n=2000)
    assert linear_cka(x.float(), y.float()) == pytest.approx(textbook_cka(x, y), abs=1e-5)


def test_cosine_statistics():
    x, y = _data(dy=24)
    same, flipped, different = DriftAccumulator(), DriftAccumulator(), DriftAccumulator()
    same.update(x, x)
    flipped.update(x, -x)
    different.update(x, torch.randn(300, 30, dtype=torch.float64))
    r = same.result()
    assert r.cosine_mean == pytest.approx(1) and r.cosine_p05 == pytest.approx(1) and r.mean_vector_cosine == 1
    assert flipped.result().cosine_mean == pytest.approx(-1) and flipped.result().cka == pytest.approx(1)
    r = different.result()
    assert r.cosine_mean is None and r.mean_vector_cosine is None and r.rows == 300  # widths differ
    mixed = DriftAccumulator()
    mixed.update(x, torch.cat([x[:150], -x[150:]]))
    r = mixed.result()
    assert r.cosine_mean == pytest.approx(0, abs=1e-9) and r.cosine_p05 == pytest.approx(-1, abs=1e-3)
    assert r.cosine_p95 == pytest.approx(1, abs=1e-3) and r.cosine_std == pytest.approx(1, abs=1e-9)


def test_undefined_cka_says_why():
    x, _ = _data()
    with pytest.raises(ValueError, match="do not vary"):
        linear_cka(x, torch.ones(300, 5))
    with pytest.raises(ValueError, match="at least 4 paired rows"):
        linear_cka(x[:3], x[:3], debiased=True)
    with pytest.raises(ValueError, match="paired rows"):
        linear_cka(x[:10], x[:9])
