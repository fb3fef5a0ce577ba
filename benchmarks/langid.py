"""Language filter: accuracy of the keep-English decision on labelled sentences in 75 languages.

    python benchmarks/langid.py --sentences ../shared/data/langid/sentences [--threshold 0.65]

Each ``<iso639-1>.txt`` holds one sentence per line in that language. The filter (hf_pipeline.data.lid, the bundled
fastText lid.176.ftz with FineWeb's rule: keep when the English score is > threshold) should keep the English lines
and drop the rest. Prints English recall, non-English rejection, overall accuracy, the languages most often
mistaken for English, and last: ``langid accuracy=<a> en_recall=<r> non_en_rejection=<s> sentences_per_s=<n>``.
Sentences are short (one line), which is harder than web pages: documents give the model more to go on.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datatrove.data import Document  # noqa: E402

from hf_pipeline.data.lid import OfflineLanguageFilter  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sentences", required=True, help="folder of <lang>.txt files, one sentence per line")
    p.add_argument("--language", default="en")
    p.add_argument("--threshold", type=float, default=0.65)
    args = p.parse_args()
    lid = OfflineLanguageFilter([args.language], args.threshold)
    kept_by_lang, total_by_lang = {}, {}
    n, start = 0, time.perf_counter()
    for path in sorted(Path(args.sentences).glob("*.txt")):
        lang = path.stem
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            keep = lid.filter(Document(text=line, id=str(n))) is True
            kept_by_lang[lang] = kept_by_lang.get(lang, 0) + keep
            total_by_lang[lang] = total_by_lang.get(lang, 0) + 1
            n += 1
    elapsed = time.perf_counter() - start
    ours = args.language
    en_total, en_kept = total_by_lang.get(ours, 0), kept_by_lang.get(ours, 0)
    other_total = sum(v for k, v in total_by_lang.items() if k != ours)
    other_kept = sum(v for k, v in kept_by_lang.items() if k != ours)
    recall = en_kept / max(en_total, 1)
    rejection = 1 - other_kept / max(other_total, 1)
    accuracy = (en_kept + other_total - other_kept) / max(n, 1)
    print(f"{len(total_by_lang)} languages, {n} sentences; keep when P({ours}) > {args.threshold}")
    print(f"{ours}: kept {en_kept}/{en_total} ({recall:.3f}); other languages: kept {other_kept}/{other_total}")
    worst = sorted(((kept_by_lang[k] / total_by_lang[k], k) for k in total_by_lang if k != ours), reverse=True)[:5]
    print("most often kept as English: " + ", ".join(f"{k} {r:.3f}" for r, k in worst))
    print(f"langid accuracy={accuracy:.4f} en_recall={recall:.4f} non_en_rejection={rejection:.4f} "
          f"sentences_per_s={n / elapsed:.0f}")


if __name__ == "__main__":
    main()
