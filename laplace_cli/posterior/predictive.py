"""Predictive distributions as pure functions of the GLM mean and covariance or of samples.

The GLM predictive linearises the network around the MAP: f(x; θ) ≈ f(x; θ*) + J(x)(θ − θ*),
so under θ ~ N(θ*, Σ) the outputs are Gaussian, f ~ N(f_μ, J Σ Jᵀ). These functions validate
prediction options, map that Gaussian to class probabilities (link approximations: probit,
Laplace bridge, Monte Carlo) and draw from it, with seeded per-row random streams (`RowSeeds`).
The helpers `Laplace` uses to bound the memory of the functional variance (row chunking, the
joint covariance of a batch) are in `posterior/variance_memory.py`, re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from laplace_cli.core.enums import Likelihood, LinkApprox, PredType
from laplace_cli.core.errors import BadInputError
from laplace_cli.core.scores import mutual_information as mutual_information
from laplace_cli.core.scores import predictive_entropy

# The memory bounds of the functional variance moved to posterior/variance_memory.py; the
# names stay importable from here.
from laplace_cli.posterior.variance_memory import (
    CHUNK_ACTIVATION_MULTIPLE as CHUNK_ACTIVATION_MULTIPLE,
)
from laplace_cli.posterior.variance_memory import CHUNK_FLOOR_BYTES as CHUNK_FLOOR_BYTES
from laplace_cli.posterior.variance_memory import factor_bytes as factor_bytes
from laplace_cli.posterior.variance_memory import factor_chunk_rows as factor_chunk_rows
from laplace_cli.posterior.variance_memory import factors_as_one_sample as factors_as_one_sample
from laplace_cli.posterior.variance_memory import joint_factor_bytes as joint_factor_bytes
from laplace_cli.posterior.variance_memory import layer_input_bytes as layer_input_bytes


def check_n_samples(n_samples: int, what: str, minimum: int = 1) -> int:
    """`n_samples` as an int ≥ `minimum`, or a BadInputError naming what needs the samples."""
    if isinstance(n_samples, bool) or int(n_samples) != n_samples or n_samples < minimum:
        raise BadInputError(f"{what} needs n_samples ≥ {minimum}, got {n_samples!r}")
    return int(n_samples)


_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """One step of SplitMix64: a well-mixed 64-bit value from any 64-bit input."""
    z = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def derive_seed(*values: int) -> int:
    """A 64-bit seed from a tuple of integers (e.g. the run's seed and a row index)."""
    h = 0
    for v in values:
        h = _splitmix64(h ^ (v & _MASK64))
    return h


_SHARED_STREAM = -1  # the "block index" of the stream shared by every row (weight samples)
_UNIFORM_STREAM = -2  # tags the per-row uniform streams (APS conformal sets), apart from normals
ROW_BLOCK = 16
"""Rows per block of `RowSeeds`: one seeding per block, not per row, keeps the per-row streams
cheap (seeding a generator costs about as much as drawing a row's samples)."""


@dataclass(frozen=True)
class RowSeeds:
    """Per-row random streams, so that a row's Monte Carlo draws do not depend on its batch.

    Pass one in place of a `torch.Generator` (`Laplace.uncertainty`, `__call__`,
    `functional_samples`) for a batch whose first row is row `start` of the whole input. Rows
    are grouped in fixed blocks of `ROW_BLOCK` by their global index; the Gaussian output draws
    of block k are drawn whole from a generator seeded by `derive_seed(seed, k)`, and row r
    takes its slot (r mod `ROW_BLOCK`) of block r // `ROW_BLOCK`. So the same row gets the same
    samples whatever the batch size, the batch it falls in, or the number of processes (a batch
    draws the blocks it overlaps). Weight samples (`pred_type="nn"`) are shared by all rows, as
    they must be to be networks: they come from one stream seeded by `seed` alone, the same for
    every batch. Draws are made on the CPU (the same numbers on every device) and moved.

    Attributes:
        seed: The run's seed (`--seed`).
        start: Global index of the batch's first row.
    """

    seed: int
    start: int = 0

    def shared_generator(self, device: torch.device | str = "cpu") -> torch.Generator:
        """A fresh generator for draws shared by every row (weight samples), on `device`."""
        return torch.Generator(device=device).manual_seed(derive_seed(self.seed, _SHARED_STREAM))

    def normal(self, n_rows: int, shape: Sequence[int], dtype: torch.dtype) -> Tensor:
        """Standard normal draws, (n_rows, *shape) on the CPU, for rows start .. start+n_rows-1."""
        if n_rows <= 0:
            return torch.empty((0, *shape), dtype=dtype)
        first = self.start // ROW_BLOCK
        last = (self.start + n_rows - 1) // ROW_BLOCK
        g = torch.Generator()
        blocks = []
        for k in range(first, last + 1):
            g.manual_seed(derive_seed(self.seed, k))
            blocks.append(torch.randn((ROW_BLOCK, *shape), generator=g, dtype=dtype))
        offset = self.start - first * ROW_BLOCK
        return torch.cat(blocks)[offset : offset + n_rows]

    def uniform(self, n_rows: int) -> Tensor:
        """One U(0, 1) draw per row (float64, CPU) for rows start .. start+n_rows-1, from
        streams apart from `normal`'s (the randomised APS sets of `predict --conformal`)."""
        if n_rows <= 0:
            return torch.empty(0, dtype=torch.float64)
        first = self.start // ROW_BLOCK
        last = (self.start + n_rows - 1) // ROW_BLOCK
        g = torch.Generator()
        blocks = []
        for k in range(first, last + 1):
            g.manual_seed(derive_seed(self.seed, _UNIFORM_STREAM, k))
            blocks.append(torch.rand(ROW_BLOCK, generator=g, dtype=torch.float64))
        offset = self.start - first * ROW_BLOCK
        return torch.cat(blocks)[offset : offset + n_rows]


def weight_generator(
    generator: torch.Generator | RowSeeds | None, device: torch.device | str
) -> torch.Generator | None:
    """The generator for weight samples: `RowSeeds` give their shared stream."""
    if isinstance(generator, RowSeeds):
        return generator.shared_generator(device)
    return generator


def check_generator(generator: torch.Generator | RowSeeds | None, device: torch.device) -> None:
    """A generator must be a `torch.Generator` on the device the draws are made on (or
    `RowSeeds`, which draw on the CPU and move the draws)."""
    if generator is None or isinstance(generator, RowSeeds):
        return
    if not isinstance(generator, torch.Generator):
        raise BadInputError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if generator.device.type != device.type:
        raise BadInputError(
            f"generator is on {generator.device}, the Laplace approximation on {device}; "
            f"use torch.Generator(device={str(device)!r})"
        )


def check_pred_options(
    pred_type: PredType | str,
    link_approx: LinkApprox | str,
    likelihood: Likelihood | str | None = None,
    *,
    n_samples: int | None = None,
    joint: bool = False,
) -> tuple[PredType, LinkApprox]:
    """Validate prediction options together; nonsense combinations raise a BadInputError.

    The reference implementation quietly runs something else for some of these (it returns the
    marginal predictive for `joint=True` in classification and ignores `diagonal_output` for
    probit and bridge); here each one is refused with the alternative that works:

    * `pred_type="nn"` samples weights and averages the link, so `link_approx` must be "mc"
      (classification and binary; regression has no link and ignores `link_approx`);
    * the Laplace bridge maps a Gaussian over softmax logits to a Dirichlet: softmax
      classification only;
    * `joint=True` (the covariance across a batch) is a GLM regression output;
    * Monte Carlo (`link_approx="mc"` or `pred_type="nn"`) needs `n_samples ≥ 1`.
    """
    pt = PredType.parse(pred_type, "pred_type")
    la = LinkApprox.parse(link_approx, "link_approx")
    lik = None if likelihood is None else Likelihood.parse(likelihood, "likelihood")
    if lik != Likelihood.REGRESSION:
        if pt == PredType.NN and la != LinkApprox.MC:
            raise BadInputError(
                f"pred_type 'nn' samples weights and averages the link, so link_approx must be "
                f"'mc', got {la.value!r}; use pred_type 'glm' for {la.value!r}"
            )
        if lik == Likelihood.BINARY and la in (LinkApprox.BRIDGE, LinkApprox.BRIDGE_NORM):
            raise BadInputError(
                f"link_approx {la.value!r} is for softmax classification; the binary likelihood "
                "takes 'probit' or 'mc'"
            )
    if joint and (lik is not None and lik != Likelihood.REGRESSION):
        raise BadInputError(
            "joint=True gives the joint Gaussian over a batch's outputs, for regression only; "
            "classification returns per-input probabilities"
        )
    if joint and pt == PredType.NN:
        raise BadInputError("joint=True needs pred_type 'glm' (the linearised network)")
    if n_samples is not None and (
        pt == PredType.NN or (la == LinkApprox.MC and lik != Likelihood.REGRESSION)
    ):
        check_n_samples(n_samples, f"pred_type {pt.value!r} with link_approx {la.value!r}")
    return pt, la


def probit_scale(f_var_diag: Tensor) -> Tensor:
    """κ = 1 / √(1 + π/8 · σ²), the probit approximation's scaling of the mean logits."""
    return torch.rsqrt(f_var_diag * (math.pi / 8.0) + 1.0)


def probit_softmax(f_mu: Tensor, f_var: Tensor) -> Tensor:
    """softmax(μ / √(1 + π/8 · diag Σ)) (MacKay 1992; multiclass extension as in laplace-torch)."""
    return torch.softmax(f_mu * probit_scale(torch.diagonal(f_var, dim1=-2, dim2=-1)), dim=-1)


def probit_sigmoid(f_mu: Tensor, f_var_diag: Tensor) -> Tensor:
    """σ(μ / √(1 + π/8 · σ²)) per output (binary / multi-label)."""
    return torch.sigmoid(f_mu * probit_scale(f_var_diag))


def laplace_bridge(f_mu: Tensor, f_var: Tensor, normalize: bool = False) -> Tensor:
    """Laplace bridge to a Dirichlet and its mean (Hobbhahn et al. 2022), as in laplace-torch.

    The Gaussian is first projected to zero-sum logits (the softmax is invariant to shifts);
    α_k = (1 − 2/K + e^{μ_k} Σ_j e^{−μ_j} / K²) / σ²_k and the probabilities are α / Σα.
    `normalize` ("bridge_norm") rescales means and variances by the mean variance first.
    """
    f_mu = f_mu.clone()
    f_var = f_var.clone()
    total = f_var.sum(dim=(1, 2)).reshape(-1, 1)
    f_mu = f_mu - f_var.sum(-1) * f_mu.sum(-1).reshape(-1, 1) / total
    f_var = f_var - torch.einsum("bi,bj->bij", f_var.sum(-1), f_var.sum(-2)) / total.reshape(
        -1, 1, 1
    )
    n_classes = f_mu.shape[-1]
    var_diag = torch.diagonal(f_var, dim1=1, dim2=2)
    if normalize:
        mean_var = var_diag.mean(dim=1) / math.sqrt(n_classes / 2)
        f_mu = f_mu / mean_var.sqrt().unsqueeze(-1)
        var_diag = var_diag / mean_var.unsqueeze(-1)
    sum_exp = torch.exp(-f_mu).sum(dim=1, keepdim=True)
    alpha = (1 - 2 / n_classes + f_mu.exp() / n_classes**2 * sum_exp) / var_diag
    return torch.nan_to_num(alpha / alpha.sum(dim=1, keepdim=True), nan=1.0)


def standard_normals(
    n_samples: int,
    n_rows: int,
    width: int,
    like: Tensor,
    generator: torch.Generator | RowSeeds | None = None,
) -> Tensor:
    """(n_samples, n_rows, width) standard normals in `like`'s dtype and device; with
    `RowSeeds` each row's come from its own stream (batch-invariant)."""
    if isinstance(generator, RowSeeds):
        eps = generator.normal(n_rows, (n_samples, width), like.dtype)
        return eps.to(like.device).movedim(0, 1)
    return torch.randn(
        (n_samples, n_rows, width), dtype=like.dtype, device=like.device, generator=generator
    )


def sample_gaussian_outputs(
    f_mu: Tensor,
    f_var: Tensor,
    n_samples: int,
    generator: torch.Generator | RowSeeds | None = None,
) -> Tensor:
    """Draws from N(f_μ, f_var) per sample: (n_samples, B, C). f_var is (B, C, C) or (B, C).

    With `RowSeeds` each row's draws come from its own stream (batch-invariant)."""
    from laplace_cli.posterior.full import robust_cholesky

    eps = standard_normals(n_samples, f_mu.shape[0], f_mu.shape[1], f_mu, generator)
    if f_var.ndim == f_mu.ndim:
        return f_mu + eps * f_var.clamp_min(0).sqrt()
    if isinstance(generator, RowSeeds):
        L, info = torch.linalg.cholesky_ex(f_var)
        if bool(info.any()):
            # The jitter of a failed factor is scaled by the batch's diagonal: per row here,
            # so that a row's draws do not depend on its batch-mates.
            L = torch.stack([robust_cholesky(m, what="functional covariance") for m in f_var])
    else:
        L = robust_cholesky(f_var, what="functional covariance")
    return f_mu + torch.einsum("bcd,sbd->sbc", L, eps)


def link(likelihood: Likelihood, f: Tensor) -> Tensor:
    """Inverse link on logits/outputs: softmax, identity or sigmoid."""
    if likelihood == Likelihood.CLASSIFICATION:
        return torch.softmax(f, dim=-1)
    if likelihood == Likelihood.BINARY:
        return torch.sigmoid(f)
    return f


def glm_link(
    likelihood: Likelihood,
    link_approx: LinkApprox,
    f_mu: Tensor,
    f_var: Tensor,
    n_samples: int = 100,
    generator: torch.Generator | RowSeeds | None = None,
) -> Tensor:
    """Probabilities E[link(f)] under f ~ N(f_μ, f_var), with the chosen link approximation.

    f_var is (B, C, C), or (B, C) for independent outputs (`diagonal_output`). probit and the
    binary likelihood only use the diagonal; the bridge uses the full matrix (a diagonal one is
    embedded); MC draws `n_samples` Gaussian samples with `generator` and averages the link.
    """
    var_diag = torch.diagonal(f_var, dim1=-2, dim2=-1) if f_var.ndim == 3 else f_var
    if likelihood == Likelihood.CLASSIFICATION:
        if link_approx == LinkApprox.PROBIT:
            return torch.softmax(f_mu * probit_scale(var_diag), dim=-1)
        if link_approx in (LinkApprox.BRIDGE, LinkApprox.BRIDGE_NORM):
            cov = f_var if f_var.ndim == 3 else torch.diag_embed(f_var)
            return laplace_bridge(f_mu, cov, normalize=link_approx == LinkApprox.BRIDGE_NORM)
        return torch.softmax(sample_gaussian_outputs(f_mu, f_var, n_samples, generator), -1).mean(0)
    if likelihood == Likelihood.BINARY:
        # Independent sigmoids: E[σ(f_k)] depends on the marginal of f_k only.
        if link_approx == LinkApprox.PROBIT:
            return probit_sigmoid(f_mu, var_diag)
        if link_approx == LinkApprox.MC:
            return torch.sigmoid(
                sample_gaussian_outputs(f_mu, var_diag, n_samples, generator)
            ).mean(0)
        raise BadInputError("link_approx 'bridge' is for softmax classification; use probit or mc")
    raise BadInputError("link approximations apply to classification and binary likelihoods")


def input_signature(x: Tensor | Mapping[str, Tensor]) -> tuple:
    """Shapes without the batch axis and dtypes of a batch of inputs (a cache key)."""
    if isinstance(x, Mapping):
        return tuple(sorted((k, tuple(v.shape[1:]), v.dtype) for k, v in x.items()))
    return (tuple(x.shape[1:]), x.dtype)


def entropy(probs: Tensor) -> Tensor:
    """Predictive entropy −Σ p log p per row (B,); see `laplace_cli.core.scores`."""
    return predictive_entropy(probs)


@dataclass
class RegressionPrediction:
    """Gaussian predictive of a regression model, per input and output, all (B, C).

    y | x ~ N(mean, total_var) with total_var = epistemic_var + aleatoric_var: the epistemic
    part is the weight uncertainty (GLM: diag J Σ Jᵀ; nn: the variance of sampled networks'
    outputs), the aleatoric part the observation noise σ².
    """

    mean: Tensor
    epistemic_var: Tensor
    aleatoric_var: Tensor
    total_var: Tensor
