"""Filters datatrove lacks or that need a change: to run offline, or to run fast with the same decisions.

``WebURLFilter`` is datatrove's ``URLFilter`` (its bundled block lists of adult/spam domains, URLs and words, as
FineWeb used them) with three changes:

- the public suffix list comes from tldextract's bundled snapshot: no download at run time (the stock filter tries
  one and logs a network error on offline machines);
- a user allow list of domains that are never blocked (a banned word in a legitimate domain's URL happens);
- a document without a URL (a plain HTML file) is kept and counted as ``no_url`` instead of failing an assert.
"""

from __future__ import annotations

from collections import OrderedDict

from datatrove.data import Document
from datatrove.pipeline.filters import C4QualityFilter, URLFilter
from datatrove.pipeline.filters.url_filter import parse_list
from datatrove.utils.text import split_into_sentences
from datatrove.utils.word_tokenizers import SpaCyTokenizer, strip_strings


class WebURLFilter(URLFilter):
    name = "😈 URL filter"

    def __init__(self, block_domains=(), block_urls=(), allow_domains=(), exclusion_writer=None, **kwargs):
        super().__init__(extra_domains=list(block_domains) or None, extra_urls=list(block_urls) or None,
                         exclusion_writer=exclusion_writer, **kwargs)
        from tldextract import TLDExtract

        self.tldextractor = TLDExtract(suffix_list_urls=(), fallback_to_snapshot=True)
        self.allow_domains = parse_list(allow_domains, do_normalize=False) if allow_domains else set()

    def filter(self, document: Document) -> bool | tuple[bool, str]:
        url = document.metadata.get("url")
        if not url:
            self.stat_update("no_url")
            return True
        if self.allow_domains:
            info = self.tldextractor(url)
            if info.registered_domain in self.allow_domains or info.fqdn in self.allow_domains:
                self.stat_update("allow_listed")
                return True
        return super().filter(document)


# ----------------------------------------------------------------------------------------------------------------
# Speed without changing a decision: the quality filters spend ~90% of their time in spaCy's tokenizer.


class FastSpacyTokenizer(SpaCyTokenizer):
    """datatrove's spaCy word tokenizer, ~3x faster with identical output.

    datatrove tokenizes every document inside a spaCy ``memory_zone``, which forgets each new word at the end of the
    call (to bound memory), so every call rebuilds the lexemes of every word. This keeps the vocabulary between calls
    and bounds memory by starting a fresh pipeline when it passes ``max_vocab`` words. It also remembers the last few
    texts, because the Gopher repetition and quality filters tokenize the same text one after the other. Passed to
    datatrove's filters as their ``language`` (datatrove accepts a ``WordTokenizer`` there).
    """

    def __init__(self, language: str = "en", max_vocab: int = 300_000, memo_size: int = 4):
        super().__init__(language)
        self.max_vocab = max_vocab
        self.memo_size = memo_size
        self._memo: OrderedDict[tuple[str, str], list] = OrderedDict()

    def _cached(self, kind: str, text: str, compute):
        key = (kind, text)
        if key in self._memo:
            self._memo.move_to_end(key)
            return list(self._memo[key])
        if self._tokenizer is not None and len(self._tokenizer.vocab) > self.max_vocab:
            self._tokenizer = None  # a fresh pipeline: the memory bound the memory zone gave
        result = compute(text)
        self._memo[key] = result
        if len(self._memo) > self.memo_size:
            self._memo.popitem(last=False)
        return list(result)

    def _docs(self, text: str):
        self.tokenizer.max_length = len(text) + 10
        return self._do_tokenize(text)

    def word_tokenize(self, text: str) -> list[str]:
        return self._cached("words", text, lambda t: strip_strings([tok.text for d in self._docs(t) for tok in d]))

    def sent_tokenize(self, text: str) -> list[str]:
        return self._cached("sents", text, lambda t: strip_strings([s.text for d in self._docs(t) for s in d.sents]))

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        def spans(t):
            out = []
            for doc in self._docs(t):
                start = out[-1][1] if out else 0
                out.extend((start + s.start_char, start + s.end_char) for s in doc.sents)
            return out

        return self._cached("spans", text, spans)


class EarlyStopC4QualityFilter(C4QualityFilter):
    """datatrove's C4 filter with the same decisions and text, but it stops counting sentences at the minimum.

    The stock filter sentence-splits every kept line with spaCy to count sentences, only to compare the count with
    ``min_num_sentences`` (5). Here the line rules run first (sentence counting off), then sentences are counted over
    the kept lines until the minimum is reached.
    """

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        min_sentences = self.min_num_sentences
        if not self.split_paragraph or min_sentences == -1:
            return super().filter(doc)
        self.min_num_sentences = -1
        try:
            result = super().filter(doc)  # line rules; doc.text becomes the kept lines joined by newlines
        finally:
            self.min_num_sentences = min_sentences
        if result is not True:
            return result
        found = 0
        for line in doc.text.split("\n"):
            found += len(split_into_sentences(line, self.language))
            if found >= min_sentences:
                return True
        return False, "too_few_sentences"


def word_tokenizer_for(language: str):
    """The word tokenizer the quality and MinHash steps should use for ``language``: ours where datatrove would use a
    plain spaCy tokenizer, else the language code (datatrove then picks its own)."""
    from datatrove.utils.word_tokenizers import load_tokenizer_assignments

    factory = load_tokenizer_assignments().get(language)
    args = getattr(factory, "args", ())
    if len(args) == 2 and args[0] == "SpaCyTokenizer" and args[1] not in ("ja", "zh", "vi"):
        return FastSpacyTokenizer(args[1])
    return language
