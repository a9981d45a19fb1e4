"""Uncertainty scores for active learning and out-of-distribution detection, as pure functions.

Classification scores take predictive probabilities (B, C) or samples of them (S, B, C), one
row per input; higher entropy / mutual information and lower max probability mean "less sure".
With `binary=True` the C outputs are independent Bernoulli labels (sigmoid outputs, multi-label
included) and a row's distribution is over label vectors y ∈ {0, 1}^C with the labels taken as
independent, so its entropy is the sum of the per-label entropies and its most likely label
vector has probability Π_k max(p_k, 1 − p_k).

Regression splits the predictive variance into an epistemic part (the GLM functional variance
J Σ Jᵀ, or the spread of sampled networks) and an aleatoric part (the observation noise σ²).
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Probabilities are clamped here before logs, so p log p → 0 at p = 0 without NaN.
_TINY = 1e-30


def _xlogx(p: Tensor) -> Tensor:
    return p * p.clamp_min(_TINY).log()


def predictive_entropy(probs: Tensor, binary: bool = False) -> Tensor:
    """Entropy of the predictive distribution per row, in nats.

    categorical: H[p] = −Σ_k p_k log p_k;
    binary: H = −Σ_k [p_k log p_k + (1 − p_k) log(1 − p_k)] (independent labels).

    Args:
        probs: (..., C) probabilities; rows sum to 1 unless `binary`.
        binary: treat the C outputs as independent Bernoulli probabilities.

    Returns:
        (...,) entropies, ≥ 0; at most log C (categorical) or C·log 2 (binary).
    """
    if binary:
        return -(_xlogx(probs) + _xlogx(1.0 - probs)).sum(-1)
    return -_xlogx(probs).sum(-1)


def max_probability(probs: Tensor, binary: bool = False) -> Tensor:
    """Probability of the most likely outcome per row (confidence; 1 − it is an OOD score).

    categorical: max_k p_k; binary: Π_k max(p_k, 1 − p_k), the probability of the most likely
    label vector under independent labels.

    Args:
        probs: (..., C) probabilities.
        binary: treat the C outputs as independent Bernoulli probabilities.

    Returns:
        (...,) values in [1/C, 1] (categorical) or [2^−C, 1] (binary).
    """
    if binary:
        return probs.maximum(1.0 - probs).prod(-1)
    return probs.max(-1).values


def mutual_information(prob_samples: Tensor, binary: bool = False) -> Tensor:
    """BALD mutual information between the label and the weights, from posterior samples.

    I[y; θ | x] = H[E_θ p(y|x, θ)] − E_θ H[p(y|x, θ)] (Houlsby et al. 2011), the expectations
    being sample means over the S draws (network samples, or GLM samples of the logits). It is
    ≥ 0 (Jensen: entropy is concave) and 0 when all samples agree. With `binary` it is the sum
    of the per-label mutual informations (exact for one label).

    Args:
        prob_samples: (S, ..., C) sampled probabilities.
        binary: treat the C outputs as independent Bernoulli probabilities.

    Returns:
        (...,) mutual information in nats, clamped at 0 against rounding.
    """
    mean_entropy = predictive_entropy(prob_samples, binary).mean(0)
    entropy_of_mean = predictive_entropy(prob_samples.mean(0), binary)
    return (entropy_of_mean - mean_entropy).clamp_min(0.0)


def regression_variance_split(
    epistemic_var: Tensor, sigma_noise: Tensor | float
) -> tuple[Tensor, Tensor, Tensor]:
    """Split of the Gaussian predictive variance: (epistemic, aleatoric, total).

    y | x ~ N(f_μ(x), J Σ Jᵀ + σ² I): the epistemic part is the functional variance (its
    diagonal), the aleatoric part the observation noise σ², and the total their sum.

    Args:
        epistemic_var: (B, C) per-output functional variances (the diagonal of J Σ Jᵀ), or
            (B, C, C) covariances, of which the diagonal is taken.
        sigma_noise: σ, a scalar or one value per output (C,).

    Returns:
        (epistemic, aleatoric, total), each (B, C).
    """
    if epistemic_var.ndim == 3:
        epistemic_var = epistemic_var.diagonal(dim1=-2, dim2=-1)
    sigma = torch.as_tensor(
        sigma_noise, dtype=epistemic_var.dtype, device=epistemic_var.device
    ).reshape(-1)
    noise = sigma**2 if sigma.numel() > 1 else sigma.reshape(()) ** 2  # (C,) or ()
    aleatoric = torch.broadcast_to(noise, epistemic_var.shape).clone()
    return epistemic_var, aleatoric, epistemic_var + aleatoric
