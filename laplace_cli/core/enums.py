"""Choices declared once, shared by the Python API, the CLI options and the YAML specs."""

from __future__ import annotations

from enum import Enum


class StrEnum(str, Enum):
    """A `str` enum whose `str()` is its value (so f-strings and Typer show `kron`, not `Structure.KRON`)."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: str | StrEnum, what: str | None = None) -> StrEnum:
        """Convert a string to a member, with an error listing the allowed values."""
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).lower().replace("-", "_"))
        except ValueError:
            from laplace_cli.core.errors import BadInputError

            allowed = ", ".join(m.value for m in cls)
            raise BadInputError(
                f"{what or cls.__name__}: expected one of {allowed}, got {value!r}"
            ) from None


class Likelihood(StrEnum):
    CLASSIFICATION = "classification"
    """Softmax over the last axis, cross-entropy loss, integer labels."""
    REGRESSION = "regression"
    """Gaussian with observation noise `sigma_noise` (scalar or per output)."""
    BINARY = "binary"
    """Independent sigmoid outputs (binary or multi-label), binary cross-entropy."""


class Subset(StrEnum):
    ALL = "all"
    """Every trainable parameter."""
    LAST_LAYER = "last_layer"
    """Only the last `nn.Linear` layer; features come from a forward hook."""
    SUBNETWORK = "subnetwork"
    """Chosen indices into the flattened trainable parameters."""


class Structure(StrEnum):
    DIAG = "diag"
    """Diagonal precision."""
    KRON = "kron"
    """K-FAC: one Kronecker-factored block per Linear/Conv2d weight, bias blocks apart."""
    FULL = "full"
    """Dense precision, Cholesky-factored."""
    LOWRANK = "lowrank"
    """Top-k eigenpairs of the curvature plus the diagonal prior."""
    GP = "gp"
    """Function-space (GP) Laplace on M context points (FunctionalLaplace; not a weight-space
    posterior, so it is not in `posterior.table`)."""


class Curvature(StrEnum):
    GGN = "ggn"
    """Generalised Gauss-Newton: J^T H_loss J, exact."""
    EF = "ef"
    """Empirical Fisher: sum of per-sample loss-gradient outer products."""
    MC_FISHER = "mc_fisher"
    """Fisher with targets sampled from the model's predictive."""
    HESSIAN = "hessian"
    """Exact Hessian of the training loss (full and diag only; may be indefinite)."""


class Backend(StrEnum):
    AUTO = "auto"
    NATIVE = "native"
    ASDL = "asdl"


class PredType(StrEnum):
    GLM = "glm"
    """Linearised network: f(x; θ) ≈ f(x; θ*) + J (θ - θ*)."""
    NN = "nn"
    """Monte Carlo over sampled weights through the network itself."""


class LinkApprox(StrEnum):
    PROBIT = "probit"
    BRIDGE = "bridge"
    BRIDGE_NORM = "bridge_norm"
    MC = "mc"


class PriorStructure(StrEnum):
    SCALAR = "scalar"
    LAYERWISE = "layerwise"
    DIAG = "diag"


class TuneMethod(StrEnum):
    MARGLIK = "marglik"
    GRIDSEARCH = "gridsearch"


class KronApprox(StrEnum):
    EXPAND = "expand"
    """Weight-sharing dimension treated as extra data points."""
    REDUCE = "reduce"
    """Inputs averaged, output gradients summed over the weight-sharing dimension."""


class TuneLoss(StrEnum):
    NLL = "nll"
    """Negative log-likelihood of the predictive."""
    ECE = "ece"
    """Expected calibration error (classification)."""
    BRIER = "brier"
    """Brier score (classification)."""


class Dtype(StrEnum):
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    BFLOAT16 = "bfloat16"
    """Half precision: the model runs in it; curvature and predictions stay in float32."""
    FLOAT16 = "float16"
    """Half precision: the model runs in it; curvature and predictions stay in float32."""


class OutputFormat(StrEnum):
    CSV = "csv"
    """One header row, then one row per input; list columns are spread (`prob_0`, `prob_1`)."""
    JSONL = "jsonl"
    """One JSON object per line; per-class values as lists (`probs`, `var`)."""
    NPZ = "npz"
    """Arrays per field, one entry per input (dense outputs (B, C, *S) only)."""
