"""Text corpora for the tokenizer and pretraining: a weighted mixture of sources, with a held-out split.

Every source becomes a ``datasets.Dataset`` with one ``text`` column (opened by ``refs.open_dataset``: ``.txt`` files
through the ``text`` builder, ``.json[l]``/``.parquet``/``.csv`` through theirs, dataset folders and Hub ids through
``load_dataset``). Documents are held out per source *before* a source is repeated by its weight, so no held-out
document is ever trained on. ``tokenize_and_pack`` turns documents into the fixed token windows a causal LM trains
and is measured on (pretraining, bits per byte).
"""

from __future__ import annotations

import logging

from .config import ConfigError, Source
from .refs import open_dataset

logger = logging.getLogger("hf_pipeline")


def load_source(source: Source, mirror: str | None = None):
    """Load one source as a Dataset with a single ``text`` column, empty documents removed."""
    ds = open_dataset(source, mirror, what="corpus")
    if source.text_column not in ds.column_names:
        raise ConfigError(
            f"corpus: '{source.path}' has no column '{source.text_column}' (columns: {', '.join(ds.column_names)}); "
            f"set text_column"
        )
    ds = ds.select_columns([source.text_column])
    if source.text_column != "text":
        ds = ds.rename_column(source.text_column, "text")
    return ds.filter(lambda batch: [bool(t and t.strip()) for t in batch["text"]], batched=True)


def load_corpus(sources: list[Source], mirror: str | None, heldout_fraction: float, seed: int):
    """Load, split and mix sources. Returns ``(train, heldout)`` Datasets with a ``text`` column."""
    import datasets

    if not sources:
        raise ConfigError("corpus: no sources given")
    if not 0 <= heldout_fraction < 1:
        raise ConfigError(f"heldout_fraction: must be in [0, 1), not {heldout_fraction}")
    trains, heldouts = [], []
    for source in sources:
        ds = load_source(source, mirror)
        n_held = int(len(ds) * heldout_fraction) if source.heldout else 0
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


def tokenize_and_pack(ds, tokenizer, seq_len: int, num_proc: int = 1, desc: str = "train"):
    """Documents -> token windows of exactly ``seq_len`` tokens, each document followed by end-of-text.

    Protocol tokens written literally in a document (``<|im_start|>`` in a web page) stay plain text
    (``split_special_tokens``): only the pipeline itself ever emits a special token.
    """
    eos = tokenizer.eos_token_id

    def tokenize(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False, split_special_tokens=True, verbose=False)["input_ids"]
        return {"input_ids": [x + [eos] for x in ids]}

    def pack(batch):
        stream = [t for ids in batch["input_ids"] for t in ids]
        n = len(stream) // seq_len * seq_len  # the tail of each batch of documents is dropped
        return {"input_ids": [stream[i : i + seq_len] for i in range(0, n, seq_len)]}

    num_proc = num_proc if len(ds) >= 1000 * num_proc else None
    tokens = ds.map(tokenize, batched=True, remove_columns=ds.column_names, num_proc=num_proc, desc=f"tokenize {desc}")
    return tokens.map(pack, batched=True, batch_size=1000, num_proc=num_proc, desc=f"pack {desc}")
