"""The search tool: an embedded full-text index the model queries mid-generation, and the ``index`` stage that builds it.

    hf-pipeline index --config recipes/tiny.yaml          # RUN/index/index.sqlite from the recipe's `index.sources`
    index = SearchIndex.open("runs/tiny/index")          # a stage folder or the .sqlite file
    index.search("Where was Hushai Reifoum born?", k=2)  # [Passage(text=..., source=..., score=...), ...]
    tool = SearchTool(index, k=1, max_chars=300)        # calling it returns the text the model reads

**Index** (``build_index``): every source (anything ``corpus.load_source`` opens: text files, JSON lines, parquet,
``RUN/data``, ``{path: RUN/facts, split: passages}``, ``{path: rajpurkar/squad, split: validation, text_column:
context}``, Wikipedia dumps) is cut into passages of at most ``passage_words`` words (paragraph boundaries first),
exact duplicates dropped, and written to an SQLite FTS5 table (``porter unicode61`` tokenizer: lower case,
English stemming). SQLite ships with Python: nothing to install or start, one file to copy.

**Query**: the words of the query, each quoted, joined with OR, ranked by FTS5's ``bm25()``; stop words need no
special care (BM25 gives them almost no weight). The top ``k`` passages come back, each cut to ``max_chars``.

**Other backends**: a class with ``search(query: str, k: int) -> list[Passage]`` is a backend (``SearchBackend``),
and ``SearchTool`` takes any backend. For a corpus that outgrows one machine, point one at a search server, e.g.
Elasticsearch/OpenSearch::

    class OpenSearchBackend:
        def __init__(self, client, index): self.client, self.index = client, index
        def search(self, query, k):
            hits = self.client.search(index=self.index, body={"query": {"match": {"text": query}}, "size": k})
            return [Passage(h["_source"]["text"], h["_source"].get("source", ""), h["_score"])
                    for h in hits["hits"]["hits"]]

Never index the questions you evaluate on (only the documents that answer them).
"""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Protocol

from ..config import ConfigError

logger = logging.getLogger("hf_pipeline")

INDEX_FILE = "index.sqlite"


@dataclass
class Passage:
    text: str
    source: str = ""
    score: float = 0.0


class SearchBackend(Protocol):
    """Anything that returns the ``k`` best passages for a query."""

    def search(self, query: str, k: int) -> list[Passage]: ...


def passages(text: str, max_words: int) -> Iterator[str]:
    """Cut a document into passages of at most ``max_words`` words, keeping paragraphs whole where they fit."""
    chunk: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        words = paragraph.split()
        if chunk and len(chunk) + len(words) > max_words:
            yield " ".join(chunk)
            chunk = []
        while len(words) > max_words:
            yield " ".join(words[:max_words])
            words = words[max_words:]
        chunk += words
    if chunk:
        yield " ".join(chunk)


class SearchIndex:
    """An SQLite FTS5 index of passages (the default backend)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"search index: {self.path} does not exist (build it with hf-pipeline index)")
        self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        try:
            self.size = self._db.execute("SELECT count(*) FROM passages").fetchone()[0]
        except sqlite3.DatabaseError as e:
            raise ConfigError(f"search index: {self.path} is not an index ({e})") from None

    @classmethod
    def open(cls, ref: str | Path) -> "SearchIndex":
        """A stage folder (``RUN/index``), a run folder or the ``.sqlite`` file itself."""
        path = Path(ref)
        for candidate in (path, path / INDEX_FILE, path / "index" / INDEX_FILE):
            if candidate.is_file():
                return cls(candidate)
        raise ConfigError(f"search index: no {INDEX_FILE} at {ref} (build it with hf-pipeline index)")

    def search(self, query: str, k: int = 3) -> list[Passage]:
        terms = re.findall(r"\w+", query.lower())
        if not terms:
            return []
        match = " OR ".join(f'"{t}"' for t in dict.fromkeys(terms))
        rows = self._db.execute(
            "SELECT text, source, bm25(passages) AS score FROM passages WHERE passages MATCH ? "
            "ORDER BY score LIMIT ?", (match, k)).fetchall()
        return [Passage(text, source, -score) for text, source, score in rows]


def build_index(texts: Iterable[tuple[str, str]], path: str | Path, passage_words: int = 120) -> dict:
    """Write an FTS5 index of ``(source, text)`` documents to ``path``; returns the counts."""
    path = Path(path)
    path.unlink(missing_ok=True)
    db = sqlite3.connect(path)
    db.execute("CREATE VIRTUAL TABLE passages USING fts5(text, source UNINDEXED, tokenize='porter unicode61')")
    seen: set[bytes] = set()
    counts = {"documents": 0, "passages": 0, "duplicate_passages": 0}
    batch = []
    for source, text in texts:
        counts["documents"] += 1
        for passage in passages(text, passage_words):
            key = hashlib.blake2b(passage.encode(), digest_size=16).digest()
            if key in seen:
                counts["duplicate_passages"] += 1
                continue
            seen.add(key)
            batch.append((passage, source))
            if len(batch) >= 10_000:
                db.executemany("INSERT INTO passages (text, source) VALUES (?, ?)", batch)
                counts["passages"] += len(batch)
                batch = []
    db.executemany("INSERT INTO passages (text, source) VALUES (?, ?)", batch)
    counts["passages"] += len(batch)
    db.execute("INSERT INTO passages(passages) VALUES ('optimize')")
    db.commit()
    db.close()
    return counts


class SearchTool:
    """The tool the model calls: the top ``k`` passages for its query, each cut to ``max_chars``, one per line."""

    def __init__(self, backend: SearchBackend, k: int = 1, max_chars: int = 300):
        if k < 1 or max_chars < 1:
            raise ConfigError(f"search tool: k and max_chars must be >= 1, not {k} and {max_chars}")
        self.backend, self.k, self.max_chars = backend, k, max_chars

    def __call__(self, query: str) -> str:
        if not query.strip():
            return "error: empty query"
        hits = self.backend.search(query.strip(), self.k)
        if not hits:
            return "no results"
        return "\n".join(hit.text if len(hit.text) <= self.max_chars else hit.text[:self.max_chars] + "..."
                         for hit in hits)


def run(config) -> Path:
    """The ``index`` stage: RUN/index/index.sqlite (+ metrics.json, config.yaml) from ``config.sources``."""
    from ..artifacts import begin_stage, finish_stage, is_complete, write_json
    from ..config import save_config
    from ..corpus import load_source

    final = config.stage_dir()
    if is_complete(final) and not config.overwrite:
        logger.info("index: %s is complete, skipping (overwrite: true to redo it)", final)
        return final
    if not config.sources:
        raise ConfigError("index.sources: name at least one text source")
    start = time.time()
    loaded = [(source.path, load_source(source, config.mirror)) for source in config.sources]
    work = begin_stage(final)

    def texts():
        from tqdm.auto import tqdm

        for name, ds in loaded:
            for row in tqdm(ds, desc=f"index {Path(name).name}", unit="doc", leave=False):
                yield name, row["text"]

    counts = build_index(texts(), work / INDEX_FILE, config.passage_words)
    per_source = {f"documents_{Path(name).name}": len(ds) for name, ds in loaded}
    write_json(work / "metrics.json", {**counts, **per_source, "passage_words": config.passage_words,
                                       "index_bytes": (work / INDEX_FILE).stat().st_size,
                                       "wall_time_s": round(time.time() - start, 2)})
    save_config(config, work / "config.yaml")
    finish_stage(work, final)
    logger.info("index: read %d documents from %d sources -> %d passages (%d duplicates dropped) -> %s",
                counts["documents"], len(loaded), counts["passages"], counts["duplicate_passages"], final)
    return final
