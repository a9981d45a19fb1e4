"""Per-position label maps (`io.datasets.check_label_maps`) and the streamed NPZ writer
(`io.npz_stream.NpzStream`) used by dense outputs (docs/dense-outputs.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from laplace_cli.core.errors import BadInputError
from laplace_cli.io.datasets import check_label_maps, load_dataset_spec, load_split
from laplace_cli.io.npz_stream import NpzStream


def test_label_maps_keep_shape_and_accept_ignore_index() -> None:
    y = torch.tensor([[[0, 2], [255, 1]], [[1.0, 0], [2, 255]]])
    out = check_label_maps(y, 3, "f", 255)
    assert out.dtype == torch.int64 and out.shape == (2, 2, 2)
    assert torch.equal(out, y.long())


@pytest.mark.parametrize(
    ("y", "needle"),
    [
        (torch.tensor([[[0, 3]]]), "row 0, position (0, 1): class label out of range"),
        (torch.tensor([[[0, -1]]]), "row 0, position (0, 1): expected a class label ≥ 0"),
        (torch.tensor([[[0.5, 1.0]]]), "row 0, position (0, 0): expected an integer"),
        (torch.tensor([1, 2]), "(N, H, W) label maps"),
    ],
)
def test_bad_label_maps_name_row_and_position(y: torch.Tensor, needle: str) -> None:
    with pytest.raises(BadInputError, match=".*") as err:
        check_label_maps(y, 3, "f", -100)
    assert needle in str(err.value)


def test_spec_ignore_index_and_label_maps_loading(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 1, 2, 2), "f4"), y=np.array([[[0, 7], [1, 1]]] * 2))
    spec_path = tmp_path / "s.yaml"
    spec_path.write_text("task: classification\nignore_index: 7\nsplits: {a: {path: d.npz}}\n")
    spec = load_dataset_spec(spec_path)
    assert spec.ignore_index == 7
    ds = load_split(spec, "a", label_maps=7)
    assert ds.y.shape == (2, 2, 2)
    with pytest.raises(BadInputError, match="output-positions"):
        load_split(spec, "a")  # one label per row expected: the message names the flag
    spec_path.write_text("ignore_index: x\nsplits: {a: {path: d.npz}}\n")
    with pytest.raises(BadInputError, match="ignore_index: expected an integer"):
        load_dataset_spec(spec_path)


def test_npz_stream_writes_the_concatenation(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(7, 3, 4)).astype("f4"), np.arange(7)
    s = NpzStream(tmp_path / "out.npz")
    for lo, hi in ((0, 2), (2, 3), (3, 7)):
        s.append({"a": a[lo:hi], "id": b[lo:hi]})
    assert not (tmp_path / "out.npz").exists()  # nothing at the destination before close
    s.close()
    z = np.load(tmp_path / "out.npz")
    assert z.files == ["a", "id"]
    np.testing.assert_array_equal(z["a"], a)
    np.testing.assert_array_equal(z["id"], b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npz"]  # temporaries removed


def test_npz_stream_abort_keeps_the_old_file(tmp_path: Path) -> None:
    out = tmp_path / "out.npz"
    out.write_bytes(b"old")
    s = NpzStream(out)
    s.append({"a": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="batch of"):
        s.append({"a": np.zeros((2, 4))})  # another trailing shape
    s.abort()
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npz"]
