"""Uncertainty scores (`laplace_cli.core.scores`) against independent numpy / scipy implementations.

Binary scores are checked against the distribution over all 2^C label vectors, enumerated
explicitly, so the "independent labels" reading is tested rather than restated.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.stats import entropy as scipy_entropy

from laplace_cli.core.scores import (
    max_probability,
    mutual_information,
    predictive_entropy,
    regression_variance_split,
)


def random_probs(shape: tuple[int, ...], seed: int = 0, concentration: float = 0.5) -> torch.Tensor:
    """Dirichlet draws (sharp for small concentration), float64."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(shape[-1], concentration), size=shape[:-1])
    return torch.from_numpy(p)


def label_vector_distribution(p: np.ndarray) -> np.ndarray:
    """Probabilities of all 2^C label vectors under independent Bernoulli(p_k), one row each."""
    out = []
    for row in p:
        probs = []
        for labels in itertools.product([0, 1], repeat=len(row)):
            probs.append(np.prod([pk if yk else 1 - pk for pk, yk in zip(row, labels)]))
        out.append(probs)
    return np.array(out)


def test_predictive_entropy_matches_scipy():
    p = random_probs((20, 6))
    expected = scipy_entropy(p.numpy(), axis=-1)
    torch.testing.assert_close(
        predictive_entropy(p), torch.from_numpy(expected), rtol=1e-12, atol=0
    )


def test_entropy_handles_zeros_and_extremes():
    p = torch.tensor([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]], dtype=torch.float64)
    h = predictive_entropy(p)
    torch.testing.assert_close(
        h, torch.tensor([0.0, math.log(3), math.log(2)], dtype=torch.float64), rtol=1e-12, atol=0
    )


def test_max_probability_matches_numpy():
    p = random_probs((15, 4), seed=1)
    expected = p.numpy().max(-1)
    torch.testing.assert_close(max_probability(p), torch.from_numpy(expected), rtol=0, atol=0)


def test_binary_scores_match_the_distribution_over_label_vectors():
    rng = np.random.default_rng(2)
    p = rng.uniform(0.01, 0.99, size=(10, 4))
    joint = label_vector_distribution(p)  # (10, 16), rows sum to 1
    np.testing.assert_allclose(joint.sum(-1), 1.0, rtol=1e-12)
    pt = torch.from_numpy(p)
    torch.testing.assert_close(
        predictive_entropy(pt, binary=True),
        torch.from_numpy(scipy_entropy(joint, axis=-1)),
        rtol=1e-10,
        atol=0,
    )
    torch.testing.assert_close(
        max_probability(pt, binary=True), torch.from_numpy(joint.max(-1)), rtol=1e-12, atol=0
    )


def bald_reference(samples: np.ndarray) -> np.ndarray:
    """H[mean_s p_s] − mean_s H[p_s], with explicit loops over rows and samples."""
    n_samples, n_rows, _ = samples.shape
    out = np.zeros(n_rows)
    for b in range(n_rows):
        mean = samples[:, b].mean(0)
        out[b] = scipy_entropy(mean) - np.mean(
            [scipy_entropy(samples[s, b]) for s in range(n_samples)]
        )
    return out


def test_mutual_information_matches_reference():
    samples = random_probs((25, 8, 5), seed=3)
    expected = bald_reference(samples.numpy())
    mi = mutual_information(samples)
    torch.testing.assert_close(mi, torch.from_numpy(expected), rtol=1e-10, atol=1e-14)
    assert bool((mi > 0).all())


def test_mutual_information_extremes():
    # All samples agree: no disagreement, MI = 0.
    p = random_probs((1, 4, 3), seed=4).expand(10, 4, 3)
    torch.testing.assert_close(mutual_information(p), torch.zeros(4, dtype=torch.float64))
    # Each sample certain of a different class, uniformly: MI = H[uniform] = log C.
    eye = torch.eye(3, dtype=torch.float64).unsqueeze(1)  # (S=3, B=1, C=3)
    torch.testing.assert_close(
        mutual_information(eye), torch.tensor([math.log(3)], dtype=torch.float64)
    )


def test_binary_mutual_information_is_the_sum_over_labels():
    rng = np.random.default_rng(5)
    p = rng.uniform(0.05, 0.95, size=(30, 6, 3))  # (S, B, labels)
    expected = np.zeros(6)
    for k in range(3):
        two_class = np.stack([p[..., k], 1 - p[..., k]], -1)
        expected += bald_reference(two_class)
    mi = mutual_information(torch.from_numpy(p), binary=True)
    torch.testing.assert_close(mi, torch.from_numpy(expected), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("sigma", [0.3, torch.tensor([0.3, 2.0])])
def test_regression_variance_split(sigma):
    rng = np.random.default_rng(6)
    epistemic = torch.from_numpy(rng.uniform(0.1, 1.0, size=(5, 2)))
    epi, ale, tot = regression_variance_split(epistemic, sigma)
    s = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (2,))
    expected_ale = np.tile(s**2, (5, 1))
    torch.testing.assert_close(epi, epistemic, rtol=0, atol=0)
    torch.testing.assert_close(ale, torch.from_numpy(expected_ale), rtol=1e-15, atol=0)
    torch.testing.assert_close(tot, epistemic + torch.from_numpy(expected_ale), rtol=1e-15, atol=0)
    # A covariance (B, C, C) contributes its diagonal.
    cov = torch.diag_embed(epistemic) + 0.01
    epi2, _, tot2 = regression_variance_split(cov, sigma)
    torch.testing.assert_close(epi2, epistemic + 0.01, rtol=1e-15, atol=0)
    torch.testing.assert_close(tot2, tot + 0.01, rtol=1e-15, atol=1e-15)
