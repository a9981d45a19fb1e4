"""Fitting half of `Laplace`: the curvature summed over the data, then decomposed.

`fit` runs over the batches: targets are put in the likelihood's layout and checked against the
model's outputs (laplace/targets.py), each batch's loss is recorded, and its curvature added by
the cheapest route that applies (ASDL, the exact Hessian, root back-propagation over all
weights, the closed-form last-layer softmax, or the output-space root W with the layer factors
or dense Jacobians); after every batch the sums are checked for NaN/Inf
(laplace/fit_checks.py). The lowrank structure runs matrix-free over the data several times.
`partial_state` / `load_partial_state` are the hooks of sharded and resumable fits.

A mixin of `Laplace` (as `PosteriorMixin` and `PredictiveMixin` are): it reads the state that
`Laplace.__init__` sets (subset, posterior, likelihood, curvature, dtypes, budget) and uses the
predictive half's public `jacobian_pieces` / `dense_for_backprop` only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import torch
from torch import Tensor

from laplace_cli.core import likelihoods as lik
from laplace_cli.core.allocator import retain_freed_memory
from laplace_cli.core.batches import Inputs, batch_size, split_batch, to_device
from laplace_cli.core.enums import Curvature, Likelihood
from laplace_cli.core.errors import BadInputError, NumericalError
from laplace_cli.laplace import dense_outputs as dense
from laplace_cli.laplace.fit_checks import check_fit_finite, curvature_sums
from laplace_cli.laplace.targets import check_targets, target_layout
from laplace_cli.posterior import softmax_last_layer
from laplace_cli.subsets.base import AllWeights, NoLayerFactorsError, iter_rows
from laplace_cli.subsets.factors import RootClosedForms
from laplace_cli.subsets.last_layer import LastLayer
from laplace_cli.subsets.precision import cast_factors

__all__ = ["FitMixin"]

_L = TypeVar("_L", bound="FitMixin")


class FitMixin:
    """Fitting methods of `Laplace`; see the module docstring."""

    def prepare_batch(self, batch: Any) -> tuple[Inputs, Tensor]:
        x, y = split_batch(batch, self.dict_key_x, self.dict_key_y)
        x = to_device(x, self._device, self._model_dtype)
        y = y.to(self._device)
        if self.output_positions is not None:
            return x, dense.prepare_targets(self.likelihood, y, self._dtype)
        return x, target_layout(self.likelihood, y, self._dtype)

    def _output_sqrt(self, f: Tensor, y: Tensor) -> Tensor:
        """W (B, C, K): Hessian square root (GGN), loss gradient (EF) or sampled gradients (MC)."""
        if self.output_positions is not None:  # block-diagonal over positions
            return dense.output_sqrt(self, f, y, self._row_output_sqrt)
        return self._row_output_sqrt(f, y)

    def _row_output_sqrt(self, f: Tensor, y: Tensor) -> Tensor:
        """`_output_sqrt` of outputs (B, C)."""
        if self.curvature == Curvature.GGN:
            return lik.hessian_sqrt(self.likelihood, f)
        if self.curvature == Curvature.EF:
            return lik.output_gradient(self.likelihood, f, y).unsqueeze(-1)
        from laplace_cli.fisher.mc_fisher import sampled_output_gradients

        return sampled_output_gradients(self.likelihood, f, self.n_mc_samples, self._fit_generator)

    def fit(
        self: _L,
        train_loader: Iterable[Any],
        override: bool = True,
        *,
        reduce: Callable[[list[Tensor]], None] | None = None,
        start_batch: int = 0,
        on_batch: Callable[[int], None] | None = None,
    ) -> _L:
        """Accumulate the curvature over the data, then decompose it.

        `override=False` adds to the curvature, loss and data count of an earlier fit (online
        fitting over several loaders gives the same posterior as one fit over their union; kron
        keeps its raw factor sums for this, and the MC Fisher's random stream continues). A
        posterior set as prior (`set_prior_from`) stays in place across `override=True` refits.

        The lowrank structure needs the data several times (one pass per block Krylov step), so
        `train_loader` must then be re-iterable (a DataLoader or a list, not an iterator).

        Hooks for fits over data shards and resumable fits (diag, kron and full; see
        `laplace_cli.pipeline.distributed` and `laplace_cli.pipeline.resume`):
            reduce: sums a list of tensors in place across processes (an all-reduce); applied
                to the raw sums (`partial_state`: curvature sums, loss, n_data) just before
                `finalize`, so each process fits its shard and all end with the posterior of
                the union.
            start_batch: batches of `train_loader` before this index are skipped (their sums
                were restored with `load_partial_state`; pass `override=False`).
            on_batch: called with the number of batches done after each batch (checkpoints).
        """
        retain_freed_memory()  # once per process: core/allocator.py
        self._start_fit(
            override,
            sharded_or_resumed=bool(reduce is not None or start_batch or on_batch is not None),
        )
        if self.structure_spec.needs_loader:
            return self._fit_matrix_free(train_loader)
        dense = self.posterior.needs_dense_jacobian
        for index, batch in enumerate(train_loader):
            if index < start_batch:
                continue
            x, y = self.prepare_batch(batch)
            if batch_size(x) == 0:
                if on_batch is not None:
                    on_batch(index + 1)
                continue
            for xc, yc in self._fit_chunks(x, y, dense):
                self._accumulate_chunk(index, xc, yc)
            self._check_finite(index)
            if on_batch is not None:
                on_batch(index + 1)
        if reduce is not None:
            self._reduce_partial_state(reduce)
        return self._finish_fit()

    def _start_fit(self, override: bool, *, sharded_or_resumed: bool) -> None:
        """Refuse shards / resumes the structure cannot do, then reset (override) the sums."""
        if sharded_or_resumed and self.structure_spec.needs_loader:
            raise BadInputError(
                f"structure {self.hessian_structure.value!r} passes over the data several "
                "times; it cannot be fitted in shards or resumed (use diag, kron or full)"
            )
        if self.curvature == Curvature.HESSIAN:
            from laplace_cli.fisher.hessian import check_hessian_fit

            # at fit, not construction: laplace-torch's KronLaplace(backend=*Hessian) builds
            check_hessian_fit(self.hessian_structure, self.n_params, self._model_dtype)
        if override:
            self.posterior.reset()
            self.loss = torch.zeros((), dtype=self._dtype, device=self._device)
            self.n_data = 0
        if override or not hasattr(self, "_fit_generator"):
            self._fit_generator = torch.Generator(device=self._device).manual_seed(self.seed)

    def _fit_chunks(self, x: Any, y: Tensor, dense: bool) -> list[tuple[Any, Tensor]]:
        """One batch as row chunks: dense Jacobians (B, C, P) are built a few rows at a time."""
        chunks = [(x, y)]
        # a diag fit that fell back to dense Jacobians (no layer factors) chunks them too
        if dense or self.__dict__.get("_no_layer_factors", False):
            rows = self.jacobian_chunk_rows()
            chunks = [(xc, y[i * rows : (i + 1) * rows]) for i, xc in enumerate(iter_rows(x, rows))]
        return chunks

    def _accumulate_chunk(self, index: int, xc: Any, yc: Tensor) -> None:
        """Record one chunk's loss and add its curvature, by the cheapest route that applies."""
        if self._backend_name == "asdl":
            from laplace_cli.fisher.asdl import asdl_accumulate

            f = asdl_accumulate(self, xc, yc).to(self._dtype)
            self._record_batch(index, f, yc)
            return
        if self.curvature == Curvature.HESSIAN:
            from laplace_cli.fisher.hessian import batch_hessian

            self._record_batch(index, self.subset.output(xc).to(self._dtype), yc)
            fn, theta = self.subset.output_fn(xc), self.subset.mean()
            _, H = batch_hessian(
                fn, theta, self.likelihood, yc, self.hessian_structure, self._dtype, self.max_memory
            )
            self.posterior.add_curvature(H)
            return
        if self._backpropagates_root():
            try:
                root = self._recording_root(index, yc)
                _, directions = self.subset.factor_directions(
                    xc, root, self.max_memory, self._root_closed_forms()
                )
            except NoLayerFactorsError:
                pass  # the general route below decides: dense Jacobians or a clear refusal
            else:
                self.posterior.accumulate_directions(
                    cast_factors(factors, self._dtype) for factors in directions
                )
                return
        f, factors, J = self.jacobian_pieces(xc)
        f = f.to(self._dtype)
        self._record_batch(index, f, yc)
        if self.softmax_closed_form():
            # Many classes: Σ Λ and Σ φφᵀ from φ and p, no (B, C, C) root.
            self._accumulate_closed_form(factors, f, yc)
            return
        W = self._output_sqrt(f, yc)
        self.posterior.accumulate(W, factors, J)

    def partial_state(self) -> dict[str, Tensor]:
        """The raw state of a fit in progress: every tensor a sum over the data seen so far.

        `posterior.<name>`: the structure's curvature sums (`Posterior.raw_state`: diag h,
        full H, kron B, Σaaᵀ and N), without a posterior folded in as prior; `loss`: the summed
        negative log-likelihood; `n_data`. Two fits over disjoint data add up entry by entry.
        """
        out = {f"posterior.{k}": v for k, v in self.posterior.raw_state().items()}
        out["loss"] = self.loss.detach()
        out["n_data"] = torch.tensor(self.n_data, dtype=torch.int64, device=self._device)
        return out

    def load_partial_state(
        self, tensors: dict[str, Tensor], generator_state: Tensor | None = None
    ) -> None:
        """Restore `partial_state` (and the MC Fisher's random stream) to continue a fit."""
        prefix = "posterior."
        self.posterior.load_raw_state(
            {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        )
        self.loss = tensors["loss"].to(dtype=self._dtype, device=self._device).clone()
        self.n_data = int(tensors["n_data"])
        self._fit_generator = torch.Generator(device=self._device).manual_seed(self.seed)
        if generator_state is not None:
            self._fit_generator.set_state(generator_state)

    def _reduce_partial_state(self, reduce: Callable[[list[Tensor]], None]) -> None:
        """Sum the raw state across processes with `reduce` (in place), then load it back."""
        state = {k: v.clone() for k, v in self.partial_state().items()}
        names = sorted(state)  # the same order on every process
        tensors = [state[k] for k in names]
        reduce(tensors)
        self.load_partial_state(dict(zip(names, tensors)), self._fit_generator.get_state())

    def _record_batch(self, index: int, f: Tensor, y: Tensor) -> None:
        """Check one batch's outputs (B, C) and targets; add its loss and size."""
        if self.output_positions is not None:
            dense.record_batch(self, index, f, y)
            return
        if self.n_outputs is None:
            if self._sigma_noise.numel() not in (1, f.shape[1]):
                raise BadInputError(
                    f"sigma_noise has {self._sigma_noise.numel()} values but the model has "
                    f"{f.shape[1]} outputs"
                )
            self.n_outputs = f.shape[1]
        elif f.shape[1] != self.n_outputs:
            raise BadInputError(
                f"batch {index}: model gave {f.shape[1]} outputs, earlier {self.n_outputs}"
            )
        check_targets(self.likelihood, f, y, index)
        if not torch.isfinite(f).all():
            raise NumericalError(f"batch {index}: the model's outputs contain NaN or Inf")
        if self.posterior.split_outputs is not None:
            # Per-output σ: the log-likelihood needs the loss of each output, (C,).
            loss = lik.summed_loss_per_output(self.likelihood, f, y)
        else:
            loss = lik.summed_loss(self.likelihood, f, y)
        self.loss = self.loss + loss.detach()
        self.n_data += f.shape[0]

    def softmax_closed_form(self) -> bool:
        """True where the last-layer softmax curvature and variances come from features and
        probabilities (`posterior.softmax_last_layer`): a last-layer diag / kron posterior of
        a classifier with at least `softmax_last_layer.MIN_OUTPUTS` classes (GGN from p; the
        MC and empirical Fisher from their output-space roots, K ≪ C columns)."""
        return (
            isinstance(self.subset, LastLayer)
            and self.likelihood == Likelihood.CLASSIFICATION
            and self.hessian_structure in softmax_last_layer.CLOSED_FORM_STRUCTURES
            and self.posterior.split_outputs is None
            and self._backend_name != "asdl"
            and (self.n_outputs or 0) >= softmax_last_layer.MIN_OUTPUTS
        )

    def _backpropagates_root(self) -> bool:
        """diag / kron over all weights with layer factors: the K columns of the curvature's
        output-space root W are back-propagated as cotangents (`AllWeights.factor_directions`)
        instead of the C outputs, and the posterior takes the projected factors as they come:
        C − 1 passes for the softmax GGN, K for the MC Fisher, one for the empirical Fisher,
        and no (B, C, T, d_out) factors contracted with W afterwards. Half-precision models
        keep the C-output route for the GGN (its root rounded to bf16 would lose digits the
        float32 contraction keeps); sampled and empirical gradients go back in the model's
        dtype either way (docs/design.md "Projected output roots")."""
        return (
            isinstance(self.subset, AllWeights)
            and self.hessian_structure in softmax_last_layer.CLOSED_FORM_STRUCTURES
            and self.posterior.split_outputs is None
            and self._backend_name != "asdl"
            and self.output_positions is None
            and not self.dense_for_backprop()
            and not self.__dict__.get("_no_layer_factors", False)
            and (
                self._model_dtype in (torch.float32, torch.float64)
                or self.curvature in (Curvature.MC_FISHER, Curvature.EF)
            )
        )

    def _recording_root(self, index: int, y: Tensor) -> Callable[[Tensor], Tensor]:
        """f ↦ W for `AllWeights.factor_directions`, recording the batch's loss and checks first
        (targets are validated before a root is formed from them)."""

        def root(f: Tensor) -> Tensor:
            f = f.to(self._dtype)
            self._record_batch(index, f, y)
            if self.curvature == Curvature.GGN:  # (dense outputs never take this route)
                return lik.hessian_root_min(self.likelihood, f)
            return self._output_sqrt(f, y)

        return root

    def _root_closed_forms(self) -> RootClosedForms | None:
        """The GGN root's closed forms for `AllWeights.factor_directions` (its Gram is the summed
        output Hessian), in the posterior's dtype; the sampled / empirical roots have few
        columns and none."""
        if self.curvature != Curvature.GGN:
            return None
        likelihood, dtype = self.likelihood, self._dtype
        return RootClosedForms(
            gram=lambda f: lik.hessian_sum(likelihood, f.to(dtype)),
            through=lambda f, M: lik.hessian_root_min_through(likelihood, f.to(dtype), M),
        )

    def _accumulate_closed_form(self, factors: Any, f: Tensor, y: Tensor) -> None:
        phi = factors[0].a[:, 0]  # (B, d): the last layer's inputs
        if self.curvature == Curvature.GGN:
            softmax_last_layer.accumulate(self.posterior, phi, p=torch.softmax(f, dim=-1))
        else:
            softmax_last_layer.accumulate(self.posterior, phi, W=self._output_sqrt(f, y))

    def _finish_fit(self: _L) -> _L:
        if self.n_data == 0:
            raise BadInputError("the training data is empty")
        self.posterior.finalize()
        self.mean = self.subset.mean().to(self._dtype)
        self.fitted = True
        return self

    def _fit_matrix_free(self: _L, train_loader: Iterable[Any]) -> _L:
        """lowrank: one pass for loss and checks, then the eigensolver's block GGN products."""
        from laplace_cli.posterior.lowrank import ggn_matmat, ggn_matmat_dense

        if iter(train_loader) is train_loader:
            raise BadInputError(
                "structure 'lowrank' passes over the data several times; give a re-iterable "
                "loader (a DataLoader or a list of batches), not an iterator"
            )
        for index, batch in enumerate(train_loader):
            x, y = self.prepare_batch(batch)
            if batch_size(x) == 0:
                continue
            self._record_batch(index, self.subset.output(x).to(self._dtype), y)
            self._check_finite(index)
        if self.n_data == 0:
            raise BadInputError("the training data is empty")

        def batches():
            # Every product must see the same operator: the MC Fisher's targets are redrawn
            # from the same seed in every pass (so the loader must keep its order).
            self._fit_generator = torch.Generator(device=self._device).manual_seed(self.seed)
            for batch in train_loader:
                x, y = self.prepare_batch(batch)
                if batch_size(x) > 0:
                    yield x, y

        theta = self.subset.mean().to(self._dtype)

        def jacobian_chunks(x: Inputs, y: Tensor) -> Iterable[tuple[Tensor, Tensor, Tensor]]:
            rows = self.jacobian_chunk_rows()
            for i, xc in enumerate(iter_rows(x, rows)):
                f, J = self.subset.jacobians(xc)
                yield f.to(self._dtype), J, y[i * rows : (i + 1) * rows]

        reverse_only = False

        def matmat(V: Tensor) -> Tensor:
            nonlocal reverse_only
            if not reverse_only:
                try:
                    return ggn_matmat(self.subset.output_fn, theta, batches, self._output_sqrt, V)
                except torch.OutOfMemoryError:
                    raise
                except (RuntimeError, NotImplementedError):
                    # forward-mode AD or vmap cannot run this model (e.g. an attention kernel
                    # without a forward derivative); the whole product is redone in reverse
                    # mode, so every product still sees the same operator.
                    reverse_only = True
            return ggn_matmat_dense(jacobian_chunks, batches, self._output_sqrt, V)

        self.posterior.fit_matrix_free(
            matmat, torch.Generator(device=self._device).manual_seed(self.seed)
        )
        for key, t in self.posterior.state().items():
            if not torch.isfinite(t).all():
                raise NumericalError(f"the curvature ({key}) is not finite")
        return self._finish_fit()

    def _check_finite(self, batch_index: int) -> None:
        """NumericalError at the batch whose loss or curvature is not finite (fit_checks.py)."""
        check_fit_finite(
            self.loss, self.posterior_state_partial(), self.posterior.groups, batch_index
        )

    def posterior_state_partial(self) -> dict[str, Tensor]:
        """Raw curvature tensors before decomposition (for finiteness checks)."""
        return curvature_sums(self.posterior)
