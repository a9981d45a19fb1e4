"""laplace-torch's `state_dict` / `load_state_dict` for the function-space Laplace GP:
`FunctionalGPStateMixin` saves and restores everything `FunctionalGP` needs for prediction and
the marginal likelihood (context inputs, kernel system, hyperparameters).

The mixin expects the attributes and helpers `FunctionalGP` sets up (`system`, `subset`,
`likelihood`, `_dtype`, `_device`, `_check_fitted()`, `_chunk_rows()`, ...). The mapping of this
state onto the posterior file format is functional_state.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from laplace_cli.core.batches import to_device
from laplace_cli.laplace.functional_options import check_gp_state
from laplace_cli.posterior import gp

__all__ = ["FunctionalGPStateMixin"]


class FunctionalGPStateMixin:
    """State dict methods of `FunctionalGP` (listed first in its bases)."""

    # --- state (laplace-torch's state_dict / load_state_dict) ------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything prediction and the marginal likelihood need, including the context inputs.

        Privacy: the state holds M training inputs (`context_inputs`); shipping it ships them.
        """
        self._check_fitted()
        assert self.system is not None
        return {
            "cls_name": type(self).__name__,
            "likelihood": self.likelihood.value,
            "mean": self.mean,
            "num_data": self.n_subset,
            "diagonal_kernel": self.independent_outputs,
            "output_hessian": self.output_hessian,
            "context": self.context,
            "seed": self.seed,
            "context_inputs": self.context_inputs,
            "K": self.system.K,
            "S": self.system.S,
            "mu": self.system.mu,
            "loss": self.loss,
            "prior_mean": self.prior_mean,
            "prior_precision": self.prior_precision,
            "sigma_noise": self.sigma_noise,
            "temperature": self.temperature,
            "n_data": self.n_data,
            "n_outputs": self.n_outputs,
            "param_names": list(self.subset.names),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a `state_dict()` on the same model (names, MAP and settings checked)."""
        check_gp_state(
            state,
            type(self).__name__,
            self.likelihood,
            self.subset.names,
            self.mean,
            self._dtype,
            self._device,
        )

        def t(v: Any) -> Tensor:
            return torch.as_tensor(v, device=self._device).to(self._dtype)

        self.n_subset = state["num_data"]
        self.independent_outputs = bool(state["diagonal_kernel"])
        self.output_hessian = state["output_hessian"]
        self.context, self.seed = state["context"], int(state["seed"])
        x = state["context_inputs"]
        self.context_inputs = to_device(x, self._device, self._dtype)
        self.system = gp.KernelSystem(
            t(state["K"]), t(state["S"]), t(state["mu"]), self.independent_outputs
        )
        self.loss = t(state["loss"])
        self.n_data, self.n_outputs = int(state["n_data"]), int(state["n_outputs"])
        self.temperature = float(state["temperature"])
        self.prior_precision = t(state["prior_precision"])
        self.sigma_noise = t(state["sigma_noise"])
        self.prior_mean = t(state["prior_mean"])
        self._chunk = self._chunk_rows(self.n_outputs)
        self._chol = None
        self.prior_factor_sod, self._K_MM = self.system.n_context / self.n_data, None
        self._fitted = True
