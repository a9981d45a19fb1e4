"""The memory guard: estimate before allocating, refuse with an actionable message."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from laplace_cli import Laplace
from laplace_cli.core.enums import Structure
from laplace_cli.core.errors import MemoryBudgetError
from laplace_cli.posterior.memory import check_structure_memory, jacobian_rows, structure_bytes
from laplace_cli.subsets.base import AllWeights
from tests.conftest import tiny_cnn

FULL_MESSAGE = (
    r"^full needs [0-9.]+ TiB for 1\.0M parameters; "
    r"use kron, diag or subset_of_weights=last_layer \(budget .*; or raise max_memory\)$"
)


def big_model() -> nn.Module:
    return nn.Linear(1000, 1000)  # 1,001,000 parameters


@pytest.mark.parametrize("max_memory", [None, 16 * 1024**3])
def test_full_fit_of_a_million_parameters_is_refused_instantly(max_memory):
    model = big_model()
    start = time.perf_counter()
    with pytest.raises(MemoryBudgetError, match=FULL_MESSAGE) as info:
        Laplace(model, "classification", "all", "full", max_memory=max_memory)
    assert time.perf_counter() - start < 1.0
    # float32: 1,001,000² × 4 bytes = 3.6 TiB.
    assert "3.6 TiB" in str(info.value)
    assert info.value.exit_code == 2  # bad usage, not a crash


def test_kron_and_diag_of_the_same_model_fit_the_budget():
    model = big_model()
    groups = AllWeights(model).groups
    # kron: Σ (d_out² + d_in²) for weights, d_out² for biases.
    assert structure_bytes(Structure.KRON, groups, 4) == (1000**2 + 1000**2 + 1000**2) * 4
    assert structure_bytes(Structure.DIAG, groups, 4) == 1_001_000 * 4
    la = Laplace(model, "classification", "all", "kron", max_memory=1024**3)
    assert la.n_params == 1_001_000


def test_each_structure_names_its_alternatives():
    groups = AllWeights(tiny_cnn()).groups
    cases = {
        Structure.KRON: "use diag or subset_of_weights=last_layer",
        Structure.LOWRANK: "use a smaller rank, diag or subset_of_weights=last_layer",
        Structure.DIAG: "use subset_of_weights=last_layer",
    }
    for structure, advice in cases.items():
        with pytest.raises(MemoryBudgetError, match=f"; {advice} \\(budget 16 B;"):
            check_structure_memory(structure, groups, 8, budget=16, rank=5)


def test_lowrank_estimate_counts_the_krylov_basis():
    groups = AllWeights(nn.Linear(100, 10)).groups  # P = 1010
    need = structure_bytes(Structure.LOWRANK, groups, 8, rank=20)
    # basis (20 + 10)·5 = 150 columns, twice (basis and its image), plus U (20) and 2 vectors.
    assert need == 1010 * (2 * 150 + 20 + 2) * 8


def test_dense_jacobian_chunk_guard():
    # B·C·P: rows are chosen so one chunk fits a quarter of the budget.
    assert jacobian_rows(10, 1000, 8, budget=4 * 4 * 10 * 1000 * 8 * 7) == 7
    with pytest.raises(MemoryBudgetError, match="one row of the dense Jacobian needs"):
        jacobian_rows(10, 1_000_000, 8, budget=1024**2)


def test_subnetwork_full_is_sized_by_its_indices(float64):
    model = big_model()
    la = Laplace(
        model,
        "regression",
        "subnetwork",
        "full",
        subnetwork_indices=torch.arange(0, 2000, 2),
        max_memory=1024**3,
    )
    assert la.n_params == 1000
