"""Throughput of the data stage's filtering chain against datatrove's stock FineWeb chain, on the same input.

    python benchmarks/data_throughput.py --input ../shared/data/web/article_extraction/html/*.html.gz \
        ../shared/data/web/*.warc.gz --url_map ../shared/data/web/article_extraction/ground-truth.json --repeat 5

Both chains run on datatrove's LocalPipelineExecutor with the same tasks and workers, read the same documents with
the same reader, and apply FineWeb's steps in FineWeb's order with FineWeb's settings (from datatrove's
``examples/fineweb.py``):

    stock: URLFilter, Trafilatura(favour_precision=True), language ID (*), GopherRepetitionFilter,
           GopherQualityFilter, C4QualityFilter(filter_no_terminal_punct=False), FineWebQualityFilter
    ours:  the data stage's steps 1-4 (hf_pipeline/data/pipeline.py filter_steps): WebURLFilter (the block-listed
           domains as a memory-mapped trie built once, not a 4.56M-entry set built per task), MainTextExtractor, the
           same language ID, and datatrove's four quality filters as the fast subclasses of
           hf_pipeline/data/filters.py (same decisions, reasons and text: tests/test_data_filters.py), sharing a
           faster spaCy tokenizer: the Gopher n-gram rules on numpy hash keys, per-word predicates cached, the C4
           filter counting sentences only up to its minimum, the FineWeb filter counting words without making them

(*) ``LanguageFilter`` downloads ``lid.176.bin`` at run time, so both chains use the same bundled fastText model
through ``OfflineLanguageFilter``. The stock URLFilter is given tldextract's bundled suffix list (it would try a
download). Deduplication is left out: both would run the same datatrove MinHash stages.

``--repeat N`` feeds each input file N times (as N links). Each chain then runs twice, on the inputs once and N
times, and docs/s is the marginal rate between the two runs, ``(docs_N - docs_1) / (seconds_N - seconds_1)``: the
per-task start-up (loading the URL block lists, importing spaCy: seconds each) cancels out, as it does on a real crawl.
The end-to-end wall-time ratio of the big run (datatrove's seconds over ours, start-up included) is printed too,
and repeated at the end of the last line. Agreement: the share of documents on which the two chains take the same
keep/drop decision (big run); it is below 1 because the extractors differ (MainTextExtractor vs trafilatura): the
filters alone agree with datatrove's on every document (tests/test_data_filters.py). Last line:
``data_throughput docs_per_s ours=<a> datatrove=<b> ratio=<a/b> agreement=<x> docs=<n> kept ours=<k1> datatrove=<k2>
end_to_end=<wall ratio>``

``--classifier RUN/quality`` adds a third chain, ours with the quality classifier scoring every page that passes the
rule filters (step 4b, nothing dropped), and a last line with its cost apart:
``data_throughput_classifier ms_per_page=<step seconds per scored page, model loading included> pages=<n>
docs_per_s ours+classifier=<c> ours=<a> ratio_to_datatrove=<c/b>``

Timings on a shared machine vary from run to run: the start-up alone varies by seconds, and the marginal rate is a
difference of two wall times (it can even come out negative). ``--rounds R`` runs each chain R times per input size,
alternating the chains, and keeps each one's fastest run (the least disturbed); read the per-step seconds (summed
over tasks, start-up included; those printed are each run's) with it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_pipeline.data.stats import step_seconds  # noqa: E402


def kept_key(writer, doc) -> dict:
    return {"key": f"{doc.metadata.get('source_file')}#{doc.id}"}


def stock_steps(timeout: float):
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import (
        C4QualityFilter, FineWebQualityFilter, GopherQualityFilter, GopherRepetitionFilter, URLFilter,
    )
    from tldextract import TLDExtract

    from hf_pipeline.data.lid import OfflineLanguageFilter

    url_filter = URLFilter()
    url_filter.tldextractor = TLDExtract(suffix_list_urls=(), fallback_to_snapshot=True)
    return [
        url_filter,
        Trafilatura(favour_precision=True, timeout=timeout),
        OfflineLanguageFilter(languages=("en",), language_threshold=0.65),
        GopherRepetitionFilter(),
        GopherQualityFilter(),
        C4QualityFilter(filter_no_terminal_punct=False),
        FineWebQualityFilter(),
    ]


def our_steps(timeout: float, out: Path, classifier: str | None = None):
    """The data stage's steps 1-4; with ``classifier`` (a quality classifier: RUN/quality, a fastText file...),
    step 4b too, scoring only (nothing dropped, so that the chains' decisions stay comparable)."""
    from hf_pipeline.config import DataConfig
    from hf_pipeline.data.filters import word_tokenizer_for
    from hf_pipeline.data.pipeline import filter_steps

    if not classifier:
        config = DataConfig(inputs=["unused"], extractor_timeout=timeout)
        return [step for _, step in filter_steps(config, out, word_tokenizer_for("en"))]
    from hf_pipeline.data.pipeline import classifier_steps

    config = DataConfig(inputs=["unused"], extractor_timeout=timeout,
                        classifiers=[{"name": "quality", "model": classifier}])
    steps = filter_steps(config, out, word_tokenizer_for("en")) + classifier_steps(config, out)
    return [step for _, step in steps]


def run_chain(name: str, steps, root: str, paths_file: str, url_map: dict, workers: int, run_dir: Path):
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.writers import JsonlWriter

    from hf_pipeline.data.readers import WebReader

    reader = WebReader(root, paths_file=paths_file, url_by_file=url_map)
    writer = JsonlWriter(str(run_dir / "kept"), output_filename="${rank}.jsonl", compression=None,
                         adapter=kept_key)
    executor = LocalPipelineExecutor([reader, *steps, writer], tasks=workers, workers=workers,
                                     logging_dir=str(run_dir / "logs"), skip_completed=False)
    start = time.perf_counter()
    executor.run()
    seconds = time.perf_counter() - start
    stats = json.loads((run_dir / "logs" / "stats.json").read_text())
    read = int(stats[0]["stats"].get("doc_len", {}).get("n", 0))
    steps = ", ".join(f"{entry['name'].split(': ')[-1]} {step_seconds(entry):.1f}" for entry in stats)
    print(f"{name}: seconds per step, summed over tasks: {steps}")
    kept = set()
    for path in (run_dir / "kept").glob("*.jsonl"):
        kept.update(json.loads(line)["key"] for line in path.read_text().splitlines())
    classified = [(step_seconds(e), int(e["stats"].get("total", 0))) for e in stats
                  if "classifier" in e["name"].lower()]
    return read, kept, seconds, classified[0] if classified else None


def link_inputs(work: Path, files: list[Path], repeat: int) -> tuple[Path, Path]:
    """A folder with each input ``repeat`` times (links keep the file name, so HTML files keep their URL)."""
    inputs = work / f"inputs_x{repeat}"
    lines = []
    for copy in range(repeat):
        for i, f in enumerate(files):
            link = inputs / f"{copy:03d}" / f"{i:05d}" / f.name
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(f, link)
            lines.append(str(link.relative_to(inputs)))
    paths_file = work / f"paths_x{repeat}.txt"
    paths_file.write_text("\n".join(lines) + "\n")
    return inputs, paths_file


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", nargs="+", required=True, help="WARC/WET/HTML/JSONL files.")
    parser.add_argument("--url_map", default=None, help="JSON {file stem: url or {url}} for plain HTML files.")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1,
                        help="Feed every input file this many times; above 1, each chain also runs on the inputs "
                             "once, and docs/s is the marginal rate between the two runs (start-up excluded).")
    parser.add_argument("--timeout", type=float, default=1.0, help="Extractor timeout (seconds) in both chains.")
    parser.add_argument("--classifier", default=None,
                        help="A quality classifier (e.g. runs/tiny/quality): a third chain, ours with the classifier "
                             "step scoring every page, gives its cost apart (last line data_throughput_classifier).")
    parser.add_argument("--rounds", type=int, default=1,
                        help="Run each chain this many times per input size (alternating the chains) and keep each "
                             "one's fastest run: on a shared machine the least disturbed.")
    args = parser.parse_args()

    from hf_pipeline.data.readers import load_url_map

    files = [Path(f).resolve() for f in args.input]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        sys.exit(f"data_throughput: input not found: {missing[0]}")
    url_map = load_url_map(args.url_map)
    sizes = [1, args.repeat] if args.repeat > 1 else [1]
    runs = {}  # (chain, repeat) -> (documents read, kept keys, seconds)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for repeat in sizes:
            inputs, paths_file = link_inputs(work, files, repeat)
            for round_ in range(max(args.rounds, 1)):
                for name in ("datatrove", "ours", *(("ours+classifier",) if args.classifier else ())):
                    steps = (stock_steps(args.timeout) if name == "datatrove" else
                             our_steps(args.timeout, work, args.classifier if name != "ours" else None))
                    run_dir = work / f"{name}_x{repeat}_{round_}"
                    result = run_chain(name, steps, str(inputs), str(paths_file), url_map, args.workers, run_dir)
                    read, kept, seconds, _ = result
                    print(f"{name} x{repeat}: {read} documents in {seconds:.1f} s, kept {len(kept)}")
                    if (name, repeat) not in runs or seconds < runs[name, repeat][2]:
                        runs[name, repeat] = result
    big = sizes[-1]
    (read, ours_kept, *_), (read_stock, stock_kept, *_) = runs["ours", big], runs["datatrove", big]
    assert read == read_stock, "both chains must read the same documents"
    agreement = 1 - len(ours_kept ^ stock_kept) / read if read else 1.0

    def rate(name):
        if len(sizes) == 1:
            return runs[name, 1][0] / runs[name, 1][2]
        (n1, _, t1, _), (n2, _, t2, _) = runs[name, 1], runs[name, big]
        return (n2 - n1) / (t2 - t1)

    ours_rate, stock_rate = rate("ours"), rate("datatrove")
    end_to_end = runs["datatrove", big][2] / runs["ours", big][2]
    print(f"end-to-end x{big}: wall time ratio datatrove/ours = {end_to_end:.2f} (start-up included)")
    print(f"data_throughput docs_per_s ours={ours_rate:.1f} datatrove={stock_rate:.1f} "
          f"ratio={ours_rate / stock_rate:.2f} agreement={agreement:.4f} docs={read} "
          f"kept ours={len(ours_kept)} datatrove={len(stock_kept)} end_to_end={end_to_end:.2f}")
    if args.classifier:  # its seconds (model loading included) over the pages it scored, and the chain's rate with it
        step_s, scored = runs["ours+classifier", big][3]
        print(f"data_throughput_classifier ms_per_page={1000 * step_s / max(scored, 1):.2f} pages={scored} "
              f"docs_per_s ours+classifier={rate('ours+classifier'):.1f} ours={ours_rate:.1f} "
              f"ratio_to_datatrove={rate('ours+classifier') / stock_rate:.2f}")


if __name__ == "__main__":
    main()
