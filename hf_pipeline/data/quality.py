"""Model-based document classifiers for the data stage: FineWeb-Edu's and DCLM's idea, as one datatrove filter step.

A rule filter asks "is this page broken?"; a quality classifier asks "is this page like the text we want?". DCLM and
Stanford CS336 train a fastText classifier on reference text (positive) against raw crawl (negative) and keep the
pages it scores high; FineWeb-Edu scores pages with a small transformer regressor. Both are here:

    hf-pipeline quality --config recipes/tiny.yaml --output_dir runs/tiny      ->  runs/tiny/quality/

**The quality stage** trains a fastText classifier (``fasttext.train_supervised``: fast, CPU, the format datatrove's
``FastTextClassifierFilter`` and DCLM use) from the recipe's sources:

    positive         text sources (files, globs, Hub ids: ``Source``s): e.g. Wikipedia articles, Gutenberg books
    positive_pages   web files (HTML/WARC): their main text (the data stage's extractor) is positive
    negative         text sources: e.g. raw crawl documents, forum text
    negative_pages   web files: their whole visible text (raw crawl) is negative
    boilerplate_pages  web files: their boilerplate, the page text the main-text extractor leaves out (menus,
                     footers, share buttons, cookie notices, link lists), is negative

Every source is cut into passages of ``min_words``..``max_words`` words (short rows are joined with the next ones),
at most ``max_passages_per_source`` per source, whitespace collapsed (what the filter scores too). Passages are held
out by group (a page, or a run of ``group_rows`` consecutive rows of a text source), so no held-out passage shares a
page with a training one; each split is balanced between the two labels by down-sampling the larger. The folder holds
``model.bin`` (loads in plain fastText: ``fasttext.load_model``), ``classifier.json`` (labels, threshold),
``metrics.json`` (held-out accuracy, precision, recall, F1 at the threshold, ROC AUC, per-source accuracy),
``samples.json`` (the held-out passages it scores highest and lowest) and ``config.yaml``; ``hf-pipeline push``
gives it a fastText model card.

**The filter step** (``ClassifierFilter``) scores each document with a classifier given by path or Hub id, writes the
score to ``metadata["<name>_score"]`` (published as the column ``<name>_score``) and keeps the document when the score
is at least ``min_score`` (quality), or drops it when the score is above ``max_score`` (a toxicity or NSFW model: the
same machinery). Either may be left out; with neither, documents are only scored. It runs after the rule filters,
before deduplication; the stage's stats count its drops (``dropped_<name>``). Models it loads:

    fastText       a ``.bin``/``.ftz`` file, a folder with one (this stage's folder: RUN/quality), or a Hub repo
                   holding one (``filename`` picks one of several): the score is the probability of ``label``
                   (DCLM's ``mlfoundations/fasttext-oh-eli5``: label ``hq``)
    transformers   a sequence-classification model folder or Hub repo (``config.json``): one output (a regressor,
                   FineWeb-Edu's ``HuggingFaceFW/fineweb-edu-classifier``: keep ``min_score: 2.5``, its int score 3)
                   is the score itself; several outputs give the probability of ``label`` (softmax, or a sigmoid
                   for a multi-label model such as a toxicity classifier)
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

from ..errors import ConfigError

logger = logging.getLogger("hf_pipeline")

CLASSIFIER_FILE = "classifier.json"  # written by the quality stage: {"kind", "labels", "positive_label", "threshold"}
FASTTEXT_SUFFIXES = (".bin", ".ftz")


def normalize(text: str) -> str:
    """What a fastText classifier reads: one line, whitespace collapsed (training and scoring alike)."""
    return " ".join(text.split())


# ----------------------------------------------------------------------------------------------------------------
# Loading a classifier by path or Hub id


def resolve_classifier(ref: str, filename: str | None = None, what: str = "classifier") -> Path:
    """A local file or folder for ``ref``: a path, or a Hub model repo (downloaded, or read from the local cache).
    One-line ConfigError when neither."""
    path = Path(ref).expanduser()
    if path.exists():
        if filename:
            if not (path / filename).is_file():
                raise ConfigError(f"{what}: '{filename}' not found in {path}")
            return path / filename
        return path
    if ref.startswith((".", "/", "~")) or ref.count("/") != 1:
        raise ConfigError(f"{what}: '{ref}' not found (a path, or a Hub id org/name)")
    from ..hub import pull

    try:
        folder = pull(ref, allow_patterns=[filename] if filename else None)
    except ConfigError as e:
        raise ConfigError(f"{what}: {str(e).split(' (a dataset?')[0]}") from None
    return folder / filename if filename else folder


def classifier_kind(path: Path, what: str = "classifier") -> tuple[str, Path]:
    """``("fasttext", model file)`` or ``("transformers", folder)`` for a resolved classifier path."""
    if path.is_file():
        if path.suffix not in FASTTEXT_SUFFIXES:
            raise ConfigError(f"{what}: {path} is not a fastText model (.bin or .ftz)")
        return "fasttext", path
    if (path / "config.json").is_file():
        return "transformers", path
    models = sorted(p for p in path.iterdir() if p.suffix in FASTTEXT_SUFFIXES)
    if (path / CLASSIFIER_FILE).is_file() and (path / "model.bin").is_file():
        return "fasttext", path / "model.bin"
    if len(models) == 1:
        return "fasttext", models[0]
    if not models:
        raise ConfigError(f"{what}: {path} holds neither a fastText model (.bin/.ftz) nor a transformers model "
                          f"(config.json)")
    raise ConfigError(f"{what}: {path} holds {len(models)} fastText models ({', '.join(p.name for p in models)}); "
                      f"name one with filename")


def default_label(path: Path) -> str | None:
    """The label to score when the recipe names none: the positive label of a classifier this stage trained."""
    for folder in (path, path.parent):
        info = folder / CLASSIFIER_FILE
        if info.is_file():
            return json.loads(info.read_text()).get("positive_label")
    return None


class Classifier:
    """One loaded classifier: ``score(texts) -> list[float]`` (the ``label`` probability, or a regressor's output)."""

    def __init__(self, kind: str, path: Path, label: str | None = None, max_length: int = 512):
        self.kind, self.path, self.label, self.max_length = kind, Path(path), label, max_length
        if kind == "fasttext":
            from fasttext.FastText import _FastText

            self.model = _FastText(str(self.path))
            self.labels = [x.removeprefix("__label__") for x in self.model.labels]
            if label not in self.labels:
                raise ConfigError(f"classifier {self.path}: label {label!r} is not one of its labels "
                                  f"({', '.join(self.labels)}); set label")
        else:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
            self.model = AutoModelForSequenceClassification.from_pretrained(self.path).eval()
            config = self.model.config
            self.labels = [config.id2label[i] for i in range(config.num_labels)]
            self.multi_label = config.problem_type == "multi_label_classification"
            if config.num_labels > 1 and label not in self.labels:
                raise ConfigError(f"classifier {self.path}: label {label!r} is not one of its labels "
                                  f"({', '.join(map(str, self.labels))}); set label")

    def score(self, texts: list[str]) -> list[float]:
        if self.kind == "fasttext":
            key = f"__label__{self.label}"
            scores = []
            for text in texts:
                labels, probs = self.model.predict(normalize(text), k=-1)
                scores.append(min(1.0, float(dict(zip(labels, probs)).get(key, 0.0))))
            return scores
        import torch

        batch = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
        with torch.inference_mode():
            logits = self.model(**batch).logits.float()
        if logits.shape[-1] == 1:
            return logits[:, 0].tolist()
        probs = logits.sigmoid() if self.multi_label else logits.softmax(-1)
        return probs[:, self.labels.index(self.label)].tolist()


def load_classifier(ref: str, label: str | None = None, filename: str | None = None, max_length: int = 512,
                    what: str = "classifier") -> Classifier:
    """A classifier by path or Hub id, ready to score (see the module docstring for the kinds)."""
    kind, path = classifier_kind(resolve_classifier(ref, filename, what), what)
    return Classifier(kind, path, label or default_label(path), max_length)


class ClassifierFilter(BaseFilter):
    """datatrove filter: the classifier's score in ``metadata[f"{score_name}_score"]``; documents below ``min_score``
    (``below_min_score``) or above ``max_score`` (``above_max_score``) are dropped. ``model`` is a resolved local
    path (the data stage resolves Hub ids before the tasks start); the model loads in each task, on first use."""

    name = "🤖 Classifier"

    def __init__(self, model: str, score_name: str, label: str | None = None, min_score: float | None = None,
                 max_score: float | None = None, max_length: int = 512, batch_size: int = 1,
                 exclusion_writer=None):
        self.name = f"🤖 {score_name} classifier"  # before the base class names its stats after it
        super().__init__(exclusion_writer, batch_size=batch_size)
        self.model_path, self.score_name, self.label = str(model), score_name, label
        self.min_score, self.max_score, self.max_length = min_score, max_score, max_length
        self._classifier = None

    @property
    def classifier(self) -> Classifier:
        if self._classifier is None:
            self._classifier = load_classifier(self.model_path, self.label, max_length=self.max_length)
        return self._classifier

    def decide(self, doc: Document, score: float) -> bool | tuple[bool, str]:
        doc.metadata[f"{self.score_name}_score"] = score
        if self.min_score is not None and score < self.min_score:
            return False, "below_min_score"
        if self.max_score is not None and score > self.max_score:
            return False, "above_max_score"
        return True

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return self.decide(doc, self.classifier.score([doc.text])[0])

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        scores = self.classifier.score([doc.text for doc in batch])
        return [self.decide(doc, score) for doc, score in zip(batch, scores)]


# ----------------------------------------------------------------------------------------------------------------
# The quality stage: training data, training, held-out measures


@dataclass
class Passage:
    text: str
    label: str
    source: str  # the source's path, as the recipe names it
    group: str  # what is held out together (a page; a run of rows)


def passages(rows, min_words: int, max_words: int):
    """Rows of text -> ``(row index, passage)``: rows longer than ``max_words`` cut, shorter than ``min_words``
    joined with the rows after them (a passage is tagged with the row it ends in)."""
    buffer: list[str] = []
    for i, text in enumerate(rows):
        buffer.extend(text.split())
        while len(buffer) >= max_words:
            yield i, " ".join(buffer[:max_words])
            buffer = buffer[max_words:]
        if len(buffer) >= min_words:
            yield i, " ".join(buffer)
            buffer = []


def page_texts(inputs: list[str], url_map: str | None, part: str):
    """``(file#id, text)`` per web page of ``inputs``: its main text (``part="main"``), its whole visible text
    (``"page"``) or its boilerplate, the lines of the whole text that the main text does not hold
    (``"boilerplate"``)."""
    from .extract import MainTextExtractor
    from .readers import WebReader, input_files, load_url_map

    root, files = input_files(inputs)
    reader = WebReader(root, url_by_file=load_url_map(url_map))
    main = MainTextExtractor()
    whole = MainTextExtractor(use_container=False, skip_selectors=(), main_content=False)
    from tqdm.auto import tqdm

    for name in tqdm(files, desc=f"quality: {part} text of {inputs[0]}", unit="file", leave=False):
        for doc in reader.read_file(name):
            text = whole.extract(doc.text) if part == "page" else main.extract(doc.text)
            if part == "boilerplate":
                kept = {line.strip() for line in text.splitlines()}
                lines = (line.strip() for line in whole.extract(doc.text).splitlines())
                text = "\n".join(line for line in lines if line and line not in kept)
            if text.strip():
                yield f"{name}#{doc.id}", text


def collect_passages(config) -> list[Passage]:
    """Every source's passages, at most ``max_passages_per_source`` each (a seeded sample)."""
    from ..corpus import load_source

    rng = random.Random(config.seed)
    out: list[Passage] = []

    def add(found: list[Passage], source: str):
        if len(found) > config.max_passages_per_source:
            found = rng.sample(found, config.max_passages_per_source)
        logger.info("quality: %-60s %5d %s passages", source, len(found), found[0].label if found else "")
        if not found:
            raise ConfigError(f"quality: {source}: no passage of {config.min_words}+ words")
        out.extend(found)

    for side, label in (("positive", config.positive_label), ("negative", config.negative_label)):
        for source in getattr(config, side):
            rows = load_source(source, config.mirror)["text"]
            add([Passage(text, label, source.path, f"{source.path}#{i // config.group_rows}")
                 for i, text in passages(rows, config.min_words, config.max_words)], source.path)
        for pages_field, part in config.PAGE_FIELDS[side]:
            for pages in getattr(config, pages_field):
                name = f"{pages} ({part})"
                found = [Passage(text, label, name, page)
                         for page, page_text in page_texts([pages], config.url_map, part)
                         for _, text in passages([page_text], config.min_words, config.max_words)]
                add(found, name)
    return out


def split_and_balance(items: list[Passage], heldout_fraction: float, seed: int):
    """Held-out groups (``heldout_fraction`` of each source's groups), then each split balanced by label."""
    rng = random.Random(seed)
    groups_by_source: dict[str, list[str]] = {}
    for p in items:
        groups = groups_by_source.setdefault(p.source, [])
        if not groups or groups[-1] != p.group:
            groups.append(p.group)
    held = set()
    for groups in groups_by_source.values():
        groups = sorted(set(groups))
        rng.shuffle(groups)
        held.update(groups[:max(1, round(len(groups) * heldout_fraction))] if len(groups) > 1 else [])
    splits = {"train": [p for p in items if p.group not in held], "heldout": [p for p in items if p.group in held]}
    for name, split in splits.items():
        by_label: dict[str, list[Passage]] = {}
        for p in split:
            by_label.setdefault(p.label, []).append(p)
        n = min(len(v) for v in by_label.values()) if len(by_label) == 2 else 0
        if n == 0:
            raise ConfigError(f"quality: the {name} split has passages of one label only; add sources")
        balanced = [p for v in by_label.values() for p in rng.sample(v, n)]
        rng.shuffle(balanced)
        splits[name] = balanced
    return splits["train"], splits["heldout"]


def roc_auc(scores: list[float], positive: list[bool]) -> float:
    """Area under the ROC curve: the chance a positive passage scores above a negative one (ties half)."""
    pairs = sorted(zip(scores, positive))
    n_pos = sum(positive)
    n_neg = len(positive) - n_pos
    if not n_pos or not n_neg:
        return float("nan")
    rank_sum, i = 0.0, 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        rank_sum += (i + j + 1) / 2 * sum(1 for _, is_pos in pairs[i:j] if is_pos)  # average rank of the ties
        i = j
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def heldout_measures(scores: list[float], items: list[Passage], positive_label: str, threshold: float) -> dict:
    """Accuracy, precision, recall and F1 of the positive label at ``threshold``, ROC AUC, per-source accuracy."""
    truth = [p.label == positive_label for p in items]
    said = [s >= threshold for s in scores]
    tp = sum(t and s for t, s in zip(truth, said))
    fp = sum(s and not t for t, s in zip(truth, said))
    fn = sum(t and not s for t, s in zip(truth, said))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    per_source: dict[str, list[int]] = {}
    for p, t, s in zip(items, truth, said):
        per_source.setdefault(p.source, []).append(int(t == s))
    return {
        "heldout_accuracy": sum(t == s for t, s in zip(truth, said)) / len(items),
        "heldout_precision": precision, "heldout_recall": recall,
        "heldout_f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "heldout_roc_auc": roc_auc(scores, truth),
        "heldout_accuracy_by_source": {k: sum(v) / len(v) for k, v in sorted(per_source.items())},
    }


def train(config, train_items: list[Passage], work: Path):
    """``fasttext.train_supervised`` on the training passages (one thread: the same seed gives the same model)."""
    import fasttext

    path = work / "train.txt"
    with path.open("w", encoding="utf-8") as f:
        for p in train_items:
            f.write(f"__label__{p.label} {p.text}\n")
    lr = config.learning_rate
    for attempt in range(4):  # fastText stops on a NaN (diverged weights): the documented cure is a lower rate
        try:
            model = fasttext.train_supervised(
                str(path), epoch=config.epoch, lr=lr, wordNgrams=config.word_ngrams, dim=config.dim,
                minCount=config.min_count, bucket=config.bucket, thread=1, seed=config.seed, verbose=0)
            break
        except RuntimeError as e:
            if "NaN" not in str(e) or attempt == 3:
                raise
            logger.warning("quality: fastText diverged at learning rate %g (NaN); training again at %g", lr, lr / 2)
            lr /= 2
    path.unlink()
    return model, lr


def run(config) -> Path:
    """Train the quality classifier of ``config`` and write RUN/quality/."""
    from ..artifacts import begin_stage, finish_stage, is_complete, write_json
    from ..config import save_config

    final = config.stage_dir()
    if is_complete(final) and not config.overwrite:
        logger.info("quality: %s is complete, skipping (overwrite: true to redo it)", final)
        return final
    start = time.time()
    items = collect_passages(config)
    train_items, heldout_items = split_and_balance(items, config.heldout_fraction, config.seed)
    work = begin_stage(final)
    started = time.perf_counter()
    model, learning_rate = train(config, train_items, work)
    train_s = time.perf_counter() - started
    model.save_model(str(work / "model.bin"))
    classifier = Classifier("fasttext", work / "model.bin", config.positive_label)
    started = time.perf_counter()
    scores = classifier.score([p.text for p in heldout_items])
    per_s = len(heldout_items) / max(time.perf_counter() - started, 1e-9)
    metrics = {
        **heldout_measures(scores, heldout_items, config.positive_label, config.threshold),
        "passages": len(items), "train_passages": len(train_items), "heldout_passages": len(heldout_items),
        "vocabulary": len(model.words), "threshold": config.threshold, "train_s": round(train_s, 2),
        "learning_rate_used": learning_rate,
        "passages_per_s": round(per_s), "wall_time_s": round(time.time() - start, 2),
    }
    ranked = sorted(zip(scores, heldout_items), key=lambda x: -x[0])
    sample = [{"score": round(s, 4), "label": p.label, "source": p.source, "passage": p.text[:400]}
              for s, p in ranked[:5] + ranked[-5:]]
    write_json(work / "samples.json", {"highest_and_lowest": sample})
    write_json(work / CLASSIFIER_FILE, {"kind": "fasttext", "labels": classifier.labels,
                                        "positive_label": config.positive_label, "threshold": config.threshold,
                                        "text": "whitespace collapsed to single spaces, one line"})
    write_json(work / "metrics.json", metrics)
    save_config(config, work / "config.yaml")
    finish_stage(work, final)
    logger.info("quality: %d passages (%d train, %d held out): held-out accuracy %.3f, precision %.3f, recall "
                "%.3f, ROC AUC %.3f (%s >= %g) -> %s", len(items), len(train_items), len(heldout_items),
                metrics["heldout_accuracy"], metrics["heldout_precision"], metrics["heldout_recall"],
                metrics["heldout_roc_auc"], config.positive_label, config.threshold, final)
    return final
