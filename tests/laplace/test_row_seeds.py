"""Monte Carlo scores of `predict` / `evaluate` are seeded per row: batch-invariant.

A row's samples come from streams seeded by the seed and its global row index (`RowSeeds`), so the
same row gets the same `mutual_info` (and MC probabilities, nn variances) whatever the batch
size or the batch it falls in. Checked in float64 on tiny models for every path that draws:
the GLM output samples (full and diagonal output covariance), the MC link, sampled networks
(`pred_type="nn"`) for classification and regression, and the evaluation loop.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from laplace_cli.laplace.approximation import Laplace
from laplace_cli.pipeline.evaluation import collect_outputs
from laplace_cli.pipeline.stages import PredictOptions, iter_prediction_rows
from laplace_cli.posterior.predictive import ROW_BLOCK, RowSeeds, derive_seed
from tests.conftest import tiny_data, tiny_mlp

pytestmark = pytest.mark.usefixtures("float64", "one_thread")

N_ROWS = 21  # rows 0..20 span two blocks of ROW_BLOCK = 16


def fitted(likelihood: str, subset: str = "all", structure: str = "full") -> Laplace:
    n_out = 3
    model = tiny_mlp(n_out=n_out).double()
    X, y = tiny_data(likelihood, n=24, n_out=n_out)
    la = Laplace(model, likelihood, subset, structure, prior_precision=0.5)
    la.fit(DataLoader(TensorDataset(X, y), batch_size=8))
    return la


def rows_by_batch(la: Laplace, x: torch.Tensor, batch: int, **opts) -> list[dict]:
    chunks = [
        (list(range(i, min(i + batch, len(x)))), x[i : i + batch]) for i in range(0, len(x), batch)
    ]
    options = PredictOptions(seed=7, **opts)
    return [row for rows in iter_prediction_rows(la, chunks, options) for row in rows]


def assert_same_rows(a: list[dict], b: list[dict], fields: tuple[str, ...]) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        for f in fields:
            torch.testing.assert_close(
                torch.tensor(ra[f]), torch.tensor(rb[f]), rtol=1e-12, atol=1e-14, msg=f
            )


CASES = [
    # likelihood, subset, structure, options, fields drawn by Monte Carlo
    ("classification", "all", "full", {}, ("mutual_info",)),
    ("classification", "all", "kron", {"link_approx": "mc"}, ("probs", "mutual_info")),
    ("classification", "last_layer", "diag", {"pred_type": "nn"}, ("probs", "var", "mutual_info")),
    ("classification", "all", "diag", {"pred_type": "nn"}, ("probs", "var", "mutual_info")),
    ("binary", "all", "full", {"link_approx": "mc"}, ("probs", "mutual_info")),
    ("regression", "all", "full", {"pred_type": "nn"}, ("mean", "var", "var_total")),
]


@pytest.mark.parametrize(
    "likelihood,subset,structure,opts,fields",
    CASES,
    ids=[f"{c[0]}-{c[1]}-{c[2]}-{c[3].get('pred_type', 'glm')}" for c in CASES],
)
def test_a_rows_scores_do_not_depend_on_its_batch(likelihood, subset, structure, opts, fields):
    la = fitted(likelihood, subset, structure)
    x = tiny_data(likelihood, n=N_ROWS, seed=5)[0]
    one = rows_by_batch(la, x, 1, **opts)
    for batch in (3, 7, N_ROWS):
        assert_same_rows(one, rows_by_batch(la, x, batch, **opts), fields)
    # Not constant by accident: rows differ, and another seed gives other draws.
    other = [r for rows in iter_prediction_rows(la, [(list(range(N_ROWS)), x)],
             PredictOptions(seed=8, **opts)) for r in rows]  # fmt: skip
    assert any(abs(torch.tensor(a[fields[-1]]) - torch.tensor(b[fields[-1]])).max() > 1e-9
               for a, b in zip(one, other, strict=True))  # fmt: skip


def test_a_row_keeps_its_stream_when_numbered_chunks_are_dealt_out():
    """Under torchrun a rank sees every other chunk: `(ids, x, start)` keeps the row's index."""
    la = fitted("classification")
    x = tiny_data("classification", n=N_ROWS, seed=5)[0]
    whole = rows_by_batch(la, x, N_ROWS)
    last = (list(range(14, N_ROWS)), x[14:], 14)  # only the last chunk, as one rank would
    (rows,) = iter_prediction_rows(la, [last], PredictOptions(seed=7))
    assert_same_rows(whole[14:], rows, ("mutual_info",))


def test_evaluation_scores_do_not_depend_on_the_batch_size():
    la = fitted("classification", "all", "kron")
    x, y = tiny_data("classification", n=N_ROWS, seed=5)
    options = PredictOptions(link_approx="mc", seed=3)
    probs = [
        collect_outputs(la, DataLoader(TensorDataset(x, y), batch_size=b), options).probs
        for b in (1, 3, 7)
    ]
    torch.testing.assert_close(probs[0], probs[1], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(probs[0], probs[2], rtol=1e-12, atol=1e-14)


def test_row_seeds_are_distinct_and_the_weight_stream_is_shared():
    seeds = {derive_seed(0, i) for i in range(10_000)}
    assert len(seeds) == 10_000
    assert derive_seed(1, 0) != derive_seed(0, 1)
    a = RowSeeds(5, start=0).normal(4, (2, 3), torch.float64)
    b = RowSeeds(5, start=2).normal(2, (2, 3), torch.float64)
    assert torch.equal(a[2:], b)  # rows 2, 3 wherever their batch starts
    # Across the fixed blocks of ROW_BLOCK rows, one row at a time or all at once.
    many = RowSeeds(5, start=3).normal(3 * ROW_BLOCK, (2, 3), torch.float64)
    singles = [RowSeeds(5, start=3 + i).normal(1, (2, 3), torch.float64) for i in range(len(many))]
    assert torch.equal(many, torch.cat(singles))
    assert not torch.equal(many[0], many[ROW_BLOCK])
    assert RowSeeds(5, start=3).normal(0, (2, 3), torch.float64).shape == (0, 2, 3)
    g1, g2 = RowSeeds(5, 0).shared_generator(), RowSeeds(5, 100).shared_generator()
    assert torch.equal(torch.randn(3, generator=g1), torch.randn(3, generator=g2))


def test_the_python_api_keeps_its_generator():
    """`la(x, generator=g)` draws from `g` as before (laplace-torch's behaviour)."""
    la = fitted("classification")
    x = tiny_data("classification", n=4, seed=5)[0]
    g = torch.Generator().manual_seed(0)
    p1 = la(x, link_approx="mc", n_samples=20, generator=g)
    p2 = la(x, link_approx="mc", n_samples=20, generator=g)  # the stream moved on
    assert not torch.equal(p1, p2)


def test_uniform_draws_depend_on_the_row_index_only() -> None:
    """`RowSeeds.uniform` (APS conformal sets): any split of the rows into batches gives the
    same draw per row, in [0, 1), from streams apart from the normal draws."""
    whole = RowSeeds(7, 0).uniform(3 * ROW_BLOCK + 5)
    parts = torch.cat([RowSeeds(7, lo).uniform(n) for lo, n in ((0, 3), (3, 20), (23, 30))])
    assert torch.equal(parts, whole)
    assert bool(((whole >= 0) & (whole < 1)).all()) and whole.dtype == torch.float64
    block0 = torch.rand(
        ROW_BLOCK,
        generator=torch.Generator().manual_seed(derive_seed(7, -2, 0)),
        dtype=torch.float64,
    )
    assert torch.equal(whole[:ROW_BLOCK], block0)
    normal_stream = torch.rand(
        ROW_BLOCK, generator=torch.Generator().manual_seed(derive_seed(7, 0)), dtype=torch.float64
    )
    assert not torch.equal(whole[:ROW_BLOCK], normal_stream)
    assert not torch.equal(RowSeeds(8, 0).uniform(5), whole[:5])
    assert RowSeeds(7, 4).uniform(0).shape == (0,)
