"""The default HTML -> text extractor on real article pages (scrapinghub benchmark), bad input, and its benchmark."""

from __future__ import annotations

import gzip
import importlib.util
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from datatrove.data import Document

from hf_pipeline.data.extract import MainTextExtractor, extract_text, looks_like_html

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "web" / "article_extraction"
SCRIPT = ROOT / "benchmarks" / "extraction.py"


def _load_benchmark_module():
    spec = importlib.util.spec_from_file_location("extraction_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_benchmark_module()


@pytest.fixture(scope="module")
def pages():
    """First 10 pages in id order: (id, html, url, articleBody)."""
    assert (BENCH / "ground-truth.json").is_file(), f"real data missing at {BENCH}"
    return bench.load_pages(BENCH, limit=10)


def test_metric_is_the_benchmarks():
    # identical texts; nothing predicted; half the reference; case kept, punctuation ignored
    assert bench.shingle_counts("a b c d e", "a b c d e") == (1.0, 0.0, 0.0)
    assert bench.shingle_counts("a b c d e", "") == (0.0, 0.0, 1.0)
    tp, fp, fn = bench.shingle_counts("one two three four five six seven", "one, two; three four!")
    assert (tp, fp, fn) == (0.25, 0.0, 0.75)  # 1 shared 4-gram of 4 reference ones, normalised by tp+fp+fn
    assert bench.shingle_counts("Hello there my friend", "hello there my friend")[0] == 0.0
    # precision averages only pages with a prediction, recall only pages with a reference; F1 of the two means
    m = bench.benchmark_metrics([(1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.5, 0.5, 0.0)])
    assert m["precision"] == pytest.approx((1.0 + 0.5) / 2)
    assert m["recall"] == pytest.approx((1.0 + 0.0 + 1.0) / 3)
    assert m["f1"] == pytest.approx(2 * 0.75 * (2 / 3) / (0.75 + 2 / 3))


def test_real_pages_high_shingle_f1(pages):
    assert len(pages) == 10
    outputs = [extract_text(html, url) for _, html, url, _ in pages]
    f1s = [bench.page_f1(truth, out) for (_, _, _, truth), out in zip(pages, outputs)]
    assert sum(f1s) / len(f1s) >= 0.9, f1s
    assert min(f1s) >= 0.6, f1s
    m = bench.benchmark_metrics([bench.shingle_counts(t, o) for (_, _, _, t), o in zip(pages, outputs)])
    assert m["f1"] >= 0.9 and m["precision"] >= 0.9, m
    # plain text out: no markup, paragraphs kept
    assert all("<p" not in out and "</div" not in out for out in outputs)
    assert all(out.count("\n") >= 2 for out in outputs)


def test_bytes_input_same_as_str(pages):
    item_id, html, _, _ = pages[0]
    raw = gzip.decompress((BENCH / "html" / f"{item_id}.html.gz").read_bytes())
    assert extract_text(raw) == extract_text(html) != ""


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "   \n\t ",
        None,
        b"",
        "just a sentence of plain text, no markup at all, which is not an HTML page",
        json.dumps({"html": None, "text": "not html either"}),
        "<html><head><title>t</title></head><body></body></html>",  # HTML without any text
        "<html><body><script>var x = '<p>not shown</p>';</script></body></html>",
        b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nstream\n" + bytes(range(256)) * 8,
        bytes(random.Random(0).getrandbits(8) for _ in range(4096)),  # binary noise
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00\xff" * 512,
        "\x00\x01\x02<html><body><p>" + "\x00\x07" * 400 + "</p></body></html>",  # binary with a tag in it
        12345,
    ],
)
def test_bad_input_gives_empty_string(bad):
    assert extract_text(bad) == ""
    assert MainTextExtractor().extract(bad) == ""


def test_fragment_and_tiny_pages_still_extract():
    para = "The committee met on Tuesday and agreed to publish the full report next spring after review."
    assert extract_text(f"<p>{para}</p>") == para
    assert looks_like_html(f"<div>{para}</div>") and not looks_like_html(para)
    page = f"<html><body><nav><a href='/'>Home</a></nav><article><p>{para}</p><p>{para}</p></article></body></html>"
    assert para in extract_text(page) and "Home" not in extract_text(page)
    # a skip selector that matches a page-wide wrapper must not empty the page (the fallbacks take over)
    long_para = para * 4
    for page in (f"<html><body class='share-enabled'><div><p>{long_para}</p></div></body></html>",
                 f"<html><body><div class='page social-wrap'><p>{long_para}</p></div></body></html>",
                 f"<html><body><div class='x has-related'><article><p>{long_para}</p></article></div></body>"):
        assert extract_text(page).startswith(para), page


def test_datatrove_step_fills_text(pages):
    docs = [Document(text=html, id=item_id, metadata={"url": url}) for item_id, html, url, _ in pages[:3]]
    docs.append(Document(text="not html at all", id="bad"))
    step = MainTextExtractor(timeout=5)
    out = list(step.run(iter(docs)))
    assert [d.id for d in out] == [p[0] for p in pages[:3]]  # the bad one is dropped
    for d, (_, _, _, truth) in zip(out, pages[:3]):
        assert d.text and "<" not in d.text[:200]
        assert bench.page_f1(truth, d.text) >= 0.6
        assert d.text == extract_text(pages[[p[0] for p in pages].index(d.id)][1])
    stats = step.stats.to_dict()["stats"]
    assert (stats["total"], stats["extracted"], stats["forwarded"], stats["dropped"]) == (4, 4, 3, 1)


def test_benchmark_script_last_line():
    res = subprocess.run([sys.executable, str(SCRIPT), "--benchmark", str(BENCH), "--limit", "5"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    last = res.stdout.strip().splitlines()[-1]
    pattern = (r"f1 ours=(\d\.\d{3}) trafilatura=(\d\.\d{3}) resiliparse=(\d\.\d{3}) "
               r"docs_per_s ours=(\d+\.\d) trafilatura=(\d+\.\d) resiliparse=(\d+\.\d)")
    m = re.fullmatch(pattern, last)
    assert m, last
    f1_ours, f1_traf, f1_res, speed_ours, speed_traf, _ = map(float, m.groups())
    assert f1_ours >= 0.9 and f1_traf >= 0.9 and f1_res > 0.5
    assert speed_ours > speed_traf
    assert "5 pages" in res.stdout
