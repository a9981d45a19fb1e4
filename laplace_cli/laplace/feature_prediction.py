"""The last-layer predictive from the head's features, on `Laplace`
(`prediction.PredictiveMixin` inherits it): a last-layer diag / kron posterior gives the
diagonal of J Σ Jᵀ, and kron exact draws of the logits, from φ alone, with no output Jacobians
and no (C, C) covariance per row (`posterior.feature_variance`, docs/design.md "Last-layer
prediction from features")."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from laplace_cli.core.batches import batch_size, keep_graph
from laplace_cli.core.enums import Structure
from laplace_cli.laplace.batch_variance import feature_variance_diag
from laplace_cli.posterior.predictive import RowSeeds, standard_normals
from laplace_cli.subsets.last_layer import LastLayer

__all__ = ["FeaturePredictionMixin"]


class FeaturePredictionMixin:
    """Variances and logit draws of a last-layer diag / kron posterior from the features."""

    def variance_from_features(self) -> bool:
        """Whether the diagonal of J Σ Jᵀ comes from the head's features alone: a last-layer
        subset (J = I_C ⊗ φᵀ, no output Jacobians) and a posterior with a feature form (diag,
        kron; not per-output curvature)."""
        return isinstance(self.subset, LastLayer) and self.posterior.has_feature_variance()

    def output_covariance_is_diagonal(self) -> bool:
        """Whether J Σ Jᵀ is diagonal: a last-layer diag posterior, where each output's weights
        and bias are blocks of their own (J = I_C ⊗ φᵀ, Σ diagonal)."""
        return self.variance_from_features() and self.posterior.structure == Structure.DIAG

    def draws_from_features(self) -> bool:
        """Whether logit draws come from the features (`OutputDraws`: a last-layer kron
        posterior; a diagonal covariance's draws are ε ⊙ √Var anyway)."""
        return self.variance_from_features() and self.posterior.structure == Structure.KRON

    def feature_moments(
        self,
        x: Any,
        n_samples: int = 0,
        generator: torch.Generator | RowSeeds | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """GLM mean (B, C), diag J Σ Jᵀ (B, C) and, with `n_samples` (kron only), that many
        draws of the logits from N(f_μ, J Σ Jᵀ), (S, B, C), from one forward pass. The
        variances go by row chunks within the memory budget; the draws take the batch whole,
        as the (S, B, C) tensor they fill does."""
        self.require_fit()
        if self._backprop_off():
            with keep_graph():
                return self.feature_moments(x, n_samples, generator)
        x = self.as_inputs(x)
        prior, scale = self.prior_precision, self.curvature_scale()
        form = self.posterior.feature_variance_form(prior, scale)
        if batch_size(x) == 0:
            f_mu, f_var = self._empty_prediction()
            return f_mu, f_var[:, 0], (f_mu.expand(n_samples, -1, -1) if n_samples else None)
        if not n_samples:
            f_mu, var = feature_variance_diag(
                x, self.subset, form, self._dtype, max_memory=self.max_memory
            )
            return f_mu, var, None
        phi, f = self.subset.features(x)
        f_mu = f.to(self._dtype)
        eps = standard_normals(n_samples, f_mu.shape[0], form.draws.width, f_mu, generator)
        var, draws = form.variance_and_draws(phi.to(self._dtype), f_mu, eps)
        return f_mu, var, draws
