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

from conftest import HTML, TRUTH, WEB
from hf_pipeline.data.filters import (
    EarlyStopC4QualityFilter, FastFineWebQualityFilter, FastGopherQualityFilter, FastGopherRepetitionFilter,
    FastSpacyTokenizer, WebURLFilter, word_tokenizer_for,
)
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
    banned = next(d for d in url_filter.block_listed_domains.trie.iterkeys() if d.count(".") == 1)
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


# ----------------------------------------------------------------------------------------------------------------
# The fast filters against datatrove's own, on the real pages: same decision, same reason, same text.


@pytest.fixture(scope="module")
def real_texts() -> list[tuple[str, str]]:
    """(id, main text) of the 90 article pages (with their URLs) and the WARC excerpts, extracted with our extractor,
    then a few made repetitive on purpose (a sentence or phrase repeated inside one line, so that the n-gram rules,
    not the line and paragraph ones, decide)."""
    from hf_pipeline.data.extract import extract_text
    from hf_pipeline.data.readers import WebReader, load_url_map

    texts = []
    readers = (WebReader(str(HTML), url_by_file=load_url_map(str(TRUTH))),
               WebReader(str(WEB), glob_pattern="*.warc.gz", recursive=False))
    for reader in readers:
        for doc in reader.run():
            text = extract_text(doc.text)
            if text:
                texts.append((doc.id, text))
    assert len(texts) > 120
    made = []
    for doc_id, text in texts[:40:4]:
        words = text.split()
        if len(words) < 300:
            continue
        body, phrase = words[:300], words[40:52]
        for copies in (3, 6, 12, 25):
            spliced = list(body)
            for k in range(copies):
                spliced[k * 300 // copies:k * 300 // copies] = phrase
            made.append((f"{doc_id}/phrase{copies}", " ".join(spliced)))
        made.append((f"{doc_id}/sentence", " ".join(body[:60] + body[60:75] * 8 + body[75:])))
    return texts + made


FAST_VS_STOCK = {
    "gopher_repetition": (FastGopherRepetitionFilter, GopherRepetitionFilter),
    "gopher_quality": (FastGopherQualityFilter, GopherQualityFilter),
    "fineweb_quality": (FastFineWebQualityFilter, FineWebQualityFilter),
}


@pytest.mark.parametrize("step", sorted(FAST_VS_STOCK))
def test_fast_filter_agrees_with_datatrove_on_every_real_document(real_texts, step):
    fast_cls, stock_cls = FAST_VS_STOCK[step]
    words = FastSpacyTokenizer("en", memo_size=1_000)  # one tokenization per text; tokens tested against stock below
    fast, stock = fast_cls(language=words), stock_cls(language=words)
    reasons = set()
    for doc_id, text in real_texts:
        a, b = Document(text=text, id=doc_id), Document(text=text, id=doc_id)
        expected = stock.filter(a)
        assert fast.filter(b) == expected and a.text == b.text, (step, doc_id)
        reasons.add(expected if expected is True else expected[1])
    assert True in reasons and len(reasons) >= 4, reasons  # kept and dropped for several reasons
    if step == "gopher_repetition":
        assert any(r.startswith("top_") for r in reasons - {True}), reasons
        assert any(r.startswith("duplicated_") for r in reasons - {True}), reasons


def test_fast_chain_agrees_with_stock_datatrove_chain_on_real_documents(real_texts):
    """FineWeb's four quality filters in FineWeb's order, stock (datatrove's own tokenizer, its C4 filter) against
    ours (one FastSpacyTokenizer shared): the same step drops each document, for the same reason, and what is kept has
    the same text (the C4 filter rewrites it before the FineWeb filter counts its words)."""
    words = FastSpacyTokenizer("en")
    stock = [GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(filter_no_terminal_punct=False),
             FineWebQualityFilter()]
    ours = [FastGopherRepetitionFilter(language=words), FastGopherQualityFilter(language=words),
            EarlyStopC4QualityFilter(filter_no_terminal_punct=False, language=words),
            FastFineWebQualityFilter(language=words)]
    kept = 0
    for doc_id, text in real_texts[::2]:
        a, b = Document(text=text, id=doc_id), Document(text=text, id=doc_id)
        for step, (theirs, mine) in enumerate(zip(stock, ours)):
            expected = theirs.filter(a)
            assert mine.filter(b) == expected and a.text == b.text, (doc_id, step)
            if expected is not True:
                break
        else:
            kept += 1
    assert 0 < kept < len(real_texts[::2])


def test_fast_tokenizer_word_count_is_the_number_of_datatrove_words(real_texts):
    stock = load_word_tokenizer("en")
    stock.word_tokenize("IS_ALPHA")  # spaCy's quirk (see FastSpacyTokenizer._docs): only a first call keeps it
    fast = FastSpacyTokenizer("en")
    for _, text in real_texts[:60:6]:
        for changed in (text.replace("\n", "\n\u00a0 \n") + " \t x", text + " IS_ALPHA x"):
            assert fast.word_count(changed) == len(stock.word_tokenize(changed))
            assert fast.word_tokenize(changed) == stock.word_tokenize(changed)
            assert fast.span_tokenize(changed) == stock.span_tokenize(changed)


def test_repetition_n_grams_exact_on_concatenation_collisions_and_ties():
    from datatrove.pipeline.filters.gopher_repetition_filter import (
        find_all_duplicate, find_top_duplicate, get_n_grams,
    )
    import numpy as np

    from hf_pipeline.data.filters import _JoinedNGrams, all_duplicate_chars, top_duplicate_chars

    # "".join makes ["ab", "c"], ["a", "bc"] and ["abc", ""] the same 2-gram "abc": datatrove counts two repeats
    words = ["ab", "c", "x", "a", "bc", "y", "abc", "", "z"]
    assert find_all_duplicate(words, 2) == 6
    assert all_duplicate_chars(_JoinedNGrams(words, ""), 2) == 6
    # a tie on the count: Counter.most_common(1) takes the first inserted, and its length decides the product
    words = ["a", "b", "longer", "words", "a", "b", "longer", "words"]
    assert find_top_duplicate(get_n_grams(words, 2)) == len("a b") * 2
    assert top_duplicate_chars(_JoinedNGrams(words, " "), 2) == len("a b") * 2
    # " ".join: a word holding a space joins like two words
    words = ["a b", "c", "a", "b c", "a", "b", "c"]
    assert top_duplicate_chars(_JoinedNGrams(words, " "), 2) == find_top_duplicate(get_n_grams(words, 2))

    class Colliding(_JoinedNGrams):  # a hash with one bit: nearly every key collides, exact checks must sort it out
        def keys(self, starts, ends):
            return super().keys(starts, ends) & np.uint64(1)

    rng = np.random.default_rng(0)
    vocabulary = ["a", "b", "ab", "ba", "a b", "", "abc", "c"]
    for _ in range(400):
        words = [vocabulary[i] for i in rng.integers(0, rng.integers(2, 9), size=rng.integers(0, 40))]
        for grams_cls in (_JoinedNGrams, Colliding):
            spaced, joined = grams_cls(words, " "), grams_cls(words, "")
            for n in range(1, 11):
                if get_n_grams(words, n):
                    assert top_duplicate_chars(spaced, n) == find_top_duplicate(get_n_grams(words, n)), (words, n)
                assert all_duplicate_chars(joined, n) == find_all_duplicate(words, n), (words, n)


# ----------------------------------------------------------------------------------------------------------------
# The URL filter's memory-mapped trie: datatrove's membership, built once.


def _trie_path():
    from huggingface_hub import cached_assets_path

    lists = cached_assets_path(library_name="datatrove", namespace="filters", subfolder="url_filter")
    info = os.stat(os.path.join(lists, "domains"))
    return os.path.join(lists, "domains"), f"{os.path.join(lists, 'domains')}.{info.st_size}-{info.st_mtime_ns}.marisa"


def test_url_filter_trie_decides_as_datatrove_url_filter_and_is_built_once():
    from itertools import islice

    from datatrove.pipeline.filters import URLFilter
    from tldextract import TLDExtract

    from hf_pipeline.data.readers import WebReader

    ours = WebURLFilter(block_domains=["example.org"])
    ours.download_data()
    list_path, trie_path = _trie_path()
    built = os.stat(trie_path)
    stock = URLFilter(extra_domains=["example.org"])
    stock.tldextractor = TLDExtract(suffix_list_urls=(), fallback_to_snapshot=True)
    stock.download_data()  # the 4.56M-domain Python set, as datatrove builds it

    urls = [v["url"] for v in json.loads(TRUTH.read_text()).values()]
    urls += [d.metadata["url"] for d in WebReader(str(WEB), glob_pattern="*.warc.gz", recursive=False).run()]
    with open(list_path) as f:  # block-listed domains from the list itself, spread over it
        listed = [line.strip() for line in islice(f, 0, None, 45_000)]
    urls += [f"https://{d}/index.html" for d in listed] + [f"http://www.{d}/a?b=c" for d in listed]
    urls += ["https://example.org/x", "https://sub.example.org/", "http://127.0.0.1/", "https://localhost/"]
    decisions = set()
    for url in urls:
        expected = stock.filter(Document(text="x", id="u", metadata={"url": url}))
        assert ours.filter(Document(text="x", id="u", metadata={"url": url})) == expected, url
        decisions.add(expected if expected is True else expected[1])
    assert {True, "domain"} <= decisions, decisions
    for key in ["", *listed, "example.org", "not-a-listed-domain.example", "COM", "com"]:
        assert (key in ours.block_listed_domains) == (key in stock.block_listed_domains), key

    again = WebURLFilter()
    again.download_data()  # the cached trie, memory-mapped: not rebuilt
    after = os.stat(trie_path)
    assert (after.st_ino, after.st_mtime_ns) == (built.st_ino, built.st_mtime_ns)


def _build_in_process(args):
    from hf_pipeline.data.filters import cached_list_trie

    trie = cached_list_trie(args)
    return sorted(trie.keys())


def test_list_trie_same_keys_as_datatrove_list_and_atomic_when_built_concurrently(tmp_path):
    from concurrent.futures import ProcessPoolExecutor

    from datatrove.pipeline.filters.url_filter import get_list

    lines = ["# a comment", "spam.example", "  padded.example  ", "", "dup.example", "dup.example", "x.y.z", "#"]
    (tmp_path / "domains").write_text("\n".join(lines) + "\n")
    expected = sorted(get_list(str(tmp_path), "domains", set(), do_normalize=False))
    assert "" in expected  # a blank line: datatrove's set holds ''
    with ProcessPoolExecutor(2) as pool:
        results = list(pool.map(_build_in_process, [str(tmp_path / "domains")] * 4))
    assert all(r == expected for r in results)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    assert len(list(tmp_path.glob("domains.*.marisa"))) == 1
    built = next(tmp_path.glob("domains.*.marisa")).stat()
    assert _build_in_process(str(tmp_path / "domains")) == expected
    assert next(tmp_path.glob("domains.*.marisa")).stat().st_mtime_ns == built.st_mtime_ns  # reused, not rebuilt
