"""Filters datatrove lacks or that need a change: to run offline, or to run fast with the same decisions.

``WebURLFilter`` is datatrove's ``URLFilter`` (its bundled block lists of adult/spam domains, URLs and words, as
FineWeb used them) with these changes:

- the public suffix list comes from tldextract's bundled snapshot: no download at run time (the stock filter tries
  one and logs a network error on offline machines);
- a user allow list of domains that are never blocked (a banned word in a legitimate domain's URL happens);
- a document without a URL (a plain HTML file) is kept and counted as ``no_url`` instead of failing an assert;
- the 4.56M block-listed domains are not read into a Python set in every task (2.6 s and ~400 MB per task): a
  ``marisa-trie`` of the bundled list is built once, cached on disk next to datatrove's extracted lists, and
  memory-mapped by every task (same membership, the user's extra domains included).

The Gopher repetition and quality filters and the FineWeb quality filter have fast subclasses here with the same
decisions, reasons and text as datatrove's (tests/test_data_filters.py compares them on real pages).
"""

from __future__ import annotations

import os
import tempfile
from bisect import bisect_left
from collections import Counter, OrderedDict

import numpy as np
from datatrove.data import Document
from datatrove.pipeline.filters import (
    C4QualityFilter, FineWebQualityFilter, GopherQualityFilter, GopherRepetitionFilter, URLFilter,
)
from datatrove.pipeline.filters.gopher_repetition_filter import find_duplicates
from datatrove.pipeline.filters.url_filter import get_list, parse_list
from datatrove.utils.text import PUNCTUATION_SET, split_into_sentences, split_into_words
from datatrove.utils.word_tokenizers import SpaCyTokenizer, chunk_text_on_bytes, strip_strings


def _build_trie(list_path: str, trie_path: str) -> None:
    """A marisa trie of the list at ``list_path`` with exactly the keys of datatrove's ``get_list`` set (the same
    ``parse_list``: lines not starting with '#', stripped; a blank line gives ''), saved atomically at ``trie_path``
    (a temporary file in the same folder, then a rename: two processes building it at once both leave a whole file).
    """
    import marisa_trie

    with open(list_path) as f:
        trie = marisa_trie.Trie(parse_list(f, do_normalize=False))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(trie_path) + ".", suffix=".tmp",
                               dir=os.path.dirname(trie_path))
    os.close(fd)
    try:
        trie.save(tmp)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the cache from other users of the same assets folder
        os.replace(tmp, trie_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def cached_list_trie(list_path: str):
    """The trie of the list at ``list_path``, built on first use and cached next to it (keyed by the list's size and
    modification time), memory-mapped: the page cache shares it between worker processes. The build is atomic (a
    rename) and, where the file system has locks, done by one process while the others wait."""
    import marisa_trie

    info = os.stat(list_path)
    trie_path = f"{list_path}.{info.st_size}-{info.st_mtime_ns}.marisa"
    if not os.path.exists(trie_path):
        from fasteners import InterProcessLock  # a datatrove URLFilter dependency

        with InterProcessLock(f"{trie_path}.lock"):  # one process builds (~10 s, ~1 GB), the others wait for it
            if not os.path.exists(trie_path):
                _build_trie(list_path, trie_path)
    trie = marisa_trie.Trie()
    trie.mmap(trie_path)
    return trie


class TrieSet:
    """Set-like membership over a marisa trie plus a (small) Python set of extra keys."""

    def __init__(self, trie, extra=()):
        self.trie = trie
        self.extra = set(extra)

    def __contains__(self, key) -> bool:
        if key in self.extra:
            return True
        if not isinstance(key, str):
            return False
        try:
            return key in self.trie
        except UnicodeEncodeError:  # a lone surrogate: never in a list read as UTF-8
            return False

    def __iter__(self):
        yield from self.extra
        for key in self.trie.iterkeys():
            if key not in self.extra:
                yield key

    def __len__(self) -> int:
        return len(self.trie) + sum(1 for key in self.extra if key not in self.trie)


class WebURLFilter(URLFilter):
    name = "😈 URL filter"

    def __init__(self, block_domains=(), block_urls=(), allow_domains=(), exclusion_writer=None, **kwargs):
        super().__init__(extra_domains=list(block_domains) or None, extra_urls=list(block_urls) or None,
                         exclusion_writer=exclusion_writer, **kwargs)
        from tldextract import TLDExtract

        self.tldextractor = TLDExtract(suffix_list_urls=(), fallback_to_snapshot=True)
        self.allow_domains = parse_list(allow_domains, do_normalize=False) if allow_domains else set()

    def download_data(self):
        """datatrove's ``download_data`` (the bundled lists, extracted once), with the domain list as a cached trie."""
        if self._downloaded or not self.use_integrated_lists:
            return
        import tarfile

        from datatrove.io import safely_create_file
        from datatrove.utils._import_utils import ASSETS_PATH
        from huggingface_hub import cached_assets_path

        download_dir = cached_assets_path(library_name="datatrove", namespace="filters", subfolder="url_filter")
        file_to_lock = os.path.join(download_dir, "url_filterblacklistsv0_3_0.tar.gz")

        def do_extract():
            with tarfile.open(os.path.join(ASSETS_PATH, "url_filterblacklistsv0_3_0.tar.gz"), "r:gz") as tar:
                tar.extractall(download_dir)

        safely_create_file(file_to_lock, do_extract)
        self.block_listed_domains = TrieSet(cached_list_trie(os.path.join(download_dir, "domains")),
                                            self.block_listed_domains)
        self.block_listed_url = get_list(download_dir, "urls", self.block_listed_url, do_normalize=False)
        self.banned_words = get_list(ASSETS_PATH, "banned_words.txt", self.banned_words)
        self.banned_subwords = get_list(ASSETS_PATH, "banned_subwords.txt", self.banned_subwords)
        self.soft_banned_words = get_list(ASSETS_PATH, "soft_banned_words.txt", self.soft_banned_words)
        for word in self.banned_subwords:
            self.banned_subwords_automaton.add_word(word, len(self.banned_subwords_automaton))
        self.banned_subwords_automaton.make_automaton()
        self._downloaded = True

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
        # spaCy fails on the string "IS_ALPHA" (an assert in ``Vocab.get``) once a memory zone has run, and datatrove
        # then tokenizes the text without it: in datatrove every call but a process's very first drops "IS_ALPHA".
        # This tokenizer has no memory zone (spaCy would not fail), so it drops it on every call: datatrove's steady
        # state.
        text = text.replace("IS_ALPHA", "")
        self.tokenizer.max_length = len(text) + 10
        return self._do_tokenize(text)

    def _token_docs(self, text: str):
        """datatrove's ``_do_tokenize`` through the tokenizer alone: the same tokens, without the sentencizer pipe."""
        tokenizer = self.tokenizer.tokenizer
        text = text.replace("IS_ALPHA", "")  # see ``_docs``
        texts = [text] if self.language != "ja" else chunk_text_on_bytes(text, 40000)
        return [tokenizer(t) for t in texts]

    def word_tokenize(self, text: str) -> list[str]:
        return self._cached("words", text,
                            lambda t: strip_strings([tok.text for d in self._token_docs(t) for tok in d]))

    def word_count(self, text: str) -> int:
        """``len(word_tokenize(text))`` without making the strings: the tokens that are not all whitespace (what
        ``strip_strings`` keeps; spaCy's ``IS_SPACE`` is ``str.isspace``, the same whitespace ``str.strip`` drops)."""
        from spacy.attrs import IS_SPACE

        key = ("words", text)
        if key in self._memo:
            return len(self._memo[key])
        if self._tokenizer is not None and len(self._tokenizer.vocab) > self.max_vocab:
            self._tokenizer = None
        return sum(len(d) - int(d.to_array(IS_SPACE).sum()) if len(d) else 0 for d in self._token_docs(text))

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


# ----------------------------------------------------------------------------------------------------------------
# The Gopher and FineWeb filters, fast, with datatrove's decisions, reasons and text.

_B = np.uint64(0x9E3779B97F4A7C15)  # odd: invertible modulo 2**64
_B_INV = np.uint64(pow(int(_B), -1, 2**64))
_LEN_MIX = np.uint64(0xC2B2AE3D27D4EB4F)


class _JoinedNGrams:
    """The n-grams of ``words`` joined by ``sep``, as spans of the one string ``sep.join(words)``, with a hash key per
    n-gram: a polynomial hash (modulo 2**64) of the span's characters mixed with its length. Two n-grams whose joined
    strings are equal get equal keys whatever their words (``"".join(["ab", "c"]) == "".join(["a", "bc"])``); two
    different strings may collide, so a key only nominates candidates that callers then compare as strings."""

    def __init__(self, words: list[str], sep: str):
        self.text = sep.join(words)
        lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        self.starts = np.zeros(len(words), dtype=np.int64)
        if len(words) > 1:
            np.cumsum(lengths[:-1] + len(sep), out=self.starts[1:])
        self.ends = self.starts + lengths
        codes = np.frombuffer(self.text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64)
        powers = np.full(len(codes), _B, dtype=np.uint64)
        inverse = np.full(len(codes) + 1, _B_INV, dtype=np.uint64)
        if len(codes):
            powers[0] = 1
            np.cumprod(powers, out=powers)
        inverse[0] = 1
        np.cumprod(inverse, out=inverse)
        self.prefix = np.zeros(len(codes) + 1, dtype=np.uint64)
        np.cumsum((codes + np.uint64(1)) * powers, out=self.prefix[1:])
        self.inverse = inverse

    def spans(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Start and end offsets (in ``self.text``) of the n-grams, in order."""
        count = max(len(self.starts) - n + 1, 0)
        return self.starts[:count], self.ends[n - 1:n - 1 + count]

    def keys(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        hashes = (self.prefix[ends] - self.prefix[starts]) * self.inverse[starts]
        return hashes ^ (ends - starts).astype(np.uint64) * _LEN_MIX


def _groups(keys: np.ndarray):
    """Per distinct key: its count, and the positions holding it (ascending): (counts, inverse, order, offsets), the
    positions of key ``g`` being ``order[offsets[g]:offsets[g + 1]]``; ``inverse``: each position's key."""
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return counts, inverse, order, offsets


def top_duplicate_chars(grams: _JoinedNGrams, n: int) -> int:
    """datatrove's ``find_top_duplicate(get_n_grams(words, n))``: ``len(s) * count(s)`` for the most common n-gram
    string ``s``, ties to the first inserted (``Counter.most_common(1)`` is ``max`` over insertion order)."""
    starts, ends = grams.spans(n)
    if not len(starts):
        raise ValueError("no n-grams")  # the caller skips n without n-grams, as datatrove does
    best_count, best_pos = 1, 0  # every count is at least 1, and position 0 is the first inserted
    counts, _, order, offsets = _groups(grams.keys(starts, ends))
    if counts.max() > 1:
        text = grams.text
        for g in np.argsort(-counts, kind="stable").tolist():
            c = int(counts[g])
            if c < 2 or c < best_count:
                break
            members = order[offsets[g]:offsets[g + 1]]
            if c == best_count and int(members[0]) > best_pos:
                continue  # its strings' counts are at most c and they first appear after the current best
            found: dict[str, list[int]] = {}
            for i in members.tolist():  # exact: compare the strings a collision may have merged
                entry = found.setdefault(text[starts[i]:ends[i]], [0, i])
                entry[0] += 1
            for count, first in found.values():
                if count > best_count or (count == best_count and first < best_pos):
                    best_count, best_pos = count, first
    return int(ends[best_pos] - starts[best_pos]) * best_count


def all_duplicate_chars(grams: _JoinedNGrams, n: int) -> int:
    """datatrove's ``find_all_duplicate(words, n)`` (``grams`` joined by ""): its greedy walk, only over the n-grams
    whose key repeats. An n-gram whose key is unique is a string no other n-gram has: the walk never finds it in its
    set nor finds another through it, so it only moves on by one."""
    starts, ends = grams.spans(n)
    if len(starts) < 2:
        return 0
    _, inverse, counts = np.unique(grams.keys(starts, ends), return_inverse=True, return_counts=True)
    candidates = np.flatnonzero(counts[inverse.reshape(-1)] > 1).tolist()
    if not candidates:
        return 0
    text, starts, ends = grams.text, starts.tolist(), ends.tolist()
    seen: set[str] = set()
    repeated, j = 0, 0
    while j < len(candidates):
        i = candidates[j]
        n_gram = text[starts[i]:ends[i]]
        if n_gram in seen:
            repeated += len(n_gram)
            j = bisect_left(candidates, i + n, j + 1)
        else:
            seen.add(n_gram)
            j += 1
    return repeated


class FastGopherRepetitionFilter(GopherRepetitionFilter):
    """datatrove's Gopher repetition filter with the same decisions and reasons; the n-gram rules run on hash keys
    with numpy (``top_duplicate_chars``, ``all_duplicate_chars``) instead of Python loops over joined strings."""

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        text = doc.text
        if not text:
            return False, "empty"

        paragraphs = self.paragraph_exp.split(text.strip())
        paragraphs_duplicates, char_duplicates = find_duplicates(paragraphs)
        if self.dup_para_frac and paragraphs_duplicates / len(paragraphs) > self.dup_para_frac:
            return False, "dup_para_frac"
        if self.dup_para_char_frac and char_duplicates / len(text) > self.dup_para_char_frac:
            return False, "dup_para_char_frac"

        lines = self._line_splitter.split(text)
        line_duplicates, char_duplicates = find_duplicates(lines)
        if self.dup_line_frac and line_duplicates / len(lines) > self.dup_line_frac:
            return False, "dup_line_frac"
        if self.dup_line_char_frac and char_duplicates / len(text) > self.dup_line_char_frac:
            return False, "dup_line_char_frac"

        words = split_into_words(text, self.language)
        if any(n < 1 for n, _ in self.top_n_grams) or any(n < 1 for n, _ in self.dup_n_grams):
            return super().filter(doc)  # datatrove's own loops for a setting these were not written for

        spaced = _JoinedNGrams(words, " ") if self.top_n_grams and len(words) else None
        for n, n_frac in self.top_n_grams:
            if len(words) - n + 1 <= 0:
                continue
            if top_duplicate_chars(spaced, n) / len(text) > n_frac:
                return False, f"top_{n}_gram"

        joined = _JoinedNGrams(words, "") if self.dup_n_grams else None
        for n, n_frac in self.dup_n_grams:
            if all_duplicate_chars(joined, n) / len(text) > n_frac:
                return False, f"duplicated_{n}_n_grams"

        return True


class FastGopherQualityFilter(GopherQualityFilter):
    """datatrove's Gopher quality filter with the same decisions and reasons: the per-word predicates (has a
    non-punctuation character, has a letter) are computed once per distinct word (and remembered across documents),
    and the averages from integer sums (``np.mean`` of integers is their exact float sum over the count)."""

    max_cached_words = 500_000

    def _word_info(self):
        cache = self.__dict__.get("_word_cache")
        if cache is None or len(cache) > self.max_cached_words:
            cache = self.__dict__["_word_cache"] = {}
        return cache

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        text = doc.text
        words = split_into_words(text, self.language)
        n_words = len(words)
        counts = Counter(words)
        cache = self._word_info()
        n_non_symbol = non_symbol_chars = n_alpha = 0
        for w, c in counts.items():
            info = cache.get(w)
            if info is None:
                info = cache[w] = (not PUNCTUATION_SET.issuperset(w), any(ch.isalpha() for ch in w))
            if info[0]:
                n_non_symbol += c
                non_symbol_chars += c * len(w)
            if info[1]:
                n_alpha += c

        if self.min_doc_words and n_non_symbol < self.min_doc_words:
            return False, "gopher_short_doc"
        if self.max_doc_words and n_non_symbol > self.max_doc_words:
            return False, "gopher_long_doc"

        avg_n_words = np.float64(non_symbol_chars) / n_non_symbol if n_non_symbol else np.mean([])
        if self.min_avg_word_length and avg_n_words < self.min_avg_word_length:
            return False, "gopher_below_avg_threshold"
        if self.max_avg_word_length and avg_n_words > self.max_avg_word_length:
            return False, "gopher_above_avg_threshold"

        if self.max_symbol_word_ratio and text.count("#") / n_words > self.max_symbol_word_ratio:
            return False, "gopher_too_many_hashes"
        ellipses = text.count("...") + text.count("…")
        if self.max_symbol_word_ratio and ellipses / n_words > self.max_symbol_word_ratio:
            return False, "gopher_too_many_ellipsis"

        lines = text.splitlines()
        if (
            self.max_bullet_lines_ratio
            and sum(s.lstrip().startswith("•") or s.lstrip().startswith("-") for s in lines) / len(lines)
            > self.max_bullet_lines_ratio
        ):
            return False, "gopher_too_many_bullets"
        if (
            self.max_ellipsis_lines_ratio
            and sum(s.rstrip().endswith("...") or s.rstrip().endswith("…") for s in lines) / len(lines)
            > self.max_ellipsis_lines_ratio
        ):
            return False, "gopher_too_many_end_ellipsis"

        if self.max_non_alpha_words_ratio and n_alpha / n_words < self.max_non_alpha_words_ratio:
            return False, "gopher_below_alpha_threshold"

        if self.min_stop_words and len(self.stop_words.intersection(counts)) < self.min_stop_words:
            return False, "gopher_enough_stop_words"

        return True


class FastFineWebQualityFilter(FineWebQualityFilter):
    """datatrove's FineWeb quality filter with the same decisions and reasons: its last rule only needs the number
    of words, which ``FastSpacyTokenizer.word_count`` gives without making the word strings."""

    def filter(self, doc) -> bool | tuple[bool, str]:
        if not isinstance(self.language, FastSpacyTokenizer):
            return super().filter(doc)
        lines = doc.text.split("\n")
        lines = [line for line in lines if line.strip() != ""]
        if len(lines) == 0:
            return False, "empty"
        ratio = sum(1 for line in lines if line.endswith(self.stop_chars)) / len(lines)
        if ratio < self.line_punct_thr and not (ratio == 0 and self.line_punct_exclude_zero):
            return False, "line_punct_ratio"

        ratio = sum(1 for line in lines if len(line) <= self.short_line_length) / len(lines)
        if ratio > self.short_line_threshold:
            return False, "short_line_ratio"

        ratio = find_duplicates(lines)[1] / len(doc.text.replace("\n", ""))
        if ratio > self.char_duplicates_ratio:
            return False, "char_dup_ratio"

        new_line = doc.text.count("\n")
        if new_line / self.language.word_count(doc.text) > self.new_line_ratio:
            return False, "list_ratio"

        return True


def word_tokenizer_for(language: str):
    """The word tokenizer the quality and MinHash steps should use for ``language``: ours where datatrove would use a
    plain spaCy tokenizer, else the language code (datatrove then picks its own)."""
    from datatrove.utils.word_tokenizers import load_tokenizer_assignments

    factory = load_tokenizer_assignments().get(language)
    args = getattr(factory, "args", ())
    if len(args) == 2 and args[0] == "SpaCyTokenizer" and args[1] not in ("ja", "zh", "vi"):
        return FastSpacyTokenizer(args[1])
    return language
