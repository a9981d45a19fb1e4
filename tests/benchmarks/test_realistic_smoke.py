"""Smoke test of benchmarks/realistic.py: `--quick` on the smallest sample model.

It checks that the script runs end to end (side by side with laplace-torch, the float64
agreement checks, the timings, a peak-memory subprocess, the JSON and the Markdown table) and
that the agreement checks passed; the times themselves are not asserted (never timed tests).
Skipped when laplace-torch is not installed (a dev-only tool, docs/compare.md).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.benchmarks.realistic_module import load_realistic

pytest.importorskip("laplace", reason="laplace-torch is not installed (docs/compare.md)")
pytest.importorskip("curvlinops", reason="laplace-torch's curvlinops backend is not installed")


def test_quick_run_writes_the_schema_and_agrees(tmp_path: Path) -> None:
    realistic = load_realistic()
    out = tmp_path / "r.json"
    args = ["--quick", "--models", "diabetes_mlp", "--repeats", "1", "--threads", "1"]
    assert realistic.main([*args, "--memory", "first", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["schema"] == realistic.SCHEMA and result["quick"] is True
    assert set(result["machine"]) >= {"description", "loadavg_before", "loadavg_after"}
    (m,) = result["models"]
    assert m["model"] == "diabetes_mlp" and m["likelihood"] == "regression"
    assert m["n_params"] == 1441

    # Every phase timed for both libraries (lowrank: ours only), positive and finite.
    t = m["timings"]
    expected = {"epoch", "forward", "marglik/all/kron", "predict/all/kron"}
    expected |= {"predict/last_layer/kron", "grid20/last_layer/kron", "grid100/last_layer/kron"}
    fits = ["/".join(c) for c in realistic.FIT_CONFIGS if c != ("all", "diag")]
    expected |= {"forward/last_layer_batches", "fit/all/diag/n=64"}  # 128 rows > --diag-rows
    expected |= {f"fit/{c}" for c in fits} | {"fit+lml/all/kron", "fit+lml/last_layer/kron"}
    assert expected <= set(t), expected - set(t)
    for key, row in t.items():
        assert "errors" not in row, (key, row["errors"])
        assert row["ours"] > 0 and math.isfinite(row["ours"]), key
        if key == "fit/all/lowrank":
            assert row["laplace-torch"] is None
        else:
            assert row["laplace-torch"] > 0, key
            assert row["speedup"] == pytest.approx(row["laplace-torch"] / row["ours"])
    assert t["fit/all/kron"]["passes"]["ours"] > 0
    assert t["fit/all/diag/n=64"]["n"] == 64 and t["fit/all/kron"]["n"] == 128
    assert all(
        r["runs"] == {"ours": 1, "laplace-torch": 0 if "lowrank" in k else 1} for k, r in t.items()
    ), {k: r["runs"] for k, r in t.items()}
    assert sorted(r["n"] for k, r in t.items() if k.startswith("scale_n/")) == [64, 128]
    # Last-layer prediction ÷ forward, timed alternately: the summary's ratio column.
    r = m["last_layer_ratio"]
    assert r["calls"] == realistic.LL_RATIO_CALLS and r["forward_s"] > 0 and r["predict_s"] > 0
    assert r["ratio"] == pytest.approx(r["predict_s"] / r["forward_s"])

    # The side-by-side numbers agree in float64 (one row per configuration both can fit).
    rows = {a["config"]: a for a in m["agreement"]}
    assert set(rows) == {"all/diag", "all/kron", "last_layer/kron", "last_layer/full"}
    for config, a in rows.items():
        assert a["passed"], (config, a)
        assert {"f_mu", "f_var", "pred_mean", "pred_var", "log_marglik"} <= set(a["errors"])
        assert max(a["errors"].values()) <= realistic.RTOL
    assert result["agreement_passed"] is True

    # Peak memory measured in a subprocess for both libraries.
    mem = m["peak_mb"]["fit+predict/all/kron"]
    assert set(mem) == {"ours", "laplace-torch"} and all(v is not None for v in mem.values())

    # The Markdown table is written next to the JSON and regenerated from it alone.
    md = out.with_suffix(".md").read_text()
    assert "| diabetes_mlp | 1,441 | fit/all/kron |" in md
    assert "| model | params | kron fit | kron fit + lml | diag fit |" in md  # the summary
    summary_row = next(
        line
        for line in md.splitlines()
        if line.startswith("| diabetes_mlp | 1,441 | ") and "×" in line.split("|")[3]
    )
    assert summary_row.count("×") == len(realistic.SUMMARY_COLUMNS), summary_row
    assert f" | {r['ratio']:.2f} | " in summary_row
    assert "diabetes_mlp, last-layer prediction ÷ forward: " in md
    out.with_suffix(".md").unlink()
    assert realistic.main(["--markdown", str(out), "--out", str(out)]) == 0
    assert out.with_suffix(".md").read_text() == md
