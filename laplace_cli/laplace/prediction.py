"""Predictive half of `Laplace`: GLM functional (co)variance, link approximations, samples and
uncertainty scores, computed from the posterior's structure without dense Jacobians where the
structure allows (diag and kron layer by layer; full, low-rank and subnetworks in bounded chunks).

Kept apart from `approximation.py` (construction, fitting); `Laplace` inherits it. The pieces
that need no `Laplace` state live beside it: `batch_predictive` (the `la(x)` dispatch and the
uncertainty scores), `batch_variance` (the joint covariance, the last-layer diagonal from features),
`sampled_networks` (the "nn" predictive's outputs), `prediction_options` (checks of a call).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from laplace_cli.core.batches import Inputs, batch_size, keep_graph, keeping_graph, to_device
from laplace_cli.core.enums import (
    Likelihood,
    LinkApprox,
    PredType,
)
from laplace_cli.laplace import dense_outputs
from laplace_cli.laplace.batch_predictive import (
    batch_uncertainty,
    glm_moments,
    predict_batch,
    regression_predictive,
)
from laplace_cli.laplace.batch_variance import joint_covariance
from laplace_cli.laplace.feature_prediction import FeaturePredictionMixin
from laplace_cli.laplace.jacobian_forms import JacobianFormsMixin
from laplace_cli.laplace.prediction_options import (
    check_glm_model_kwargs,
    prediction_context,
)
from laplace_cli.laplace.sampled_networks import sampled_outputs
from laplace_cli.posterior.predictive import (
    RegressionPrediction,
    RowSeeds,
    check_generator,
    check_n_samples,
    check_pred_options,
    factor_bytes,
    factor_chunk_rows,
    input_signature,
    layer_input_bytes,
    link,
)
from laplace_cli.subsets.base import Factor, NoLayerFactorsError, iter_rows
from laplace_cli.subsets.last_layer import LastLayer
from laplace_cli.subsets.precision import cast_factors


class PredictiveMixin(JacobianFormsMixin, FeaturePredictionMixin):
    """Predictive methods of `Laplace`; they use its subset, posterior and hyperparameters."""

    # --- predictive -------------------------------------------------------------------------
    def as_inputs(self, x: Any) -> Inputs:
        """Inputs on the model's device; floating ones in the dtype the model runs in."""
        return to_device(x, self._device, getattr(self, "_model_dtype", self._dtype))

    def factor_rows(self, x: Inputs) -> int:
        """Rows per chunk of the structured (diag / kron) functional variance.

        The bytes per row of the layer factors plus the largest per-layer intermediate (a conv
        layer's per-sample Jacobian (B, C, d_out, d_in)), and of the layer inputs, are measured
        once per input signature on a one-row probe; `predictive.factor_chunk_rows` turns them
        into a chunk bounded by a small multiple of the batch's activations and by
        `max_memory // 4`.
        """
        cache: dict[tuple, tuple[int, int]] = self.__dict__.setdefault("_factor_row_bytes", {})
        key = input_signature(x)
        if key not in cache:
            _, factors = self.subset.factors(next(iter_rows(x, 1)))
            cache[key] = (factor_bytes(factors), layer_input_bytes(factors))
        per_row, inputs_per_row = cache[key]
        shape = getattr(self, "output_shape", None) if self.output_positions is not None else None
        passes = math.prod(shape) if shape else 1  # dense outputs: see factor_chunk_rows
        return factor_chunk_rows(
            batch_size(x), per_row, inputs_per_row, self.max_memory // 4, passes
        )

    def jacobian_pieces(self, x: Inputs) -> tuple[Tensor, list[Factor] | None, Tensor | None]:
        """(f, factors, J) of a chunk: the layer factors, or a dense Jacobian (B, C, P) for the
        structures that need one; a dense structure that `accepts_factors` gets the factors
        unless the model has none (a layer that runs twice per pass)."""
        posterior = self.posterior
        if self.dense_for_backprop():
            f, J = self.subset.jacobians(x)
            return f.to(self._dtype), None, J.to(self._dtype)
        if not posterior.needs_dense_jacobian or (
            posterior.accepts_factors and not self.__dict__.get("_no_layer_factors", False)
        ):
            try:
                f, factors = self.subset.factors(x)
                # A half-precision model's pieces: products are formed in the posterior's dtype.
                return f, cast_factors(factors, self._dtype), None
            except NoLayerFactorsError:
                if not (posterior.needs_dense_jacobian or posterior.accepts_dense_jacobian):
                    raise
                self._no_layer_factors = True
        f, J = self.subset.jacobians(x)
        return f, None, J.to(self._dtype)

    def dense_for_backprop(self) -> bool:
        """enable_backprop: the layer factors detach their inputs, so every subset but the last
        layer (whose closed form keeps φ's graph) uses differentiable dense Jacobians."""
        return keeping_graph() and not isinstance(self.subset, LastLayer)

    def _backprop_off(self) -> bool:
        """True when `enable_backprop` is set but its `keep_graph` block is not yet entered."""
        return getattr(self, "enable_backprop", False) and not keeping_graph()

    def _empty_prediction(self) -> tuple[Tensor, Tensor]:
        n_out = self.n_outputs or 1
        empty = lambda *s: torch.empty(*s, dtype=self._dtype, device=self._device)  # noqa: E731
        return empty(0, n_out), empty(0, n_out, n_out)

    def functional_variance_at(self, x: Any) -> tuple[Tensor, Tensor]:
        """GLM mean f(x; θ*) (B, C) and covariance J Σ Jᵀ (B, C, C), Σ = Λ⁻¹.

        No dense (B, C, P) Jacobian is built where the structure allows it: diag and kron work
        layer by layer from the layer inputs a and the back-propagated output Jacobians G
        (per-sample weight Jacobian Σ_t G_t ⊗ a_t), last-layer subsets have G = I in closed
        form, and the rows are chunked so that the factors and the largest per-layer
        intermediate stay within a small multiple of the batch's activations and under
        `max_memory // 4` (`predictive.factor_chunk_rows`). full, low-rank and subnetwork
        posteriors work in row chunks whose dense Jacobian would fit `max_memory // 4`; full
        computes J V from the layer factors where that is cheaper
        (`jacobian_products.matmul`), the others use dense Jacobians.
        """
        return self._variance_rows(x, diagonal=False)

    def _variance_rows(self, x: Any, *, diagonal: bool) -> tuple[Tensor, Tensor]:
        """`functional_variance_at`, or with `diagonal` its (B, C) diagonal from the posterior's
        `functional_variance_diag` (no (C, C) products where the structure avoids them)."""
        self.require_fit()
        if self._backprop_off():
            with keep_graph():
                return self._variance_rows(x, diagonal=diagonal)
        x = self.as_inputs(x)
        if batch_size(x) == 0:
            f_mu, f_var = self._empty_prediction()
            return (f_mu, f_var[:, 0]) if diagonal else (f_mu, f_var)
        prior, scale = self.prior_precision, self.curvature_scale()
        dense = self.posterior.needs_dense_jacobian or self.dense_for_backprop()
        rows = self.jacobian_chunk_rows() if dense else self.factor_rows(x)
        posterior = self.posterior
        if not diagonal:
            variance = posterior.functional_variance
        elif posterior.cheap_variance_diag:
            variance = posterior.functional_variance_diag
        else:  # no cheaper diagonal than the full matrix's

            def variance(prior, scale, factors, J):
                full = posterior.functional_variance(prior, scale, factors=factors, J=J)
                return torch.diagonal(full, dim1=-2, dim2=-1)

        mus, vars_ = [], []
        for xc in iter_rows(x, rows):
            f, factors, J = self.jacobian_pieces(xc)
            vars_.append(variance(prior, scale, factors=factors, J=J))
            mus.append(f.to(self._dtype))
        return torch.cat(mus), torch.cat(vars_)

    def glm_predictive_distribution(
        self, x: Any, joint: bool = False, diagonal_output: bool = False
    ) -> tuple[Tensor, Tensor]:
        """(f_μ, f_var) of the linearised network.

        f_var is (B, C, C); (B, C) with `diagonal_output`; with `joint`, f_μ is flattened to
        (B·C,) and f_var is the covariance across the whole batch (B·C, B·C). `joint` ignores
        `diagonal_output`, as laplace-torch does (its test: "Joint predictive ignores
        diagonal_output"); the (B·C, B·C) shape says which one was returned.
        """
        if joint:
            return self.joint_functional_covariance(x)
        if diagonal_output:
            f_mu, var, _ = glm_moments(self, x)
            return f_mu, var
        return self.functional_variance_at(x)

    def joint_functional_covariance(self, x: Any) -> tuple[Tensor, Tensor]:
        """f_μ flattened (B·C,) and the joint covariance J Σ Jᵀ over all outputs of the batch.

        Entry ((b, c), (b', d)) is J_bc Σ J_b'dᵀ; its (C, C) diagonal blocks are the marginal
        `functional_variance`. It is computed by each structure's own functional variance,
        treating the batch as one input with B·C outputs (`predictive.factors_as_one_sample`),
        so kron and diag never form Σ. Meant for small batches (the output is (B·C)²); a batch
        whose intermediates exceed `max_memory // 2` is refused with a MemoryBudgetError.
        """
        self.require_fit()
        if self._backprop_off():
            with keep_graph():
                return self.joint_functional_covariance(x)
        x = self.as_inputs(x)
        prior, scale = self.prior_precision, self.curvature_scale()
        n = batch_size(x)
        if n == 0:
            f_mu, f_var = self._empty_prediction()
            return f_mu.reshape(0), f_var.reshape(0, 0)
        return joint_covariance(
            x,
            self.subset,
            self.posterior,
            prior,
            scale,
            self._dtype,
            dense=self.posterior.needs_dense_jacobian or self.dense_for_backprop(),
            chunk_rows=self.jacobian_chunk_rows,
            n_outputs=self.n_outputs or 1,
            n_params=self.n_params,
            max_memory=self.max_memory,
        )

    def __call__(
        self,
        x: Any,
        pred_type: PredType | str = "glm",
        link_approx: LinkApprox | str = "probit",
        n_samples: int = 100,
        joint: bool = False,
        diagonal_output: bool = False,
        generator: torch.Generator | RowSeeds | None = None,
        fitting: bool = False,
        **model_kwargs: Any,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Predictive distribution at inputs `x`.

        classification / binary: probabilities (B, C). `pred_type="glm"` pushes the Gaussian
        over outputs N(f_μ, J Σ Jᵀ) through the link with `link_approx` ("probit", "bridge",
        "bridge_norm" or "mc" with `n_samples` draws); `pred_type="nn"` averages the link over
        `n_samples` networks with sampled weights (link_approx must be "mc").
        `diagonal_output` drops the output correlations before the link.

        regression: `(f_mu, f_var)` with f_var the *epistemic* covariance (B, C, C) — without
        observation noise, as in laplace-torch; (B, C) with `diagonal_output`; (B·C, B·C) across
        the batch with `joint`. For "nn" f_var is the unbiased sample variance of the sampled
        networks' outputs, (B, C) as laplace-torch (whatever `diagonal_output`).
        `regression_predictive` gives both variances with and without noise.

        Every random draw uses `generator` (same seed, same output); `predictive.RowSeeds` in
        its place make each row's draws independent of its batch. Combinations that make no
        sense raise a BadInputError (see `predictive.check_pred_options`).

        reward_modeling (laplace-torch's): the regression form above, or the classification
        form with `fitting=True`. `model_kwargs` go to every model call of this prediction
        (laplace-torch passes them to the "nn" predictive only): flags and other values that
        hold for the whole batch; per-example tensors belong in a dict batch `x`, and tensor
        values are refused for "glm" (its per-example Jacobians would see the whole batch).
        """
        self.require_fit()
        likelihood = self.likelihood
        if getattr(self, "reward_modeling", False) and not fitting:
            likelihood = Likelihood.REGRESSION
        pt, la = check_pred_options(
            pred_type, link_approx, likelihood, n_samples=n_samples, joint=joint
        )
        check_generator(generator, self._device)
        if model_kwargs and pt == PredType.GLM:
            check_glm_model_kwargs(model_kwargs)
        with prediction_context(model_kwargs, getattr(self, "enable_backprop", False)):
            return predict_batch(
                self, x, pt, la, likelihood, n_samples, joint, diagonal_output, generator
            )

    def functional_variance_diag(self, x: Any) -> tuple[Tensor, Tensor]:
        """GLM mean (B, C) and the diagonal of J Σ Jᵀ (B, C).

        A last-layer diag / kron posterior (`variance_from_features`) computes it from the
        head's features, (Rφ)² Mᵀ + v with M and v kept per prior and scale
        (`posterior.feature_variance`); anything else takes the posterior's
        `functional_variance_diag` row chunk by row chunk (K-FAC: B·C·d per layer, no (C, C)
        products)."""
        if not self.variance_from_features():
            return self._variance_rows(x, diagonal=True)
        f_mu, var, _ = self.feature_moments(x)
        return f_mu, var

    def predictive(
        self,
        x: Any,
        pred_type: PredType | str = "glm",
        link_approx: LinkApprox | str = "probit",
        n_samples: int = 100,
        **model_kwargs: Any,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """laplace-torch's alias of `la(x, pred_type, link_approx, n_samples, **model_kwargs)`."""
        return self(
            x, pred_type=pred_type, link_approx=link_approx, n_samples=n_samples, **model_kwargs
        )

    def functional_samples(
        self,
        x: Any,
        pred_type: PredType | str = "glm",
        n_samples: int = 100,
        generator: torch.Generator | RowSeeds | None = None,
        diagonal_output: bool = False,
    ) -> Tensor:
        """Samples of the outputs before the link, (n_samples, B, C).

        glm: f ~ N(f_μ, J Σ Jᵀ) (independent outputs with `diagonal_output`), by the cheapest
        route of `batch_predictive.glm_moments` (a last-layer posterior without a (C, C)
        covariance per row). nn: f(x; θ_s) with θ_s ~ N(θ*, Σ). For a last-layer subset the
        head is linear in its weights, so the features are computed once and all sampled heads
        are applied in one contraction.
        """
        self.require_fit()
        if self._backprop_off():
            with keep_graph():
                return self.functional_samples(x, pred_type, n_samples, generator, diagonal_output)
        pt = PredType.parse(pred_type, "pred_type")
        n_samples = check_n_samples(n_samples, "functional_samples")
        check_generator(generator, self._device)
        if pt == PredType.GLM:
            _, _, f = glm_moments(
                self, x, n_samples=n_samples, generator=generator, independent=diagonal_output
            )
            return f
        x = self.as_inputs(x)
        thetas = self._sample_subset(n_samples, generator)  # (S, P) in the subset's coordinates
        mdt = getattr(self, "_model_dtype", self._dtype)
        return sampled_outputs(self.subset, x, thetas, self._dtype, mdt)

    def predictive_samples(
        self,
        x: Any,
        pred_type: PredType | str = "glm",
        n_samples: int = 100,
        generator: torch.Generator | RowSeeds | None = None,
        diagonal_output: bool = False,
    ) -> Tensor:
        """Samples of the predictive after the link: probabilities or outputs, (n_samples, B, C)."""
        samples = self.functional_samples(x, pred_type, n_samples, generator, diagonal_output)
        if getattr(self, "output_positions", None) is not None:  # (n, B, C, *S)
            return dense_outputs.link_per_position(self, samples)
        return link(self.likelihood, samples)

    def regression_predictive(
        self,
        x: Any,
        pred_type: PredType | str = "glm",
        n_samples: int = 100,
        generator: torch.Generator | RowSeeds | None = None,
    ) -> RegressionPrediction:
        """Regression predictive y | x ~ N(mean, epistemic_var + aleatoric_var), all (B, C).

        glm: mean f(x; θ*), epistemic_var = diag J Σ Jᵀ; nn: mean and unbiased variance of
        `n_samples` sampled networks' outputs. aleatoric_var = σ² (`sigma_noise`), total_var the
        sum: the variance of a new observation, while epistemic_var is that of f(x).
        """
        return regression_predictive(self, x, pred_type, n_samples, generator)

    def uncertainty(
        self,
        x: Any,
        pred_type: PredType | str = "glm",
        link_approx: LinkApprox | str = "probit",
        n_samples: int = 100,
        generator: torch.Generator | RowSeeds | None = None,
        level: float = 0.95,
    ) -> dict[str, Tensor]:
        """Predictions and uncertainty scores for one batch, as used by `laplace predict`.

        classification / binary, each (B,) or (B, C):
            probs, pred (argmax; binary: p > 0.5 per label), entropy, max_prob
            (`laplace_cli.core.scores`), var (glm: the functional variance of each logit, diag J Σ Jᵀ;
            nn: the sample variance of the logits) and, when `n_samples > 0`, mutual_info (BALD)
            from `n_samples` samples of the probabilities (GLM samples of the logits, or sampled
            networks). With link_approx "mc" the probabilities are the mean of those samples.
        regression, each (B, C):
            mean, var (epistemic), var_aleatoric (σ²), var_total, lower and upper (the central
            `level` interval of N(mean, var_total)).
        """
        return batch_uncertainty(self, x, pred_type, link_approx, n_samples, generator, level)
