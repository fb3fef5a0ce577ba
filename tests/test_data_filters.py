"""Each filter of the data stage on real documents it must keep and real documents it must drop.

The documents come from the data stage's own run on the real pages (``web_run``, with dropped documents kept):
what a filter dropped there, as it was when it reached the filter, must be dropped again with the same reason by a
fresh filter; what the stage published must pass every filter.
"""

from __future__ import annotations

import gzip
import json
import os

import datasets
import pytest
from datatrove.data import Document
from datatrove.pipeline.filters import (
    C4QualityFilter, FineWebQualityFilter, GopherQualityFilter, GopherRepetitionFilter,
)
from datatrove.utils.word_tokenizers import load_word_tokenizer

from conftest import TRUTH
from hf_pipeline.data.filters import EarlyStopC4QualityFilter, FastSpacyTokenizer, WebURLFilter, word_tokenizer_for
from hf_pipeline.data.lid import OfflineLanguageFilter

FILTERS = {
    "language": lambda: OfflineLanguageFilter(languages=("en",), language_threshold=0.65),
    "gopher_repetition": GopherRepetitionFilter,
    "gopher_quality": GopherQualityFilter,
    "c4_quality": lambda: EarlyStopC4QualityFilter(filter_no_terminal_punct=False),
    "fineweb_quality": FineWebQualityFilter,
}


def dropped_docs(run_dir, step: str) -> list[Document]:
    rows = [json.loads(line) for f in sorted((run_dir / "data" / "dropped" / step).glob("*.jsonl.gz"))
            for line in gzip.open(f, "rt")]
    return [Document(text=r["text"], id=r["id"], metadata=r.get("metadata", {})) for r in rows]


def kept_docs(run_dir) -> list[Document]:
    ds = datasets.load_dataset(str(run_dir / "data"), split="train")
    return [Document(text=r["text"], id=r["id"], metadata={"url": r["url"]}) for r in ds]


@pytest.mark.parametrize("step", sorted(FILTERS))
def test_filter_drops_what_it_dropped_in_the_real_run_and_keeps_published_pages(web_run, step):
    dropped = dropped_docs(web_run, step)
    assert dropped, f"the real run dropped nothing at {step}"
    for doc in dropped:
        reason = doc.metadata.pop("filter_reason")
        result = FILTERS[step]().filter(doc)
        assert result == (False, reason) or (result is False and reason is None), (step, doc.id, result)
    for doc in kept_docs(web_run)[:30]:
        assert FILTERS[step]().filter(doc) is True, (step, doc.id)


def test_url_filter_block_lists_user_lists_and_pages_without_url(web_run):
    page = kept_docs(web_run)[0]
    url_filter = WebURLFilter()
    assert url_filter.filter(page) is True
    url_filter.download_data()  # datatrove's bundled lists, extracted from the wheel (no download)
    banned = sorted(d for d in url_filter.block_listed_domains if d.count(".") == 1)[0]
    blocked = Document(text=page.text, id="b", metadata={"url": f"https://{banned}/some/page.html"})
    assert url_filter.filter(blocked) == (False, "domain")
    assert WebURLFilter(allow_domains=[banned]).filter(blocked) is True

    own_domain = json.loads(TRUTH.read_text())[page.id]["url"].split("/")[2].removeprefix("www.")
    assert WebURLFilter(block_domains=[own_domain]).filter(page) == (False, "domain")
    assert WebURLFilter(block_urls=[page.metadata["url"]]).filter(page) == (False, "url")
    no_url = WebURLFilter()
    assert no_url.filter(Document(text=page.text, id="n", metadata={})) is True
    assert no_url.stats.to_dict()["stats"]["no_url"] == 1


def test_fast_tokenizer_gives_datatrove_spacy_tokens(web_run):
    stock = load_word_tokenizer("en")
    fast = FastSpacyTokenizer("en", max_vocab=2_000)  # tiny bound: the pipeline is rebuilt several times here
    texts = [d.text for d in kept_docs(web_run)[:25]] + [d.text for d in dropped_docs(web_run, "gopher_quality")]
    for text in texts:
        assert fast.word_tokenize(text) == stock.word_tokenize(text)
        assert fast.span_tokenize(text) == stock.span_tokenize(text)
        assert fast.sent_tokenize(text) == stock.sent_tokenize(text)
    assert isinstance(word_tokenizer_for("en"), FastSpacyTokenizer)
    assert word_tokenizer_for("ja") == "ja"  # datatrove's own tokenizer where spaCy needs a special setup


def test_early_stop_c4_filter_same_decisions_and_text_as_datatrove(web_run):
    docs = kept_docs(web_run) + [d for step in ("c4_quality", "fineweb_quality", "gopher_quality")
                                 for d in dropped_docs(web_run, step)]
    stock, ours = C4QualityFilter(filter_no_terminal_punct=False), EarlyStopC4QualityFilter(
        filter_no_terminal_punct=False)
    outcomes = set()
    for doc in docs:
        a = Document(text=doc.text, id=doc.id)
        b = Document(text=doc.text, id=doc.id)
        assert stock.filter(a) == ours.filter(b) and a.text == b.text
        outcomes.add(stock.filter(Document(text=doc.text, id=doc.id)))
    assert True in outcomes and (False, "too_few_sentences") in outcomes


def test_data_throughput_benchmark_prints_ratio_and_agreement(tmp_path):
    import subprocess
    import sys

    from conftest import HTML, ROOT

    pages = sorted(HTML.glob("*.html.gz"))[:6]
    result = subprocess.run(
        [sys.executable, "benchmarks/data_throughput.py", "--input", *map(str, pages), "--url_map", str(TRUTH),
         "--workers", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("data_throughput docs_per_s ours=") and "agreement=" in last and "docs=6 " in last
