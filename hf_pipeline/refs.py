"""References to artifacts: a stage folder, a run folder, a local dataset path, or a Hub id.

Dataset ids are looked up first in the local mirror (``<mirror>/<org>/<name>``), then on the Hub. Model and tokenizer
references resolve to something ``from_pretrained`` accepts: a folder, or a Hub id left as it is.

Every dataset the pipeline reads (corpus sources, conversations, GSM8K, MMLU) is opened here, by ``open_dataset``
(one ``datasets.Dataset``) or ``open_tables`` (the rows of each file), in one order:

1. local files or a glob (``.txt``/``.md``, ``.json``/``.jsonl``, ``.parquet``, ``.csv``, optionally ``.gz``,
   ``.bz2``, ``.xz`` or ``.zst``: ``FILE_TYPES``), one split whatever the source's ``split`` says;
2. a ``save_to_disk`` folder (``load_from_disk``);
3. a plain folder of data files (no README.md): the files of the split, found as ``datasets`` finds them
   (``train-*.parquet``, ``test.jsonl``...; every data file when none is named after a split), recursively;
4. a mirror folder, a Hub-like folder (README.md with ``configs:``) or a Hub id, through ``load_dataset``.

A dataset with several splits gives the source's ``split``, else ``train``, else its only split.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections import Counter
from pathlib import Path
from dataclasses import dataclass
from typing import Iterable, Literal, Optional

from .artifacts import is_complete
from .errors import ConfigError, suggest
from .stages import model_stages


SAMPLE_BY = ("line", "paragraph", "document")
RUN_PREFIX = "RUN/"  # a source path RUN/data means the data stage's output in this run's folder


@dataclass
class Source:
    """One source of a text corpus or a dataset mixture: a local file, glob or folder, or a Hub dataset id (tried in
    the mirror first). ``hf_pipeline.refs.open_dataset`` opens it.

    ``name`` and ``split`` are the dataset's config and split (no split: ``train``, else the only split; local files
    are one split whatever ``split`` says). ``text_column`` is the column a corpus reads; ``sample_by`` cuts ``.txt``
    and ``.md`` files into documents: each line, each paragraph (blank-line separated) or the whole file.
    ``weight`` is the number of passes over the source in one epoch of the mixture: 3.0 repeats it three times
    (the way curated sources are upweighted in real pretraining mixtures, or alignment-handbook's
    ``dataset_mixture``), 0.5 keeps a random half. ``heldout: false`` keeps every document for training (a corpus
    holds out a share of each source otherwise): the facts stage's documents, whose counts are the experiment.
    """

    path: str
    name: Optional[str] = None
    split: Optional[str] = None
    text_column: str = "text"
    sample_by: Literal["line", "paragraph", "document"] = "paragraph"
    weight: float = 1.0
    heldout: bool = True

    def __post_init__(self):
        if isinstance(self.path, os.PathLike):
            self.path = os.fspath(self.path)
        if not isinstance(self.path, str) or not self.path:
            raise ConfigError(f"path must be a file, glob, folder or dataset id, not {self.path!r}")
        if self.sample_by not in SAMPLE_BY:
            raise ConfigError(f"sample_by must be line, paragraph or document, not {self.sample_by!r}")
        try:
            self.weight = float(self.weight)
        except (TypeError, ValueError):
            raise ConfigError(f"weight must be a number, not {self.weight!r}") from None
        if not self.weight > 0:
            raise ConfigError(f"weight must be > 0, not {self.weight}")


def as_sources(items, output_dir: str | None = None) -> list[Source]:
    """Sources from a path, a mapping (Source's fields), a Source, or a list of those. A path starting with ``RUN/``
    is this run's folder: ``RUN/data`` -> ``<output_dir>/data``. An unknown key is a one-line ConfigError."""
    if isinstance(items, (str, dict, Source, os.PathLike)):
        items = [items]
    out = []
    for item in items or []:
        if isinstance(item, dict):
            item = from_mapping(Source, item)
        elif isinstance(item, (str, os.PathLike)):
            item = Source(path=item)
        elif not isinstance(item, Source):
            raise ConfigError(f"source {item!r} is neither a path nor a mapping")
        out.append(dataclasses.replace(item, path=run_path(item.path, output_dir)))
    return out


def run_path(path: str, output_dir: str | None) -> str:
    """``RUN/x`` -> ``<output_dir>/x``; any other path as it is."""
    if output_dir and path.startswith(RUN_PREFIX):
        return str(Path(output_dir) / path[len(RUN_PREFIX):])
    return path


def from_mapping(cls, mapping: dict):
    """``cls(**mapping)`` for a dataclass; an unknown or missing key is a one-line ConfigError naming it."""
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    for key in mapping:
        if key not in names:
            raise ConfigError(f"unknown key '{key}'{suggest(key, names) or ' (keys: ' + ', '.join(names) + ')'}")
    for f in fields:
        if f.name not in mapping and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing key '{f.name}' in {mapping}")
    return cls(**mapping)

# Stages whose folder holds a model, latest first (the stage table's): a run folder given as a model means its most
# trained model.
MODEL_STAGES = model_stages()
MODEL_FILES = ("config.json", "adapter_config.json")  # a model folder, or a peft adapter folder
GLOB_CHARS = set("*?[")
# What a local data file holds, by its suffix (before an optional compression suffix): the ``datasets`` builder.
FILE_TYPES = {".txt": "text", ".md": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}  # suffix -> fsspec compression
MAX_WARNINGS_PER_FILE = 5  # bad JSON lines logged one by one per file; the rest are only counted

logger = logging.getLogger("hf_pipeline")


def is_hub_id(ref: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(ref)
    except HFValidationError:
        return False
    return not ref.startswith((".", "/", "~"))


def resolve_model(ref: str) -> str:
    """A model reference -> a folder or a Hub id. A run folder resolves to its latest finished model stage."""
    path = Path(ref).expanduser()
    if path.is_dir():
        if any((path / f).is_file() for f in MODEL_FILES):
            return str(path)
        for stage in MODEL_STAGES:  # a stage folder holds a model (config.json) or a peft adapter (adapter_config.json)
            if is_complete(path / stage) and any((path / stage / f).is_file() for f in MODEL_FILES):
                return str(path / stage)
        raise ConfigError(f"{ref}: folder holds no model (no config.json, no finished {'/'.join(MODEL_STAGES)} stage)")
    if is_hub_id(ref) and not path.exists():
        return ref
    raise ConfigError(f"{ref}: no such model folder, and not a Hub id")


def resolve_tokenizer(ref: str) -> str:
    """A tokenizer reference -> a folder or a Hub id. A run folder resolves to its tokenizer stage."""
    path = Path(ref).expanduser()
    if path.is_dir():
        if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file():
            return str(path)
        if is_complete(path / "tokenizer"):
            return str(path / "tokenizer")
        raise ConfigError(f"{ref}: folder holds no tokenizer (no tokenizer.json)")
    if is_hub_id(ref) and not path.exists():
        return ref
    raise ConfigError(f"{ref}: no such tokenizer folder, and not a Hub id")


def local_files(ref: str) -> list[Path]:
    """The files a local path or glob names (empty if it names none)."""
    if GLOB_CHARS & set(ref):
        base = Path(ref).expanduser()
        anchor = Path(base.anchor) if base.is_absolute() else Path(".")
        pattern = str(base.relative_to(anchor)) if base.is_absolute() else ref
        return sorted(p for p in anchor.glob(pattern) if p.is_file())
    path = Path(ref).expanduser()
    return [path] if path.is_file() else []


def mirror_path(ref: str, mirror: str | None) -> Path | None:
    """The mirror folder of a Hub dataset id, if the mirror holds it."""
    if mirror and is_hub_id(ref):
        candidate = Path(mirror).expanduser() / ref
        if candidate.is_dir():
            return candidate
    return None


def check_dataset_ref(ref: str, mirror: str | None, what: str = "dataset") -> str:
    """Fail at start, with one line, on a dataset reference that cannot be found. Returns its kind."""
    if local_files(ref):
        return "files"
    if Path(ref).expanduser().is_dir():
        return "folder"
    if mirror_path(ref, mirror):
        return "mirror"
    if GLOB_CHARS & set(ref):
        raise ConfigError(f"{what}: '{ref}' matches no file")
    if not is_hub_id(ref) or Path(ref).suffix.lower() in {*FILE_TYPES, *COMPRESSIONS}:
        raise ConfigError(f"{what}: '{ref}' not found")
    from huggingface_hub import HfApi

    try:
        exists = HfApi().repo_exists(ref, repo_type="dataset")
    except Exception as e:  # offline, DNS failure, HTTP error: say which reference it was
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(
            f"{what}: '{ref}' is no local path, not in the mirror ({mirror or 'none set'}), and the Hub is "
            f"unreachable ({reason[:120]})"
        ) from None
    if not exists:
        raise ConfigError(f"{what}: unknown dataset '{ref}' (not local, not in mirror {mirror or '-'}, not on the Hub)")
    return "hub"


# ----------------------------------------------------------------------------------------------------------------
# Opening datasets


def file_type(path: Path) -> str | None:
    """The ``datasets`` builder of a data file (``text``, ``json``, ``parquet``, ``csv``), or None for another file."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes.pop()
    return FILE_TYPES.get(suffixes[-1]) if suffixes else None


def open_tables(source: Source | str, mirror: str | None, what: str = "dataset",
                stats: Counter | None = None) -> list[tuple[str, list[str], Iterable[dict]]]:
    """The rows of a source as ``[(label, columns, rows)]``: one table per local file (labelled with its path), or one
    for a dataset (labelled with the source's path; its rows are the ``datasets.Dataset``, iterated as dicts).

    JSON and JSON-lines files are read by a tolerant reader: a line that is no JSON object is skipped, counted in
    ``stats["bad_json_line"]`` and logged as ``file:line``; its columns are every key any row has. The other files go
    through their ``datasets`` builder.
    """
    source = _as_source(source)
    stats = stats if stats is not None else Counter()
    opened = _open(source, mirror, what)
    if not isinstance(opened, list):
        return [(source.path, list(opened.column_names), opened)]
    tables = []
    for path in opened:
        kind = _checked_file_type(path, what)
        if kind == "json":
            rows = _read_json_rows(path, what, stats)
            tables.append((str(path), list(dict.fromkeys(key for row in rows for key in row)), rows))
        else:
            ds = _load_files(kind, [path], source)
            tables.append((str(path), list(ds.column_names), ds))
    return tables


def open_dataset(source: Source | str, mirror: str | None, what: str = "dataset", stats: Counter | None = None,
                 *, cache_dir: str | None = None):
    """A source as one ``datasets.Dataset``; ``cache_dir`` is passed to ``datasets``.

    Local files go through their ``datasets`` builder together (Arrow-backed and cached: a big corpus is never held in
    memory; ``.txt``/``.md`` files cut by the source's ``sample_by``). A source mixing file types, or whose files have
    different columns, is a ConfigError: list them separately. JSON files the builder cannot parse (a broken line) are
    read again by the tolerant reader of ``open_tables``, the bad lines counted in ``stats["bad_json_line"]``.
    """
    source = _as_source(source)
    opened = _open(source, mirror, what, cache_dir)
    if not isinstance(opened, list):
        return opened
    kinds = {_checked_file_type(path, what) for path in opened}
    if len(kinds) > 1:
        raise ConfigError(f"{what}: '{source.path}' mixes file types {sorted(kinds)}; list them separately")
    return _files_dataset(kinds.pop(), opened, source, what, Counter() if stats is None else stats, cache_dir)


def _as_source(source: Source | str) -> Source:
    return source if isinstance(source, Source) else Source(path=str(source))


def _open(source: Source, mirror: str | None, what: str, cache_dir: str | None = None):
    """A source -> its local data files (a list of paths), or the ``datasets.Dataset`` of its split."""
    import datasets

    kind = check_dataset_ref(source.path, mirror, what=what)
    if kind == "files":
        return local_files(source.path)
    folder = Path(source.path).expanduser()
    if kind == "folder":
        if (folder / "dataset_info.json").is_file() or (folder / "dataset_dict.json").is_file():  # save_to_disk
            return _pick_split(datasets.load_from_disk(str(folder)), source, what)
        if not (folder / "README.md").is_file():  # a plain folder of files (a Hub-like one has a README: below)
            return _folder_files(folder, source, what)
    where = str(mirror_path(source.path, mirror) or source.path)  # a Hub id, its mirror folder, or a Hub-like folder
    # datasets caches a local folder with README configs under <folder name>/<config>/<hash of the README>: neither
    # the folder's location nor its files' content is in the key, so another copy or an edited file would silently
    # get the first copy's rows (and fail the split-size check against the first copy's recorded sizes). Rebuilding
    # a local folder's Arrow file is cheap (~0.1 s for GSM8K), so always do it, without that check.
    local = dict(download_mode="force_redownload", verification_mode="no_checks") if Path(where).is_dir() else {}
    return _pick_split(datasets.load_dataset(where, source.name, cache_dir=cache_dir, **local), source, what)


SPLIT_SLICE = re.compile(r"^(?P<name>[\w.-]+)\[(?P<start>-?\d*)(?P<start_pct>%?):(?P<stop>-?\d*)(?P<stop_pct>%?)\]$")


def _pick_split(splits, source: Source, what: str):
    """A DatasetDict's (or a ``{split: files}`` mapping's) split: the source's, else ``train``, else the only one.
    A split may be sliced as in ``datasets``: ``validation[:2000]``, ``validation[2000:]``, ``train[:10%]``."""
    import datasets

    if not isinstance(splits, (datasets.DatasetDict, dict)):
        return splits  # a Dataset: a single split
    if source.split is not None:
        sliced = SPLIT_SLICE.match(source.split)
        name = sliced["name"] if sliced else source.split
        if name not in splits:
            raise ConfigError(f"{what}: '{source.path}' has no split '{name}' (splits: {', '.join(splits)})")
        if not sliced:
            return splits[name]
        if not isinstance(splits[name], datasets.Dataset):
            raise ConfigError(f"{what}: '{source.path}': a split of files cannot be sliced ({source.split})")
        ds, bounds = splits[name], []
        for key in ("start", "stop"):
            value = sliced[key]
            if value and sliced[f"{key}_pct"]:
                value = int(len(ds) * int(value) / 100)
            bounds.append(int(value) if value != "" else None)
        return ds.select(range(len(ds))[slice(*bounds)])
    if "train" in splits or len(splits) == 1:
        return splits["train"] if "train" in splits else next(iter(splits.values()))
    raise ConfigError(f"{what}: '{source.path}' has splits {', '.join(splits)}: set split")


def _folder_files(folder: Path, source: Source, what: str) -> list[Path]:
    """The data files of a plain folder's split, found as ``load_dataset(folder)`` finds them."""
    from datasets.data_files import DataFilesDict, EmptyDatasetError, get_data_patterns

    try:
        found = DataFilesDict.from_patterns(get_data_patterns(str(folder)), base_path=str(folder))
    except EmptyDatasetError:
        found = {}
    splits = {str(split): [Path(f) for f in files if file_type(Path(f))] for split, files in found.items()}
    splits = {split: files for split, files in splits.items() if files}
    if not splits:
        raise ConfigError(f"{what}: folder '{source.path}' holds no data file ({', '.join(FILE_TYPES)})")
    return _pick_split(splits, source, what)


def _checked_file_type(path: Path, what: str) -> str:
    kind = file_type(path)
    if kind is None:
        raise ConfigError(f"{what}: {path}: unsupported file type (use {', '.join(FILE_TYPES)}, optionally "
                          f"{'/'.join(COMPRESSIONS)})")
    return kind


def _load_files(kind: str, files: list[Path], source: Source, cache_dir: str | None = None):
    import datasets

    kwargs = {"sample_by": source.sample_by} if kind == "text" else {}
    return datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train", cache_dir=cache_dir, **kwargs)


def _files_dataset(kind: str, files: list[Path], source: Source, what: str, stats: Counter, cache_dir: str | None):
    """Local files of one type as one Dataset; on a builder failure, say why in one line (or read JSON tolerantly)."""
    import datasets
    from datasets.exceptions import DatasetGenerationError

    try:
        return _load_files(kind, files, source, cache_dir)
    except DatasetGenerationError as e:
        reason = _root_reason(e)
    if kind == "json":
        tables = [_read_json_rows(path, what, stats) for path in files]
        columns = [list(dict.fromkeys(key for row in rows for key in row)) for rows in tables]
    else:
        columns = [_load_files(kind, [path], source, cache_dir).column_names for path in files]
    if len({frozenset(c) for c in columns}) > 1:
        found = "; ".join(f"{path.name}: {', '.join(c)}" for path, c in zip(files, columns))
        raise ConfigError(f"{what}: '{source.path}' has files with different columns ({found}); list them separately")
    if kind == "json":
        try:
            return datasets.Dataset.from_dict({c: [row.get(c) for rows in tables for row in rows] for c in columns[0]})
        except Exception as e:  # e.g. a column holding numbers in one row and text in another
            reason = _root_reason(e)
    raise ConfigError(f"{what}: '{source.path}' cannot be read ({reason})")


def _root_reason(error: BaseException) -> str:
    """The first line of the innermost cause of an error."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    return (str(error).splitlines() or [type(error).__name__])[0][:200]


def _read_json_rows(path: Path, what: str, stats: Counter) -> list[dict]:
    """Rows of a JSON array file or a JSON-lines file. A broken line is skipped, counted and logged as file:line."""
    import json

    import fsspec

    compression = COMPRESSIONS.get(path.suffix.lower())
    try:
        with fsspec.open(str(path), "rt", encoding="utf-8", compression=compression) as f:
            text = f.read()
    except ValueError as e:  # fsspec: "Compression type zstd not supported" without the zstandard package
        raise ConfigError(f"{what}: {path}: {e}") from None
    if text.lstrip().startswith("["):  # one JSON array: it parses as a whole or not at all
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{what}: {path}:{e.lineno}: invalid JSON array ({e.msg})") from None
        lines = [(i, row) for i, row in enumerate(data, 1)]
        where = "row"
    else:  # JSON lines (whatever the suffix)
        lines = []
        for lineno, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 may sit inside a string
            if not line.strip():
                continue
            try:
                lines.append((lineno, json.loads(line)))
            except json.JSONDecodeError as e:
                lines.append((lineno, e))
        where = "line"
    rows, bad = [], 0
    for lineno, row in lines:
        if isinstance(row, dict):
            rows.append(row)
            continue
        bad += 1
        stats["bad_json_line"] += 1
        if bad <= MAX_WARNINGS_PER_FILE:
            reason = row.msg if isinstance(row, json.JSONDecodeError) else f"a {type(row).__name__}, not an object"
            logger.warning("%s:%d: skipped %s (%s)", path, lineno, f"bad JSON {where}", reason)
    if bad > MAX_WARNINGS_PER_FILE:
        logger.warning("%s: %d bad JSON %ss skipped in all", path, bad, where)
    return rows
