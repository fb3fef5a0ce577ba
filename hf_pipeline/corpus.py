"""Text corpora for the tokenizer and pretraining: a weighted mixture of sources, with a held-out split.

Every source becomes a ``datasets.Dataset`` with one ``text`` column (``.txt`` files through the ``text`` builder,
``.json[l]``/``.parquet``/``.csv`` through theirs, dataset folders and Hub ids through ``load_dataset``). Documents
are held out per source *before* a source is repeated by its weight, so no held-out document is ever trained on.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .config import ConfigError, TextSource
from .refs import check_dataset_ref, local_files, mirror_path

logger = logging.getLogger("hf_pipeline")

BUILDERS = {".txt": "text", ".md": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def _builder_for(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s not in (".gz", ".bz2", ".xz", ".zst")]
    builder = BUILDERS.get(suffixes[-1] if suffixes else "")
    if builder is None:
        raise ConfigError(f"{path}: unsupported file type (use {', '.join(sorted(BUILDERS))}, optionally .gz)")
    return builder


def load_source(source: TextSource, mirror: str | None = None):
    """Load one source as a Dataset with a single ``text`` column, empty documents removed."""
    import datasets

    kind = check_dataset_ref(source.path, mirror, what="corpus")
    if kind == "files":
        files = local_files(source.path)
        builders = {_builder_for(f) for f in files}
        if len(builders) > 1:
            raise ConfigError(f"corpus: '{source.path}' mixes file types {sorted(builders)}; list them separately")
        builder = builders.pop()
        kwargs = {"sample_by": source.sample_by} if builder == "text" else {}
        ds = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train", **kwargs)
    elif kind == "folder" and _is_saved_dataset(Path(source.path)):
        ds = datasets.load_from_disk(source.path)
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[source.split]
    else:
        where = str(mirror_path(source.path, mirror) or source.path)
        ds = datasets.load_dataset(where, source.name, split=source.split)
    if source.text_column not in ds.column_names:
        raise ConfigError(
            f"corpus: '{source.path}' has no column '{source.text_column}' (columns: {', '.join(ds.column_names)}); "
            f"set text_column"
        )
    ds = ds.select_columns([source.text_column])
    if source.text_column != "text":
        ds = ds.rename_column(source.text_column, "text")
    return ds.filter(lambda batch: [bool(t and t.strip()) for t in batch["text"]], batched=True)


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()


def load_corpus(sources: list[TextSource], mirror: str | None, heldout_fraction: float, seed: int):
    """Load, split and mix sources. Returns ``(train, heldout)`` Datasets with a ``text`` column."""
    import datasets

    if not sources:
        raise ConfigError("corpus: no sources given")
    if not 0 <= heldout_fraction < 1:
        raise ConfigError(f"heldout_fraction: must be in [0, 1), not {heldout_fraction}")
    trains, heldouts = [], []
    for source in sources:
        ds = load_source(source, mirror)
        n_held = int(len(ds) * heldout_fraction)
        if n_held > 0:
            split = ds.train_test_split(test_size=n_held, seed=seed, shuffle=True)
            train, held = split["train"], split["test"]
            heldouts.append(held)
        else:
            train = ds
        mixed = _repeat(train, source.weight, seed)
        logger.info(
            "corpus %s: %d documents -> %d train (weight %g), %d held out",
            source.path, len(ds), len(mixed), source.weight, n_held,
        )
        trains.append(mixed)
    train = datasets.concatenate_datasets(trains).shuffle(seed=seed).flatten_indices()
    heldout = datasets.concatenate_datasets(heldouts) if heldouts else train.select([])
    return train, heldout


def _repeat(ds, weight: float, seed: int):
    """``weight`` passes over ``ds``: whole copies, plus a random part for the fraction."""
    import datasets

    whole, frac = int(weight), weight - int(weight)
    parts = [ds] * whole
    if frac > 0:
        parts.append(ds.shuffle(seed=seed).select(range(int(round(len(ds) * frac)))))
    return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def count_chars(ds) -> int:
    return sum(len(t) for t in ds["text"])  # noqa
