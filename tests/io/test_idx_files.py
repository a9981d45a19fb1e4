"""IDX data files (MNIST format) in dataset specs, and the `rows:` / `scale:` split keys.

The reference for every value is the array written into a tiny IDX file made here with
`struct` and numpy's big-endian dtypes, independently of the reader.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from laplace_cli.cli.app import app
from laplace_cli.core.errors import BadInputError
from laplace_cli.io.data_formats import detect_format, format_from_name
from laplace_cli.io.datasets import load_dataset_spec, load_split, parse_dataset_spec
from laplace_cli.io.idx_files import read_idx

CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D}


def write_idx(path: Path, arr: np.ndarray, *, gz: bool = False) -> Path:
    code = CODES[arr.dtype.type]
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.fixture()
def images(tmp_path: Path) -> tuple[np.ndarray, np.ndarray, Path]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(12, 4, 5), dtype=np.uint8)
    y = rng.integers(0, 10, size=12).astype(np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", x, gz=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", y, gz=True)
    return x, y, tmp_path


@pytest.mark.parametrize("dtype", list(CODES))
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trips_every_type(tmp_path: Path, dtype, gz: bool) -> None:
    arr = (np.arange(2 * 3 * 4) - 7).reshape(2, 3, 4)
    arr = (arr % 200 if dtype == np.uint8 else arr * 3).astype(dtype)
    if dtype == np.float32:
        arr = arr / np.float32(3.5)
    got = read_idx(write_idx(tmp_path / "a.idx", arr, gz=gz))
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, arr)
    assert got.flags.writeable  # a copy, not a view of the read-only buffer


def test_names_say_idx() -> None:
    for name in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte", "x.idx", "x.idx.gz"):
        assert format_from_name(name) == "idx", name
        assert detect_format(name) == "idx"
    assert format_from_name("x.gz") is None
    assert format_from_name("a.npz") == "npz"
    with pytest.raises(BadInputError, match="IDX name"):
        detect_format("data.bin")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not an IDX file"),
        (b"PK\x03\x04rest", "not an IDX file"),
        (bytes([0, 0, 0x07, 1]) + struct.pack(">I", 2) + b"ab", "unknown IDX type code 0x07"),
        (bytes([0, 0, 0x08, 0]), "declares 0 dimensions"),
        (bytes([0, 0, 0x08, 3]) + struct.pack(">I", 2), "truncated IDX header"),
        # a header declaring 4G x 4G x 255 values: refused before anything is allocated
        (bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2**32 - 1, 2**32 - 1, 255), "hostile"),
        (bytes([0, 0, 0x08, 2]) + struct.pack(">2I", 3, 4) + bytes(11), "holds fewer"),
        (bytes([0, 0, 0x08, 2]) + struct.pack(">2I", 3, 4) + bytes(13), "holds more"),
    ],
)
@pytest.mark.parametrize("gz", [False, True])
def test_bad_headers_are_bad_input(tmp_path: Path, data: bytes, message: str, gz: bool) -> None:
    path = tmp_path / "bad.idx"
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(BadInputError, match=message):
        read_idx(path)


def test_hostile_header_in_a_spec_exits_2(tmp_path: Path) -> None:
    bad = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2**31, 2**31, 2**20)
    (tmp_path / "x.idx").write_bytes(bad)
    write_idx(tmp_path / "y.idx", np.zeros(3, dtype=np.uint8))
    (tmp_path / "data.yaml").write_text("splits:\n  train: {path: x.idx, y: y.idx}\n")
    model = Path(__file__).resolve().parents[2] / "sample_models" / "digits_mlp" / "model.pt2"
    args = ["fit", str(model), "--data", str(tmp_path / "data.yaml"), "-o", str(tmp_path / "p.st")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "hostile" in result.output
    assert not (tmp_path / "p.st").exists()


def test_spec_reads_images_labels_rows_and_scale(images) -> None:
    x, y, folder = images
    (folder / "data.yaml").write_text(
        yaml.safe_dump(
            {
                "task": "classification",
                "n_classes": 10,
                "splits": {
                    "train": {
                        "path": "train-images-idx3-ubyte.gz",
                        "y": "train-labels-idx1-ubyte.gz",
                        "rows": "2:9",
                        "scale": 0.5,
                    },
                    "tail": {"path": "train-images-idx3-ubyte.gz", "rows": "10:"},
                    "all": {"path": "train-images-idx3-ubyte.gz", "format": "idx"},
                },
            }
        )
    )
    spec = load_dataset_spec(folder / "data.yaml", check_files=True)
    train = load_split(spec, "train")
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    np.testing.assert_array_equal(train.x.numpy(), x[2:9].astype(np.float32) * 0.5)
    np.testing.assert_array_equal(train.y.numpy(), y[2:9].astype(np.int64))
    tail = load_split(spec, "tail", require_labels=False)
    np.testing.assert_array_equal(tail.x.numpy(), x[10:].astype(np.float32))
    assert len(load_split(spec, "all", require_labels=False)) == 12


def test_rows_past_the_end_and_label_count_mismatch_are_refused(images, tmp_path: Path) -> None:
    x, y, folder = images
    write_idx(folder / "short-labels-idx1-ubyte", y[:5])
    (folder / "data.yaml").write_text(
        "splits:\n"
        "  a: {path: train-images-idx3-ubyte.gz, rows: '0:13'}\n"
        "  b: {path: train-images-idx3-ubyte.gz, y: short-labels-idx1-ubyte}\n"
        "  c: {path: train-images-idx3-ubyte.gz, y: nowhere-idx1-ubyte}\n"
    )
    # pre-flight: every problem at once, from the headers
    with pytest.raises(BadInputError) as err:
        load_dataset_spec(folder / "data.yaml", check_files=True)
    lines = str(err.value).splitlines()
    assert any("splits.a.rows: reaches row 13" in line and "12 rows" in line for line in lines)
    assert any("splits.b:" in line and "12 feature rows but 5 targets" in line for line in lines)
    assert any("splits.c.y: file not found" in line for line in lines)
    # and the loader on its own
    spec = load_dataset_spec(folder / "data.yaml")
    with pytest.raises(BadInputError, match="rows 0:13 reaches past the file's 12 rows"):
        load_split(spec, "a", require_labels=False)
    with pytest.raises(BadInputError, match="12 feature rows but 5 targets"):
        load_split(spec, "b")
    # rows inside both files: the declared counts still have to agree
    spec.splits["b"].rows = (0, 3)
    with pytest.raises(BadInputError, match="12 feature rows but 5 targets"):
        load_split(spec, "b")


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("rows", [(0, 1), (3, 7), (5, None), (None, 12), (12, None)])
def test_read_idx_rows_match_slicing(tmp_path: Path, gz: bool, rows) -> None:
    arr = np.arange(12 * 3 * 2, dtype=np.int16).reshape(12, 3, 2) * 7 - 100
    path = write_idx(tmp_path / "a.idx", arr, gz=gz)
    np.testing.assert_array_equal(read_idx(path, rows=rows), arr[slice(*rows)])
    # a truncated file is noticed when the wanted rows are not all there
    data = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    cut = data[: len(data) - 3 * 2 * 2 * 2]  # drop the last two rows
    path.write_bytes(gzip.compress(cut) if gz else cut)
    if (rows[1] or 12) > 10 and (rows[0] or 0) < 12:  # wants a row of the lost two
        with pytest.raises(BadInputError, match="holds fewer"):
            read_idx(path, rows=rows)
    else:
        np.testing.assert_array_equal(read_idx(path, rows=rows), arr[slice(*rows)])


@pytest.mark.parametrize(
    ("split", "message"),
    [
        ({"path": "a.npz", "rows": "5:5"}, "rows: expected start < stop"),
        ({"path": "a.npz", "rows": "a:b"}, "rows: expected 'start:stop'"),
        ({"path": "a.npz", "rows": 10}, "rows: expected 'start:stop'"),
        ({"path": "a.npz", "scale": 0}, "scale: expected a positive number"),
        ({"path": "a.npz", "scale": "1/255"}, "scale: expected a positive number"),
        ({"callable": "m:f", "rows": "0:2"}, "rows: only for data files"),
        ({"path": "a.idx", "x": "images"}, "x: a .idx file holds one array"),
    ],
)
def test_bad_rows_and_scale_keys(split: dict, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        parse_dataset_spec({"splits": {"s": split}})


def test_rows_and_scale_apply_to_tables(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text(
        "id,a,b,y\n" + "".join(f"r{i},{i},{2 * i},{i % 2}\n" for i in range(6))
    )
    spec = parse_dataset_spec(
        {"splits": {"s": {"path": "t.csv", "rows": "1:4", "scale": 10.0}}}, base_dir=tmp_path
    )
    ds = load_split(spec, "s")
    np.testing.assert_array_equal(ds.x.numpy(), [[10, 20], [20, 40], [30, 60]])
    assert ds.ids == ["r1", "r2", "r3"] and ds.y.tolist() == [1, 0, 1]


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    head=st.binary(min_size=0, max_size=24),
    body=st.binary(min_size=0, max_size=64),
    gz=st.booleans(),
)
def test_any_bytes_are_read_or_refused_as_bad_input(
    tmp_path: Path, head: bytes, body: bytes, gz: bool
) -> None:
    # Mostly-valid magic numbers too, so that the shape and size checks are reached.
    for data in (head + body, bytes([0, 0]) + head[:2] + body, bytes([0, 0, 0x08, 2]) + body):
        path = tmp_path / "f.idx"
        path.write_bytes(gzip.compress(data) if gz else data)
        try:
            arr = read_idx(path)
        except BadInputError:
            continue
        assert arr.nbytes == len(data) - 4 - 4 * arr.ndim  # every byte accounted for


def test_missing_debian_data_set_names_its_package(tmp_path):
    from laplace_cli.io.data_formats import file_not_found

    msg = file_not_found("spec: splits.train.path", "/usr/share/datasets/fashion-mnist/x.gz")
    assert msg.endswith("(install it with: apt-get install dataset-fashion-mnist)")
    assert "apt-get" not in file_not_found("spec: splits.train.path", tmp_path / "x.gz")
