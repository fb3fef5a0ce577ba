"""Offline language ID: the bundled fastText model, FineWeb's keep-English rule, on real labelled sentences."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from datatrove.data import Document

from conftest import ROOT, SHARED_DATA
from hf_pipeline.data.lid import OfflineLanguageFilter, bundled_model_path

SENTENCES = SHARED_DATA / "langid" / "sentences"


def lines(lang: str, n: int = 200) -> list[str]:
    return [s for s in (SENTENCES / f"{lang}.txt").read_text(encoding="utf-8").splitlines() if s.strip()][:n]


def test_model_ships_inside_the_package():
    import hf_pipeline

    path = bundled_model_path()
    assert path.suffix == ".ftz" and path.is_relative_to(Path(hf_pipeline.__file__).parent)
    assert path.stat().st_size > 500_000


def test_keeps_english_and_drops_other_languages_with_reason_and_metadata():
    lid = OfflineLanguageFilter(["en"], 0.65)
    english = [Document(text=t, id=str(i)) for i, t in enumerate(lines("en"))]
    assert sum(lid.filter(d) is True for d in english) / len(english) >= 0.93
    assert all(d.metadata["language"] and 0 <= d.metadata["language_score"] <= 1 for d in english)
    for lang in ("fr", "de", "zh", "ru", "nl"):
        docs = [Document(text=t, id=str(i)) for i, t in enumerate(lines(lang))]
        results = [lid.filter(d) for d in docs]
        assert sum(r == (False, "language") for r in results) / len(docs) >= 0.97, lang
        assert sum(d.metadata["language"] == lang for d in docs) / len(docs) >= 0.9, lang


def test_threshold_and_label_only():
    text = "Hello"  # short and ambiguous: a low English score
    assert OfflineLanguageFilter(["en"], 0.99).filter(Document(text=text, id="0")) == (False, "language")
    doc = Document(text="Dies ist ein deutscher Satz über das Wetter.", id="1")
    assert OfflineLanguageFilter(["en"], label_only=True).filter(doc) is True and doc.metadata["language"] == "de"
    assert OfflineLanguageFilter(["de"], 0.65).filter(Document(text=doc.text, id="2")) is True


def test_benchmark_prints_accuracy_line(tmp_path):
    for lang in ("en", "fr", "ja"):
        (tmp_path / f"{lang}.txt").write_text("\n".join(lines(lang, 40)), encoding="utf-8")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "langid.py"), "--sentences", str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout.strip().splitlines()
    fields = dict(kv.split("=") for kv in out[-1].split()[1:])
    assert out[-1].startswith("langid accuracy=")
    assert float(fields["accuracy"]) >= 0.9 and float(fields["en_recall"]) >= 0.85
    assert "120 sentences" in out[0]
