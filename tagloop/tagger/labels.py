"""Label tables: DeepDanbooru ``tags.txt`` and WD14 ``selected_tags.csv``."""

from __future__ import annotations

import csv
from pathlib import Path

from .base import ModelFileError
from .result import WD14_CATEGORIES


def category_of(name: str) -> str:
    """Category for a tag with no table: ``rating:*`` are ratings, the rest general."""
    return "rating" if name.startswith("rating:") else "general"


def read_tags_txt(path: Path) -> tuple[list[str], list[str]]:
    """KichangKim's ``tags.txt``: one tag per line, stripped, blank lines dropped; line = output index."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # a BOM is not part of the first tag
    except UnicodeDecodeError as e:
        raise ModelFileError(f"{path}: tag list is not UTF-8 text ({e}).") from e
    tags = [line.strip() for line in text.splitlines() if line.strip()]
    if not tags:
        raise ModelFileError(f"{path}: tag list is empty.")
    return tags, [category_of(t) for t in tags]


def read_selected_tags_csv(path: Path) -> tuple[list[str], list[str]]:
    """SmilingWolf's ``selected_tags.csv`` (``tag_id,name,category,count``); categories by number.

    UTF-8 with or without a byte-order mark (a table saved from a spreadsheet has one).
    """
    try:
        return _read_selected_tags_csv(path)
    except UnicodeDecodeError as e:
        raise ModelFileError(f"{path}: tag table is not UTF-8 text ({e}); use the file that came with the model.") from None
    except csv.Error as e:
        raise ModelFileError(f"{path}: not a readable CSV table ({e}).") from None
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read the tag table ({e.strerror or e}).") from None


def _read_selected_tags_csv(path: Path) -> tuple[list[str], list[str]]:
    tags: list[str] = []
    cats: list[str] = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "name" not in reader.fieldnames:
            raise ModelFileError(f"{path}: not a selected_tags.csv (no `name` column in the header).")
        has_cat = "category" in reader.fieldnames
        for lineno, row in enumerate(reader, start=2):
            name = (row.get("name") or "").strip()
            if not name:
                raise ModelFileError(f"{path}, line {lineno}: empty tag name.")
            if has_cat:
                try:
                    number = int(row["category"])
                except (TypeError, ValueError):
                    raise ModelFileError(f"{path}, line {lineno}: category {row.get('category')!r} is not a number.") from None
                cat = WD14_CATEGORIES.get(number, "general")
            else:
                cat = category_of(name)
            if name.startswith("rating:"):
                cat = "rating"
            tags.append(name)
            cats.append(cat)
    if not tags:
        raise ModelFileError(f"{path}: no tags in the table.")
    return tags, cats


def read_label_file(path: Path) -> tuple[list[str], list[str]]:
    """A ``.csv`` table or a ``.txt`` list, by extension."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return read_selected_tags_csv(path)
    return read_tags_txt(path)


def find_label_file(model_path: Path, explicit: Path | None = None) -> Path | None:
    """The label file beside a model: explicit, else ``selected_tags.csv``, ``tags.txt``, ``<stem>.txt``, ``<stem>.csv``."""
    if explicit is not None:
        return Path(explicit)
    folder = model_path if model_path.is_dir() else model_path.parent
    candidates = ["selected_tags.csv", "tags.txt"]
    if model_path.is_file():
        candidates += [model_path.stem + ".txt", model_path.stem + ".csv", model_path.stem + ".tags.txt"]
    for name in candidates:
        p = folder / name
        if p.is_file():
            return p
    return None
