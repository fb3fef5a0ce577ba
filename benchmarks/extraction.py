"""HTML -> text extraction: our default extractor beside trafilatura and resiliparse on real article pages.

    python benchmarks/extraction.py --benchmark ../shared/data/web/article_extraction [--limit N]

DIR is a copy of scrapinghub/article-extraction-benchmark (https://github.com/scrapinghub/article-extraction-benchmark):
``html/<id>.html.gz`` pages and ``ground-truth.json`` (``{id: {"articleBody": ..., "url": ...}}``). Pages are read
as that repository's ``extractors/run_*.py`` read them (gzip, UTF-8) before any timing; only the extraction calls
are timed (``time.perf_counter`` around each call, one pass, in this process, no sandbox).

Extractors, each on every page:

* ``ours``: ``hf_pipeline.data.extract.MainTextExtractor()`` (defaults), the ``extract`` method its datatrove step runs;
* ``trafilatura``: datatrove's ``Trafilatura`` step's ``extract`` (``trafilatura.extract(html,
  favor_precision=True, include_comments=False, deduplicate=True)``, datatrove's defaults, as FineWeb ran it);
* ``resiliparse``: datatrove's ``Resiliparse`` step (``extract_plain_text(html, main_content=True,
  preserve_formatting=True, list_bullets=True, alt_texts=False, links=False, form_fields=False, noscript=False,
  comments=True)``, its defaults; the step is in datatrove's main branch, not in 0.10, so it is restated here
  when the installed datatrove lacks it).

The metric is the benchmark's own (``evaluate.py`` of that repository, ``string_shingle_matching`` and
``metrics_from_tp_fp_fns``), restated in ``shingle_counts`` / ``benchmark_metrics`` below. Prints one row per
extractor (precision, recall, F1, accuracy, docs/s, empty outputs), then, last:
``f1 ours=<x> trafilatura=<y> resiliparse=<z> docs_per_s ours=<a> trafilatura=<b> resiliparse=<c>``.
trafilatura's ``deduplicate=True`` keeps a process-wide cache of seen text segments, which is why each extractor
makes exactly one pass (a second pass of trafilatura would drop text it saw in the first).
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# --- the benchmark's metric (scrapinghub/article-extraction-benchmark, evaluate.py) -----------------------------

_TOKEN_RE = re.compile(r"\w+", re.UNICODE | re.MULTILINE | re.IGNORECASE | re.DOTALL)
NGRAM_N = 4


def tokenize(text: str | None) -> list[str]:
    """``_tokenize``: runs of word characters (any script), case kept."""
    return _TOKEN_RE.findall(text or "")


def shingles(text: str | None, n: int = NGRAM_N) -> Counter:
    """``_all_shingles``: multiset of token n-grams (n=4); a text shorter than n tokens is one shorter shingle."""
    tokens = tokenize(text)
    return Counter(tuple(tokens[i:i + n]) for i in range(max(1, len(tokens) - n + 1)) if tokens[i:i + n])


def shingle_counts(true: str | None, pred: str | None, n: int = NGRAM_N) -> tuple[float, float, float]:
    """``string_shingle_matching``: (tp, fp, fn) over shingle counts, normalised to sum 1 so every page weighs the
    same (all zero when both texts are empty)."""
    t, p = shingles(true, n), shingles(pred, n)
    tp = fp = fn = 0.0
    for key in t.keys() | p.keys():
        tc, pc = t.get(key, 0), p.get(key, 0)
        tp += min(tc, pc)
        fp += max(0, pc - tc)
        fn += max(0, tc - pc)
    s = tp + fp + fn
    return (tp / s, fp / s, fn / s) if s > 0 else (tp, fp, fn)


def precision_score(tp: float, fp: float, fn: float) -> float:
    if fp == fn == 0:
        return 1.0
    if tp == fp == 0:
        return 0.0
    return tp / (tp + fp)


def recall_score(tp: float, fp: float, fn: float) -> float:
    if fp == fn == 0:
        return 1.0
    if tp == fn == 0:
        return 0.0
    return tp / (tp + fn)


def benchmark_metrics(tp_fp_fns: list[tuple[float, float, float]]) -> dict[str, float]:
    """``metrics_from_tp_fp_fns``: precision = mean over pages with a prediction (tp + fp > 0), recall = mean over
    pages with a reference (tp + fn > 0), F1 = harmonic mean of those two means (not a mean of per-page F1s)."""
    precisions = [precision_score(*x) for x in tp_fp_fns if x[0] + x[1] > 0]
    recalls = [recall_score(*x) for x in tp_fp_fns if x[0] + x[2] > 0]
    precision = statistics.mean(precisions) if precisions else 0.0
    recall = statistics.mean(recalls) if recalls else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def page_f1(true: str | None, pred: str | None) -> float:
    """F1 of one page from its shingle counts (for tests and per-page inspection; the benchmark's F1 is
    ``benchmark_metrics``)."""
    x = shingle_counts(true, pred)
    p, r = precision_score(*x), recall_score(*x)
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def accuracy(true: str | None, pred: str | None) -> float:
    """``get_accuracy``: 1 when the token sequences are identical."""
    return float(tokenize(true) == tokenize(pred))


# --- data and extractors ------------------------------------------------------------------------------------------


def load_pages(folder: Path, limit: int | None = None) -> list[tuple[str, str, str, str]]:
    """``[(id, html, url, articleBody)]`` in id order, pages without an html file skipped."""
    truth = json.loads((folder / "ground-truth.json").read_text(encoding="utf-8"))
    pages = []
    for item_id in sorted(truth):
        path = folder / "html" / f"{item_id}.html.gz"
        if not path.is_file():
            continue
        with gzip.open(path, "rt", encoding="utf8") as f:
            html = f.read()
        pages.append((item_id, html, truth[item_id].get("url") or "", truth[item_id].get("articleBody") or ""))
        if limit and len(pages) >= limit:
            break
    return pages


def extractors() -> dict[str, Callable[[str], str]]:
    from datatrove.pipeline.extractors import Trafilatura

    from hf_pipeline.data.extract import MainTextExtractor

    try:
        from datatrove.pipeline.extractors import Resiliparse

        resiliparse = Resiliparse().extract
    except ImportError:  # datatrove 0.10: the step's defaults, restated

        def resiliparse(html: str) -> str:
            from resiliparse.extract.html2text import extract_plain_text

            return extract_plain_text(html, preserve_formatting=True, main_content=True, list_bullets=True,
                                      alt_texts=False, links=False, form_fields=False, noscript=False, comments=True,
                                      skip_elements=None)

    return {"ours": MainTextExtractor().extract, "trafilatura": Trafilatura().extract, "resiliparse": resiliparse}


def run(name: str, extract: Callable[[str], str], pages) -> dict:
    outputs, elapsed, errors = [], 0.0, 0
    for _, html, _, _ in pages:
        start = time.perf_counter()
        try:
            out = extract(html)
        except Exception:  # a peer that raises scores an empty prediction, counted
            out, errors = None, errors + 1
        elapsed += time.perf_counter() - start
        outputs.append(out or "")
    counts = [shingle_counts(truth, out) for (_, _, _, truth), out in zip(pages, outputs)]
    result = benchmark_metrics(counts)
    result.update(
        accuracy=statistics.mean(accuracy(truth, out) for (_, _, _, truth), out in zip(pages, outputs)),
        docs_per_s=len(pages) / elapsed if elapsed > 0 else float("inf"),
        empty=sum(not o.strip() for o in outputs), errors=errors, name=name,
    )
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--benchmark", required=True, type=Path, help="folder with html/<id>.html.gz and ground-truth.json")
    p.add_argument("--limit", type=int, default=None, help="first N pages (in id order) only")
    args = p.parse_args(argv)
    pages = load_pages(args.benchmark, args.limit)
    if not pages:
        sys.exit(f"no pages found in {args.benchmark}")
    print(f"{len(pages)} pages from {args.benchmark}; shingle (4-gram) metrics as in "
          f"scrapinghub/article-extraction-benchmark evaluate.py")
    results = {name: run(name, fn, pages) for name, fn in extractors().items()}
    for r in results.values():
        if r["empty"] == len(pages):  # a broken install (e.g. trafilatura without lxml_html_clean) is not a score
            sys.exit(f"{r['name']} extracted no text from any page ({r['errors']} raised): check its installation")
    print(f"{'extractor':<12} {'precision':>9} {'recall':>7} {'F1':>6} {'accuracy':>8} {'docs/s':>8} {'empty':>5}")
    for r in results.values():
        print(f"{r['name']:<12} {r['precision']:>9.3f} {r['recall']:>7.3f} {r['f1']:>6.3f} {r['accuracy']:>8.3f} "
              f"{r['docs_per_s']:>8.1f} {r['empty']:>5d}" + (f"  ({r['errors']} raised)" if r["errors"] else ""))
    names = ("ours", "trafilatura", "resiliparse")
    print("f1 " + " ".join(f"{n}={results[n]['f1']:.3f}" for n in names) + " docs_per_s "
          + " ".join(f"{n}={results[n]['docs_per_s']:.1f}" for n in names))


if __name__ == "__main__":
    main()
