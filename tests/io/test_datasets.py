"""Dataset specs (docs/data-spec.md): every format, every error at once, chunked streaming input."""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from laplace_cli.core.enums import Likelihood
from laplace_cli.core.errors import BadInputError
from laplace_cli.io.datasets import (
    ArrayDataset,
    check_labels,
    load_dataset_spec,
    load_split,
    make_loader,
    parse_dataset_spec,
)
from laplace_cli.io.tabular import iter_feature_chunks

N, D = 7, 3


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, D)).astype(np.float32)
    y = rng.integers(0, 4, size=N).astype(np.int64)
    return x, y


def _write_all_formats(folder: Path, x: np.ndarray, y: np.ndarray) -> dict[str, dict]:
    """The same data in every format; returns the split entries of a spec."""
    np.savez(folder / "d.npz", X=x, labels=y)
    np.save(folder / "d.npy", x)
    np.save(folder / "d_y.npy", y)
    torch.save({"x": torch.from_numpy(x), "y": torch.from_numpy(y)}, folder / "d.pt")
    torch.save((torch.from_numpy(x), torch.from_numpy(y)), folder / "tuple.pt")
    save_file(
        {"feat": torch.from_numpy(x), "y": torch.from_numpy(y)}, str(folder / "d.safetensors")
    )
    # Text: repr of the float32 values as float64 reads back exactly after the float32 cast.
    with (folder / "d.csv").open("w") as fh:
        fh.write("id,name,f0,f1,f2,label\n")
        for i in range(N):
            fh.write(f"r{i},n{i}," + ",".join(repr(float(v)) for v in x[i]) + f",{y[i]}\n")
    with (folder / "d.tsv").open("w") as fh:
        fh.write("f0\tf1\tf2\ttarget\n")
        for i in range(N):
            fh.write("\t".join(repr(float(v)) for v in x[i]) + f"\t{float(y[i])}\n")
    with (folder / "d.jsonl").open("w") as fh:
        for i in range(N):
            fh.write(json.dumps({"features": [float(v) for v in x[i]], "label": int(y[i])}) + "\n")
    with (folder / "cols.jsonl").open("w") as fh:
        for i in range(N):
            rec = {"id": i * 10, "y": int(y[i])} | {f"f{j}": float(x[i, j]) for j in range(D)}
            fh.write(json.dumps(rec) + "\n")
    return {
        "npz": {"path": "d.npz", "x": "X", "y": "labels"},
        "npy": {"path": "d.npy", "y": "d_y.npy"},
        "pt": {"path": "d.pt"},
        "pt_tuple": {"path": "tuple.pt"},
        "safetensors": {"path": "d.safetensors", "x": "feat"},
        "csv": {"path": "d.csv", "target": "label"},
        "tsv": {"path": "d.tsv"},
        "jsonl": {"path": "d.jsonl", "x": "features", "y": "label"},
        "jsonl_columns": {"path": "cols.jsonl"},
    }


def _write_spec(folder: Path, splits: dict, **top) -> Path:
    spec = folder / "data.yaml"
    import yaml

    spec.write_text(yaml.safe_dump({**top, "splits": splits}, sort_keys=False))
    return spec


@pytest.mark.parametrize("task", ["classification", "regression", None])
def test_every_format_gives_the_same_tensors(tmp_path: Path, task: str | None):
    x, y = _data()
    splits = _write_all_formats(tmp_path, x, y)
    spec = load_dataset_spec(_write_spec(tmp_path, splits), check_files=True)
    for name in splits:
        ds = load_split(spec, name, task=task)
        assert isinstance(ds, ArrayDataset)
        assert ds.x.dtype == torch.float32, name
        torch.testing.assert_close(ds.x, torch.from_numpy(x), rtol=0, atol=0, msg=name)
        if task == "classification":
            assert ds.y.dtype == torch.int64 and ds.y.shape == (N,), name
            assert torch.equal(ds.y, torch.from_numpy(y)), name
        elif task == "regression":
            assert ds.y.dtype == torch.float32 and ds.y.shape == (N, 1), name
            assert torch.equal(ds.y[:, 0], torch.from_numpy(y).float()), name
        else:  # no task: integers stay integers, floats (CSV / TSV text) stay floats
            assert torch.equal(ds.y.double(), torch.from_numpy(y).double()), name
    assert load_split(spec, "csv").ids == [f"r{i}" for i in range(N)]
    assert load_split(spec, "jsonl_columns").ids == [i * 10 for i in range(N)]
    assert load_split(spec, "npz").ids is None


def test_spec_with_three_mistakes_reports_all(tmp_path: Path):
    spec = _write_spec(
        tmp_path,
        {
            "train": {"path": "train.npz", "y": 3},
            "val": {"path": "val.csv", "taret": "label"},
        },
        task="clasification",
    )
    with pytest.raises(BadInputError) as info:
        load_dataset_spec(spec)
    lines = str(info.value).splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith(f"{spec}: task: expected one of classification, regression, binary")
    assert any(
        line == f"{spec}: splits.train.y: expected a key or column name (string), got 3 (int)"
        for line in lines
    )
    assert any(
        line.startswith(f"{spec}: splits.val.taret: unknown key; did you mean 'target'?")
        for line in lines
    )


def test_more_validation_errors(tmp_path: Path):
    data = {
        "batch_size": 0,
        "splitz": {},
        "splits": {
            "a": {"path": "x.txt"},
            "b": {"callable": "no_colon", "x": "x"},
            "c": {},
            "d": "train.npz",
            "e": {"path": "a.npz", "y": "y", "target": "t", "kwargs": {"n": 1}},
            "f": {"path": "a.npy", "x": "k", "y": "labels"},
            "g": {"path": "a.npz", "x": ["a", "b"]},
        },
    }
    with pytest.raises(BadInputError) as info:
        parse_dataset_spec(data, source="d.yaml")
    msg = str(info.value)
    expected = [
        "d.yaml: splitz: unknown key; did you mean 'splits'?",
        "d.yaml: batch_size: expected a positive integer, got 0 (int)",
        "d.yaml: splits.a.path: expected a data file ending in",
        "d.yaml: splits.b.callable: expected 'pkg.module:function' or 'file.py:function', got 'no_colon'",
        "d.yaml: splits.b.x: not used with callable:",
        "d.yaml: splits.c: expected `path:` (a data file) or `callable:`",
        "d.yaml: splits.d: expected a mapping with `path:` or `callable:`, got 'train.npz'",
        "d.yaml: splits.e.target: give either y: or target:",
        "d.yaml: splits.e.kwargs: only used with callable:",
        "d.yaml: splits.f.x: a .npy file holds one array",
        "d.yaml: splits.f.y: for a .npy split, expected the path of a second .npy",
        "d.yaml: splits.g.x: a list of columns is for CSV / JSONL files",
    ]
    for line in expected:
        assert line in msg, line
    assert len(msg.splitlines()) == len(expected)


def test_yaml_errors_name_file_and_line(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: classification\nsplits:\n  train: {path: a.npz\n  val: x\n")
    with pytest.raises(BadInputError, match=rf"{bad}:\d+:\d+: invalid YAML"):
        load_dataset_spec(bad)
    dup = tmp_path / "dup.yaml"
    dup.write_text("splits:\n  train: {path: a.npz}\n  train: {path: b.npz}\n")
    with pytest.raises(BadInputError, match=rf"{dup}:3:3: invalid YAML: duplicate key 'train'"):
        load_dataset_spec(dup)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(BadInputError, match="got an empty file"):
        load_dataset_spec(empty)
    with pytest.raises(BadInputError, match="nope.yaml: file not found"):
        load_dataset_spec(tmp_path / "nope.yaml")


def test_relative_paths_resolve_against_the_yaml_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    folder = tmp_path / "cfg"
    folder.mkdir()
    x, y = _data()
    np.savez(folder / "train.npz", x=x, y=y)
    spec_file = _write_spec(folder, {"train": {"path": "train.npz"}}, task="classification")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    spec = load_dataset_spec(Path("..") / "cfg" / "data.yaml")
    assert spec.splits["train"].path == Path("..") / "cfg" / "train.npz"
    assert len(load_split(spec, "train")) == N
    del spec_file


def test_check_files_reports_every_missing_file(tmp_path: Path):
    spec = _write_spec(tmp_path, {"a": {"path": "a.npz"}, "b": {"path": "b.csv"}})
    with pytest.raises(BadInputError) as info:
        load_dataset_spec(spec, check_files=True)
    assert str(info.value).count("file not found") == 2
    lazy = load_dataset_spec(spec)  # default: checked when a split is loaded
    with pytest.raises(BadInputError, match=r"splits.a.path: file not found"):
        load_split(lazy, "a")
    with pytest.raises(
        BadInputError, match=r"no split 'trian'.*did you mean 'a'\?|no split 'trian'"
    ):
        load_split(lazy, "trian")


@pytest.mark.parametrize(
    ("writer", "pattern"),
    [
        (
            lambda f: np.savez(f / "s.npz", x=np.array([[1.0, np.nan], [0, 0]]), y=[0, 1]),
            r"s\.npz: row 0: non-finite value nan in features",
        ),
        (
            lambda f: np.savez(f / "s.npz", x=np.zeros((3, 2)), y=[0.0, np.inf, 1]),
            r"s\.npz: row 1: non-finite value inf in labels",
        ),
        (
            lambda f: (f / "s.csv").write_text("a,b,y\n1,2,0\n3,inf,1\n"),
            r"s\.csv: row 1 \(line 3\): non-finite value inf in features",
        ),
        (
            lambda f: (f / "s.csv").write_text("a,b,y\n1,2,0\n3,,1\n"),
            r"s\.csv: row 1 \(line 3\): column 'b': missing value",
        ),
        (
            lambda f: (f / "s.csv").write_text("a,b,y\n1,2,0\n3,x,1\n"),
            r"s\.csv: row 1 \(line 3\): column 'b': expected a number, got 'x'",
        ),
        (
            lambda f: (f / "s.csv").write_text("a,b,y\n1,2,0\n3,4\n"),
            r"s\.csv: row 1 \(line 3\): expected 3 fields, got 2",
        ),
        (
            lambda f: (f / "s.jsonl").write_text(
                '{"x": [1, 2], "y": 0}\n\n{"x": [1, NaN], "y": 1}\n'
            ),
            r"s\.jsonl: row 1 \(line 3\): non-finite value nan in features",
        ),
        (
            lambda f: (f / "s.jsonl").write_text('{"x": [1, 2], "y": 0}\n{"x": [1], "y": 1}\n'),
            r"s\.jsonl: row 1 \(line 2\): features of shape \(1,\)",
        ),
        (
            lambda f: (f / "s.jsonl").write_text('{"x": [1, 2], "y": 0}\n{"x": [1, 2], "y": 1\n'),
            r"s\.jsonl: row 1 \(line 2\): invalid JSON",
        ),
        (
            lambda f: np.savez(f / "s.npz", x=np.zeros((3, 2)), y=[0, 1.5, 1]),
            r"s\.npz: row 1: expected an integer class label, got 1\.5",
        ),
        (
            lambda f: np.savez(f / "s.npz", x=np.zeros((3, 2)), y=[0, -1, 1]),
            r"s\.npz: row 1: expected a class label ≥ 0, got -1",
        ),
        (
            lambda f: np.savez(f / "s.npz", x=np.zeros((3, 2)), y=[0, 1, 5]),
            r"s\.npz: row 2: class label 5 out of range for 3 classes",
        ),
        (lambda f: np.savez(f / "s.npz", x=np.zeros((0, 2)), y=np.zeros(0)), r"empty split"),
        (
            lambda f: np.savez(f / "s.npz", x=np.zeros((3, 2)), y=[0, 1]),
            r"3 feature rows but 2 targets",
        ),
        (lambda f: np.savez(f / "s.npz", x=np.zeros((3, 2))), r"has no targets; name them with y:"),
        (
            lambda f: np.savez(f / "s.npz", X=np.zeros((3, 2))),
            r"s\.npz: no feature key 'x'; keys: X; did you mean 'X'\?",
        ),
    ],
    ids=[
        "npz-nan",
        "npz-inf-label",
        "csv-inf",
        "csv-empty",
        "csv-text",
        "csv-ragged",
        "jsonl-nan",
        "jsonl-ragged",
        "jsonl-syntax",
        "label-frac",
        "label-neg",
        "label-big",
        "empty",
        "length",
        "no-labels",
        "no-key",
    ],
)
def test_bad_content_names_file_and_row(tmp_path: Path, writer, pattern: str):
    writer(tmp_path)
    file = next(p for p in tmp_path.iterdir() if p.name.startswith("s."))
    spec = parse_dataset_spec(
        {"task": "classification", "n_classes": 3, "splits": {"s": {"path": file.name}}},
        source="d.yaml",
        base_dir=tmp_path,
    )
    with pytest.raises(BadInputError, match=pattern):
        load_split(spec, "s")


def test_check_labels():
    assert check_labels(torch.tensor([[0.0], [2.0]]), 3, "f").tolist() == [0, 2]
    assert check_labels(torch.tensor([1, 0]), None, "f").dtype == torch.int64
    with pytest.raises(BadInputError, match="one-hot or multi-label targets need task: binary"):
        check_labels(torch.zeros(4, 3), 3, "f")
    with pytest.raises(BadInputError, match=r"f: row 1: class label 3 out of range for 3 classes"):
        check_labels(torch.tensor([0, 3]), 3, "f")


def test_binary_targets(tmp_path: Path):
    np.savez(tmp_path / "b.npz", x=np.zeros((4, 2)), y=np.array([[0, 1], [1, 1], [0, 0], [1, 0]]))
    np.savez(tmp_path / "bad.npz", x=np.zeros((2, 2)), y=np.array([0, 2]))
    spec = parse_dataset_spec(
        {"task": "binary", "splits": {"b": {"path": "b.npz"}, "bad": {"path": "bad.npz"}}},
        base_dir=tmp_path,
    )
    ds = load_split(spec, "b")
    assert ds.y.dtype == torch.float32 and ds.y.shape == (4, 2)
    with pytest.raises(BadInputError, match=r"row 1: binary targets must lie in \[0, 1\], got 2"):
        load_split(spec, "bad")


def test_make_loader_and_overrides(tmp_path: Path):
    x, y = _data()
    np.savez(tmp_path / "t.npz", x=x, y=y)
    spec = parse_dataset_spec(
        {"task": "regression", "batch_size": 3, "splits": {"train": {"path": "t.npz"}}},
        base_dir=tmp_path,
    )
    batches = list(make_loader(spec, "train"))
    assert [len(b[0]) for b in batches] == [3, 3, 1]
    assert batches[0][1].shape == (3, 1)  # regression: (N,) -> (N, 1)
    # --batch-size and --likelihood beat the YAML.
    xb, yb = next(iter(make_loader(spec, "train", batch_size=5, task=Likelihood.CLASSIFICATION)))
    assert xb.shape == (5, D) and yb.dtype == torch.int64 and yb.shape == (5,)
    g = torch.Generator().manual_seed(0)
    shuffled = torch.cat([b[0] for b in make_loader(spec, "train", shuffle=True, generator=g)])
    assert not torch.equal(shuffled, torch.from_numpy(x))
    assert torch.equal(shuffled.sort(0).values, torch.from_numpy(x).sort(0).values)


def test_unlabeled_split_for_prediction(tmp_path: Path):
    np.save(tmp_path / "x.npy", np.ones((4, 2), dtype=np.float32))
    spec = parse_dataset_spec({"splits": {"p": {"path": "x.npy"}}}, base_dir=tmp_path)
    ds = load_split(spec, "p", require_labels=False)
    assert not ds.has_labels and ds.y.shape == (4, 0)
    xb, yb = next(iter(make_loader(spec, "p", require_labels=False)))
    assert xb.shape == (4, 2) and yb.shape == (4, 0)


def test_pt_with_pickled_code_is_refused(tmp_path: Path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"x": torch.zeros(2, 2), "y": Evil()}, tmp_path / "d.pt")
    spec = parse_dataset_spec({"splits": {"s": {"path": "d.pt"}}}, base_dir=tmp_path)
    with pytest.raises(BadInputError, match=r"d\.pt: holds pickled objects.*never run code"):
        load_split(spec, "s")
    assert not marker.exists()


CALLABLE_SRC = textwrap.dedent(
    """
    import torch
    from torch.utils.data import TensorDataset

    def make_split(n=5):
        return TensorDataset(torch.ones(n, 2), torch.zeros(n, dtype=torch.long))

    def not_a_dataset():
        return [1, 2]

    def singles():
        return TensorDataset(torch.ones(3, 2))
    """
)


def test_callable_splits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    mod = f"mydata_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{mod}.py").write_text(CALLABLE_SRC)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "local.py").write_text(CALLABLE_SRC)
    monkeypatch.chdir(tmp_path)  # module-style callables import from the working directory
    spec = parse_dataset_spec(
        {
            "batch_size": 4,
            "splits": {
                "custom": {"callable": f"{mod}:make_split", "kwargs": {"n": 6}},
                "file": {"callable": "local.py:make_split"},  # relative to the YAML folder
                "bad": {"callable": f"{mod}:not_a_dataset"},
                "single": {"callable": f"{mod}:singles"},
                "empty": {"callable": f"{mod}:make_split", "kwargs": {"n": 0}},
                "typo": {"callable": f"{mod}:make_splt"},
                "kw": {"callable": f"{mod}:make_split", "kwargs": {"m": 1}},
            },
        },
        source="cfg/data.yaml",
        base_dir=tmp_path / "cfg",
    )
    assert len(load_split(spec, "custom")) == 6
    assert len(load_split(spec, "file")) == 5
    assert [len(b[0]) for b in make_loader(spec, "custom")] == [4, 2]
    cases = {
        "bad": r"splits.bad.callable: .* returned list, expected a torch.utils.data.Dataset",
        "single": r"items must be \(x, y\) pairs, got tuple of length 1",
        "empty": r"splits.empty: empty split",
        "typo": r"has no attribute 'make_splt'; did you mean 'make_split'\?",
        "kw": r"failed with kwargs \{'m': 1\}: TypeError",
    }
    for name, pattern in cases.items():
        with pytest.raises(BadInputError, match=pattern):
            load_split(spec, name)


def test_text_split_with_missing_file_is_bad_input(tmp_path: Path):
    spec = parse_dataset_spec(
        {
            "splits": {
                "texts": {
                    "path": "reviews.jsonl",
                    "text": "text",
                    "y": "label",
                    "tokenizer": "./tok",
                    "max_length": 128,
                }
            }
        },
        base_dir=tmp_path,
    )
    with pytest.raises(BadInputError):
        load_split(spec, "texts")


# --------------------------------------------------------------------------- chunked input


def _csv_text(n: int) -> str:
    rows = ["id,a,b,label"] + [f"q{i},{i},{i * 0.5},{i % 3}" for i in range(n)]
    return "\n".join(rows) + "\n"


def test_iter_feature_chunks_csv_ignores_target_and_keeps_ids(tmp_path: Path):
    (tmp_path / "in.csv").write_text(_csv_text(5))
    chunks = list(iter_feature_chunks(tmp_path / "in.csv", chunk_rows=2))
    assert [len(ids) for ids, _ in chunks] == [2, 2, 1]
    ids = [i for c, _ in chunks for i in c]
    x = torch.cat([t for _, t in chunks])
    assert ids == [f"q{i}" for i in range(5)]
    assert x.dtype == torch.float32 and x.shape == (5, 2)  # label and id are not features
    assert torch.equal(x[:, 1], torch.arange(5) * 0.5)
    # A custom-named target column is left out when named.
    (tmp_path / "t.csv").write_text("a,score\n1,9\n2,8\n")
    ((_, xt),) = iter_feature_chunks(tmp_path / "t.csv", target="score")
    assert xt.tolist() == [[1.0], [2.0]]


def test_iter_feature_chunks_every_format_agrees(tmp_path: Path):
    x, y = _data()
    _write_all_formats(tmp_path, x, y)
    expected = torch.from_numpy(x)
    inputs = {
        "d.npz": {"x_key": "X"},
        "d.npy": {},
        "d.pt": {},
        "d.safetensors": {"x_key": "feat"},
        "d.csv": {"target": "label"},
        "d.tsv": {},
        "d.jsonl": {"x_key": "features"},
        "cols.jsonl": {},
    }
    for file, kwargs in inputs.items():
        chunks = list(iter_feature_chunks(tmp_path / file, chunk_rows=3, **kwargs))
        assert [len(t) for _, t in chunks] == [3, 3, 1], file
        torch.testing.assert_close(torch.cat([t for _, t in chunks]), expected, rtol=0, atol=0)
    assert [
        i for ids, _ in iter_feature_chunks(tmp_path / "d.npz", x_key="X") for i in ids
    ] == list(range(N))


def test_iter_feature_chunks_stdin(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(_csv_text(3)))
    ((ids, x),) = iter_feature_chunks("-", fmt="csv")
    assert ids == ["q0", "q1", "q2"] and x.shape == (3, 2)
    lines = "".join(json.dumps({"x": [i, i + 1], "label": 0}) + "\n" for i in range(3))
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    ((ids, x),) = iter_feature_chunks("-")  # format sniffed from the first line
    assert ids == [0, 1, 2] and x.tolist() == [[0, 1], [1, 2], [2, 3]]
    monkeypatch.setattr("sys.stdin", io.StringIO("[1, 2]\n[3, 4]\n"))
    ((_, x),) = iter_feature_chunks("-", fmt="jsonl")
    assert x.tolist() == [[1, 2], [3, 4]]


class _CountingLines:
    """A text stream that counts the lines handed out, to prove that reading is lazy."""

    def __init__(self, header: str, row: str, n: int) -> None:
        self.header, self.row, self.n, self.read = header, row, n, 0

    def __iter__(self):
        yield self.header
        self.read += 1
        for _ in range(self.n):
            self.read += 1
            yield self.row


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_chunked_reading_is_lazy(fmt: str):
    if fmt == "csv":
        stream = _CountingLines("a,b\n", "1,2\n", 10**7)
    else:
        stream = _CountingLines('{"a": 1, "b": 2}\n', '{"a": 1, "b": 2}\n', 10**7)
    it = iter_feature_chunks(stream, fmt=fmt, chunk_rows=100)
    ids, x = next(it)
    assert x.shape == (100, 2)
    # Only about one chunk was read from a ten-million-line stream: memory stays flat.
    assert stream.read <= 102
    it.close()


def test_iter_feature_chunks_errors(tmp_path: Path):
    (tmp_path / "in.csv").write_text("a,b\n1,2\n1,nan\n")
    with pytest.raises(BadInputError, match=r"in\.csv: row 1 \(line 3\): non-finite value nan"):
        list(iter_feature_chunks(tmp_path / "in.csv"))
    with pytest.raises(BadInputError, match=r"unknown data file type '\.txt'"):
        list(iter_feature_chunks(tmp_path / "in.txt"))
    with pytest.raises(BadInputError, match=r"missing\.csv: file not found"):
        list(iter_feature_chunks(tmp_path / "missing.csv"))
    np.savez(tmp_path / "a.npz", feats=np.zeros((2, 2)))
    with pytest.raises(BadInputError, match=r"no feature key 'x'; keys: feats"):
        list(iter_feature_chunks(tmp_path / "a.npz"))
