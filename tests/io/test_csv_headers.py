"""Whether a CSV's first line is a header: decided from its content, or by header= / header:.

A first line whose fields are all numbers (or empty) is data; the columns are then named by
position ("0", "1", ...). `header=True` / `header: true` keeps a header whose names are numbers,
`header=False` / `header: false` reads every line as data. The same rule holds for predict's
streamed input (file or stdin) and for a dataset spec's CSV split.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from laplace_cli.core.errors import BadInputError
from laplace_cli.io.dataset_specs import parse_dataset_spec
from laplace_cli.io.datasets import load_split
from laplace_cli.io.tabular import TableInfo, iter_feature_chunks, iter_table_chunks, read_table

ROWS = "1.5,2,0\n3,4.25,1\n-5,6e-1,2\n"


def table_rows(text: str, **kwargs) -> tuple[np.ndarray, TableInfo]:
    info = TableInfo()
    chunks = list(iter_table_chunks(io.StringIO(text), fmt="csv", info=info, **kwargs))
    x = np.concatenate([c.x for c in chunks]) if chunks else np.zeros((0, 0))
    return x, info


def test_a_first_line_of_numbers_is_data() -> None:
    x, info = table_rows(ROWS)
    np.testing.assert_array_equal(x, [[1.5, 2, 0], [3, 4.25, 1], [-5, 0.6, 2]])
    assert info.rows == 3 and info.header is None and info.header_guessed
    assert info.header_summary() == "no header row: its first line is all numbers"


def test_a_first_line_with_names_is_a_header() -> None:
    x, info = table_rows("a,b,c\n" + ROWS)
    assert x.shape == (3, 3) and info.header == ["a", "b", "c"]
    assert info.header_warning() is None


def test_headerless_columns_are_named_by_position(tmp_path: Path) -> None:
    chunk = next(iter_table_chunks(io.StringIO(ROWS), fmt="csv", x_key=["0", "1"]))
    np.testing.assert_array_equal(chunk.x, [[1.5, 2], [3, 4.25], [-5, 0.6]])
    (tmp_path / "t.csv").write_text(ROWS)
    table = read_table(tmp_path / "t.csv", target="2")
    np.testing.assert_array_equal(table.y, [0, 1, 2])
    assert table.feature_names == ["0", "1"]


def test_explicit_header_keeps_numeric_names() -> None:
    x, info = table_rows("2019,2020,2021\n" + ROWS, header=True)
    assert x.shape == (3, 3) and info.header == ["2019", "2020", "2021"]
    x, info = table_rows("2019,2020,2021\n" + ROWS)  # the default reads it as a row
    assert x.shape == (4, 3)


def test_explicit_no_header_reads_every_line() -> None:
    x, info = table_rows(ROWS, header=False)
    assert x.shape == (3, 3) and not info.header_guessed
    with pytest.raises(
        BadInputError, match=r"no numeric feature columns .*no header row, as asked"
    ):
        table_rows("a,b,c\n" + ROWS, header=False)
    x, info = table_rows("", header=False)  # nothing at all: no rows, not an error
    assert x.shape == (0, 0) and info.rows == 0


def test_a_one_row_file() -> None:
    x, _ = table_rows("7,8,9\n")
    np.testing.assert_array_equal(x, [[7, 8, 9]])
    x, info = table_rows("a,b,c\n")
    assert info.rows == 0 and info.header == ["a", "b", "c"]


def test_a_missing_value_in_a_first_data_row_is_an_error_not_a_header() -> None:
    """`1,,3` is data with a gap (else the row would vanish silently into the header)."""
    with pytest.raises(BadInputError, match=r"row 0 \(line 1\): column '1': missing value \(the"):
        table_rows("1,,3\n4,5,6\n")


def test_pandas_index_header_reads_as_data_and_says_how_to_fix() -> None:
    """`DataFrame(arr).to_csv()` writes `,0,1,2`: an error that names --header, never a row."""
    with pytest.raises(BadInputError, match=r"missing value .*pass --header / header: true"):
        table_rows(",0,1\n0,1.5,2\n1,3,4\n")
    x, _ = table_rows(",0,1\n0,1.5,2\n1,3,4\n", header=True)
    np.testing.assert_array_equal(x, [[0, 1.5, 2], [1, 3, 4]])


def test_numeric_names_in_a_header_give_a_warning() -> None:
    _, info = table_rows("r0,0.5,0.25\nr1,1,2\n")
    assert "numeric names (0.5, 0.25); if the first line is data, pass --no-header" in (
        info.header_warning() or ""
    )
    _, told = table_rows("r0,0.5,0.25\nr1,1,2\n", header=True)
    assert told.header_warning() is None  # asked for: no warning


def test_stdin_and_tsv_follow_the_same_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(ROWS))
    info = TableInfo()
    ((ids, x),) = iter_feature_chunks("-", info=info)
    assert ids == [0, 1, 2] and x.shape == (3, 3) and info.format == "csv"
    chunk = next(iter_table_chunks(io.StringIO(ROWS.replace(",", "\t")), fmt="tsv"))
    assert chunk.x.shape == (3, 3)


def test_header_is_refused_for_other_formats(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", x=np.zeros((2, 3)))
    with pytest.raises(BadInputError, match="--no-header applies to CSV / TSV input, this is npz"):
        list(iter_feature_chunks(tmp_path / "a.npz", header=False))
    with pytest.raises(BadInputError, match="applies to CSV / TSV files, this is jsonl"):
        list(iter_table_chunks(io.StringIO('{"x": [1]}\n'), fmt="jsonl", header=True))


# --- the dataset spec's header: key ------------------------------------------------------------
def test_spec_header_key(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text(ROWS)
    (tmp_path / "years.csv").write_text("2019,2020,2021\n" + ROWS)
    spec = parse_dataset_spec(
        {
            "task": "classification",
            "splits": {
                "train": {"path": "train.csv", "target": "2"},
                "plain": {"path": "train.csv", "target": "2", "header": False},
                "years": {"path": "years.csv", "target": "2021", "header": True},
            },
        },
        base_dir=tmp_path,
    )
    assert spec.splits["train"].header is None and spec.splits["plain"].header is False
    for name in ("train", "plain", "years"):
        ds = load_split(spec, name)
        assert len(ds) == 3, name  # the header-less file keeps its first row
        assert ds[0][1].item() == 0


def test_spec_header_key_is_validated(tmp_path: Path) -> None:
    bad = {
        "splits": {
            "a": {"path": "a.csv", "header": "no"},
            "b": {"path": "b.npz", "header": False},
            "c": {"callable": "m:f", "header": True},
        }
    }
    with pytest.raises(BadInputError) as err:
        parse_dataset_spec(bad, source="d.yaml", base_dir=tmp_path)
    lines = str(err.value).splitlines()
    assert "d.yaml: splits.a.header: expected true or false, got 'no'" in lines
    assert "d.yaml: splits.b.header: only for CSV / TSV files; this split is npz" in lines
    assert (
        "d.yaml: splits.c.header: not used with callable: (the Dataset yields (x, y) itself)"
        in (lines)
    )
