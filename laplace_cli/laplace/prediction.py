"""Predictive half of `Laplace`: GLM functional (co)variance, link approximations, samples and
uncertainty scores, computed from the posterior's structure without dense Jacobians where the
structure allows (diag and kron layer by layer; full, low-rank and subnetworks in bounded chunks).

Kept apart from `laplace.py` (construction, fitting, marginal likelihood); `Laplace` inherits it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from laplace_cli.core.batches import Inputs, batch_size, keep_graph, keeping_graph, to_device
from laplace_cli.core.batches import model_kwargs as model_kwargs_block
from laplace_cli.core.enums import (
    Likelihood,
    LinkApprox,
    PredType,
)
from laplace_cli.core.errors import BadInputError, MemoryBudgetError
from laplace_cli.core.scores import (
    max_probability,
    mutual_information,
    predictive_entropy,
    regression_variance_split,
)
from laplace_cli.laplace import dense_outputs
from laplace_cli.metrics import classification as metrics
from laplace_cli.posterior import softmax_last_layer
from laplace_cli.posterior.memory import (
    format_bytes,
)
from laplace_cli.posterior.predictive import (
    RegressionPrediction,
    RowSeeds,
    check_generator,
    check_n_samples,
    check_pred_options,
    factor_bytes,
    factor_chunk_rows,
    factors_as_one_sample,
    glm_link,
    input_signature,
    joint_factor_bytes,
    layer_input_bytes,
    link,
    sample_gaussian_outputs,
)
from laplace_cli.subsets.base import Factor, NoLayerFactorsError, iter_rows
from laplace_cli.subsets.last_layer import LastLayer
from laplace_cli.subsets.precision import cast_factors


class PredictiveMixin:
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
        return factor_chunk_rows(batch_size(x), per_row, inputs_per_row, self.max_memory // 4)

    def jacobian_pieces(self, x: Inputs) -> tuple[Tensor, list[Factor] | None, Tensor | None]:
        """(f, factors, J) of a chunk: the layer factors, or a dense Jacobian (B, C, P) for the
        structures that need one; a dense structure that `accepts_factors` gets the factors
        unless the model has none (a layer that runs twice per pass)."""
        posterior = self.posterior
        if self._dense_for_backprop():
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

    def _dense_for_backprop(self) -> bool:
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
        self.require_fit()
        if self._backprop_off():
            with keep_graph():
                return self.functional_variance_at(x)
        x = self.as_inputs(x)
        if batch_size(x) == 0:
            return self._empty_prediction()
        prior, scale = self.prior_precision, self.curvature_scale()
        dense = self.posterior.needs_dense_jacobian or self._dense_for_backprop()
        rows = self.jacobian_chunk_rows() if dense else self.factor_rows(x)
        mus, vars_ = [], []
        for xc in iter_rows(x, rows):
            f, factors, J = self.jacobian_pieces(xc)
            var = self.posterior.functional_variance(prior, scale, factors=factors, J=J)
            mus.append(f.to(self._dtype))
            vars_.append(var)
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
        f_mu, f_var = self.functional_variance_at(x)
        if diagonal_output:
            f_var = torch.diagonal(f_var, dim1=-2, dim2=-1)
        return f_mu, f_var

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
        if self.posterior.needs_dense_jacobian or self._dense_for_backprop():
            need = 4 * n * (self.n_outputs or 1) * self.n_params * self._itemsize
            self._check_joint_budget(need, n)
            pieces = [self.subset.jacobians(xc) for xc in iter_rows(x, self.jacobian_chunk_rows())]
            f = torch.cat([p[0] for p in pieces]).to(self._dtype)
            J = torch.cat([p[1] for p in pieces]).to(self._dtype)  # (B, C, P)
            cov = self.posterior.functional_variance(prior, scale, J=J.reshape(1, -1, J.shape[-1]))
        else:
            f, factors = self.subset.factors(x)
            f, factors = f.to(self._dtype), cast_factors(factors, self._dtype)
            self._check_joint_budget(joint_factor_bytes(factors), n)
            cov = self.posterior.functional_variance(
                prior, scale, factors=factors_as_one_sample(factors)
            )
        return f.reshape(-1), cov[0]

    def _check_joint_budget(self, need: int, n: int) -> None:
        if need > self.max_memory // 2:
            raise MemoryBudgetError(
                f"the joint covariance of {n} inputs needs about {format_bytes(need)} "
                f"(budget {format_bytes(self.max_memory)}); use a smaller batch or joint=False"
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
            tensors = sorted(k for k, v in model_kwargs.items() if isinstance(v, Tensor))
            if tensors:
                raise BadInputError(
                    f"model keyword argument(s) {', '.join(tensors)} are tensors: with "
                    "pred_type 'glm' they would reach each example's Jacobian whole; put "
                    "per-example tensors in a dict batch x, or use pred_type 'nn'"
                )
        with self._prediction_context(model_kwargs):
            return self._predict(
                x, pt, la, likelihood, n_samples, joint, diagonal_output, generator
            )

    def _prediction_context(self, extra_model_kwargs: dict[str, Any] | None = None) -> Any:
        """Model keyword arguments and, with `enable_backprop`, gradients kept (batches.py)."""
        import contextlib

        stack = contextlib.ExitStack()
        if extra_model_kwargs:
            stack.enter_context(model_kwargs_block(extra_model_kwargs))
        if getattr(self, "enable_backprop", False):
            stack.enter_context(keep_graph())
        return stack

    def _predict(
        self,
        x: Any,
        pt: PredType,
        la: LinkApprox,
        likelihood: Likelihood,
        n_samples: int,
        joint: bool,
        diagonal_output: bool,
        generator: torch.Generator | RowSeeds | None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        if getattr(self, "output_positions", None) is not None:  # per position, (B, C, *S)
            return dense_outputs.predict(
                self, x, pt, la, likelihood, n_samples, joint, diagonal_output, generator
            )
        if likelihood == Likelihood.REGRESSION:
            if pt == PredType.GLM:
                return self.glm_predictive_distribution(
                    x, joint=joint, diagonal_output=diagonal_output
                )
            n = check_n_samples(n_samples, "the sample variance of pred_type 'nn'", minimum=2)
            samples = self.functional_samples(x, pred_type="nn", n_samples=n, generator=generator)
            # The (B, C) unbiased sample variance, as laplace-torch returns for "nn" (it used
            # to be the (B, C, C) sample covariance; `functional_samples` gives the samples).
            return samples.mean(0), samples.var(0)
        if pt == PredType.GLM:
            if (diagonal_output or la == LinkApprox.PROBIT) and self._closed_form_variance():
                # Many classes: probit needs the diagonal only, O(C) per row, not (C, C).
                f_mu, f_var = self.functional_variance_diag(x)
                return glm_link(self.likelihood, la, f_mu, f_var, n_samples, generator)
            f_mu, f_var = self.functional_variance_at(x)
            if diagonal_output:
                f_var = torch.diagonal(f_var, dim1=-2, dim2=-1)
            return glm_link(self.likelihood, la, f_mu, f_var, n_samples, generator)
        return self.predictive_samples(
            x, pred_type="nn", n_samples=n_samples, generator=generator
        ).mean(0)

    def _closed_form_variance(self) -> bool:
        closed = getattr(self, "softmax_closed_form", None)
        return bool(closed is not None and closed())

    def functional_variance_diag(self, x: Any) -> tuple[Tensor, Tensor]:
        """GLM mean (B, C) and the diagonal of J Σ Jᵀ (B, C).

        A last-layer diag / kron softmax posterior with many classes
        (`softmax_closed_form`) computes it from the features in O(C·d) memory per row
        (`posterior.softmax_last_layer.variance_diag`); anything else takes the diagonal of
        `functional_variance_at`."""
        if not self._closed_form_variance():
            f_mu, f_var = self.functional_variance_at(x)
            return f_mu, torch.diagonal(f_var, dim1=-2, dim2=-1)
        self.require_fit()
        x = self.as_inputs(x)
        if batch_size(x) == 0:
            f_mu, f_var = self._empty_prediction()
            return f_mu, f_var[:, 0]
        prior, scale = self.prior_precision, self.curvature_scale()
        n_out = self.n_outputs or 1
        # A few (rows, C) float tensors per chunk, within a quarter of the budget.
        rows = max(1, int(self.max_memory // 4 // (8 * n_out * self._itemsize)))
        mus, vars_ = [], []
        for xc in iter_rows(x, rows):
            phi, f = self.subset.features(xc)
            phi = phi.to(self._dtype)
            mus.append(f.to(self._dtype))
            vars_.append(softmax_last_layer.variance_diag(self.posterior, phi, prior, scale))
        return torch.cat(mus), torch.cat(vars_)

    def _is_jacobians(self, arg: Any) -> bool:
        """True when `arg` is a tensor of laplace-torch's Jacobian shape (B, n_outputs,
        n_params): `functional_variance` then takes it as Jacobians, anything else as inputs."""
        if not isinstance(arg, Tensor) or arg.ndim != 3 or arg.shape[-1] != self.n_params:
            return False
        return self.n_outputs is None or arg.shape[1] == self.n_outputs

    def functional_variance(self, x_or_Js: Any) -> Tensor | tuple[Tensor, Tensor]:  # noqa: N803
        """laplace-torch's `functional_variance(Js)`: Jacobians (B, C, P) ↦ J Σ Jᵀ (B, C, C).

        Dispatch on the argument (docs/migrating.md): a tensor of shape (B, n_outputs,
        n_params) is Jacobians, as in laplace-torch; anything else (a batch of inputs, a dict
        batch) is inputs and returns this project's `(f_mu, f_var)` as
        `functional_variance_at(x)` does. Call `functional_variance_at` for inputs that could
        look like Jacobians."""
        if self._is_jacobians(x_or_Js):
            self.require_fit()
            return self.posterior.functional_variance(
                self.prior_precision, self.curvature_scale(), J=self._checked_jacobians(x_or_Js)
            )
        return self.functional_variance_at(x_or_Js)

    def _checked_jacobians(self, Js: Any) -> Tensor:  # noqa: N803 - laplace-torch's name
        """Js as a (B, C, P) tensor in the posterior's dtype and device, or BadInputError."""
        Js = torch.as_tensor(Js, device=self._device).to(self._dtype)
        if Js.ndim != 3 or Js.shape[-1] != self.n_params:
            raise BadInputError(
                f"Jacobians must have shape (batch, outputs, {self.n_params}), got "
                f"{tuple(Js.shape)}; for inputs call functional_variance_at(x)"
            )
        return Js

    def functional_covariance(self, Js: Tensor) -> Tensor:
        """laplace-torch's form: Jacobians (B, C, P) ↦ the joint covariance J Σ Jᵀ, (B·C, B·C).

        (`functional_variance_at(x)` takes inputs and returns (f_mu, (B, C, C)); see
        `joint_functional_covariance` for the joint covariance of inputs.)"""
        self.require_fit()
        Js = self._checked_jacobians(Js)
        J = Js.reshape(1, -1, Js.shape[-1])
        return self.posterior.functional_variance(
            self.prior_precision, self.curvature_scale(), J=J
        )[0]

    def functional_variance_fast(self, x: Any) -> tuple[Tensor, Tensor]:
        """(f_mu, the diagonal of the functional variance) (B, C), as laplace-torch's
        last-layer method; computed without forming Σ like `functional_variance`."""
        f_mu, f_var = self.functional_variance_at(x)
        return f_mu, torch.diagonal(f_var, dim1=-2, dim2=-1)

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

        glm: f ~ N(f_μ, J Σ Jᵀ) (independent outputs with `diagonal_output`); nn: f(x; θ_s) with
        θ_s ~ N(θ*, Σ). For a last-layer subset the head is linear in its weights, so the
        features are computed once and all sampled heads are applied in one contraction.
        """
        self.require_fit()
        if self._backprop_off():
            with keep_graph():
                return self.functional_samples(x, pred_type, n_samples, generator, diagonal_output)
        pt = PredType.parse(pred_type, "pred_type")
        n_samples = check_n_samples(n_samples, "functional_samples")
        check_generator(generator, self._device)
        if pt == PredType.GLM:
            f_mu, f_var = self.functional_variance_at(x)
            if diagonal_output:
                f_var = torch.diagonal(f_var, dim1=-2, dim2=-1)
            return sample_gaussian_outputs(f_mu, f_var, n_samples, generator)
        x = self.as_inputs(x)
        thetas = self._sample_subset(n_samples, generator)  # (S, P) in the subset's coordinates
        if isinstance(self.subset, LastLayer):
            phi, _ = self.subset.features(x)  # (B, d)
            weight = self.subset.groups[0]
            W = thetas[:, : weight.numel].reshape(n_samples, *weight.shape)  # (S, C, d)
            f = torch.einsum("bi,sci->sbc", phi.to(self._dtype), W)
            if len(self.subset.groups) > 1:
                f = f + thetas[:, weight.numel :].unsqueeze(1)  # bias (S, 1, C)
            return f
        # The sampled weights go into the model in its own dtype (bfloat16 / float16 models).
        mdt = getattr(self, "_model_dtype", self._dtype)
        return torch.stack(
            [self.subset.forward_with(x, theta.to(mdt)).to(self._dtype) for theta in thetas]
        )

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
        self.require_fit()
        if self.likelihood != Likelihood.REGRESSION:
            raise BadInputError(
                f"regression_predictive is for the regression likelihood, this is "
                f"{self.likelihood.value!r}; use la(x) or la.uncertainty(x)"
            )
        pt = PredType.parse(pred_type, "pred_type")
        if pt == PredType.GLM:
            mean, f_var = self.functional_variance_at(x)
            epistemic = torch.diagonal(f_var, dim1=-2, dim2=-1)
        else:
            n = check_n_samples(n_samples, "the sample variance of pred_type 'nn'", minimum=2)
            samples = self.functional_samples(x, pred_type="nn", n_samples=n, generator=generator)
            mean, epistemic = samples.mean(0), samples.var(0)
        epistemic, aleatoric, total = regression_variance_split(epistemic, self.sigma_noise)
        return RegressionPrediction(mean, epistemic, aleatoric, total)

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
        self.require_fit()
        if self.likelihood == Likelihood.REGRESSION:
            pred = self.regression_predictive(x, pred_type, n_samples, generator)
            lower, upper = metrics.interval(pred.mean, pred.total_var, level)
            return {
                "mean": pred.mean,
                "var": pred.epistemic_var,
                "var_aleatoric": pred.aleatoric_var,
                "var_total": pred.total_var,
                "lower": lower.to(pred.mean.dtype),
                "upper": upper.to(pred.mean.dtype),
            }
        binary = self.likelihood == Likelihood.BINARY
        pt, la = check_pred_options(pred_type, link_approx, self.likelihood, n_samples=n_samples)
        check_generator(generator, self._device)
        if n_samples != 0:
            n_samples = check_n_samples(n_samples, "mutual information (n_samples = 0 skips it)")
        prob_samples: Tensor | None = None
        if pt == PredType.GLM:
            f_mu, f_var = self.functional_variance_at(x)
            var = torch.diagonal(f_var, dim1=-2, dim2=-1)
            if n_samples > 0:
                # The same draws as la(x, link_approx="mc") with a generator in the same state.
                f = sample_gaussian_outputs(f_mu, var if binary else f_var, n_samples, generator)
                prob_samples = link(self.likelihood, f)
            if la == LinkApprox.MC:
                probs = prob_samples.mean(0)
            else:
                probs = glm_link(self.likelihood, la, f_mu, f_var)
        else:
            n = check_n_samples(n_samples, "the logit variance of pred_type 'nn'", minimum=2)
            f = self.functional_samples(x, pred_type="nn", n_samples=n, generator=generator)
            prob_samples = link(self.likelihood, f)
            probs, var = prob_samples.mean(0), f.var(0)
        out = {
            "probs": probs,
            "pred": (probs > 0.5).long() if binary else probs.argmax(-1),
            "entropy": predictive_entropy(probs, binary),
            "max_prob": max_probability(probs, binary),
            "var": var,
        }
        if prob_samples is not None:
            out["mutual_info"] = mutual_information(prob_samples, binary)
        return out
