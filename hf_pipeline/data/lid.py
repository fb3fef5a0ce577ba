"""Language identification that works offline: datatrove's ``LanguageFilter`` with a bundled fastText model.

datatrove's ``LanguageFilter`` downloads ``lid.176.bin`` (126 MB) at run time. The same model, compressed
(``lid.176.ftz``, 917 kB, fastText's release under CC BY-SA 3.0, see ``resources/NOTICE.md``), ships in this package,
so it needs no network. The filter keeps a document when its score for one of the configured languages is above
``language_threshold`` (FineWeb: English, 0.65) and stores ``language`` and ``language_score`` in its metadata.
"""

from __future__ import annotations

from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.utils.lid import FastTextLID


def bundled_model_path() -> Path:
    """The fastText language-ID model shipped in this package (176 languages)."""
    path = Path(__file__).parent / "resources" / "lid.176.ftz"
    if not path.is_file():  # pragma: no cover - a broken install
        raise FileNotFoundError(f"{path}: the bundled lid.176.ftz is missing; reinstall hf-pipeline")
    return path


class BundledFastTextLID(FastTextLID):
    """datatrove's fastText LID, loading the bundled ``lid.176.ftz`` instead of downloading ``lid.176.bin``."""

    @property
    def model(self):
        if self._model is None:
            from fasttext.FastText import _FastText

            self._model = _FastText(str(bundled_model_path()))
        return self._model

    def predict(self, doc: Document) -> tuple[tuple[str, float], dict[str, float]]:
        """``((best_language, score), {language: score})``, as datatrove's LID classes return."""
        langs, scores = self.model.predict(doc.text.replace("\n", " "), k=self.k)
        pairs = {lang.split("__")[2]: float(score) for lang, score in zip(langs, scores)}
        best = max(pairs.items(), key=lambda x: x[1]) if pairs else ("unknown", 0.0)
        return best, ({lang: pairs.get(lang, 0.0) for lang in self.languages} if self.languages else pairs)


class OfflineLanguageFilter(BaseFilter):
    """datatrove's ``LanguageFilter`` decision and metadata, backed by the bundled model: no download at run time.

    (It re-states the filter rather than subclassing it: ``LanguageFilter``'s model downloads its file.)
    """

    name = "🌍 Language ID (bundled fastText)"
    _requires_dependencies = [("fasttext", "fasttext-numpy2-wheel")]

    def __init__(self, languages=("en",), language_threshold: float = 0.65, exclusion_writer=None,
                 label_only: bool = False):
        super().__init__(exclusion_writer)
        self.languages = list(languages) if languages else None
        self.language_threshold = language_threshold
        self.label_only = label_only
        self.model = BundledFastTextLID(self.languages)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        (lang, score), wanted = self.model.predict(doc)
        doc.metadata["language"] = lang
        doc.metadata["language_score"] = score
        if self.label_only:
            return True
        if self.languages:
            keep = any(s > self.language_threshold for s in wanted.values())
        else:
            keep = score > self.language_threshold
        return True if keep else (False, "language")
