"""The data stage end to end: real WARC and HTML through FineWeb's chain, dedup, PII, stats, bad input, resume."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest

from conftest import HTML, ROOT, TRUTH, WEB, run_cli
from hf_pipeline.config import ConfigError, DataConfig, Source, build_config
from hf_pipeline.data import pipeline

FINEWEB_ORDER = ["read", "url_filter", "extraction", "language", "gopher_repetition", "gopher_quality", "c4_quality",
                 "fineweb_quality", "exact_dedup", "minhash_dedup", "pii"]


def load(run_dir: Path):
    return datasets.load_dataset(str(run_dir / "data"), split="train")


def stats_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "data" / "stats.json").read_text())


def test_whole_chain_on_real_web_input(web_run):
    ds = load(web_run)
    assert set(ds.column_names) == {"text", "id", "url", "date", "language", "language_score", "source_file",
                                    "source_offset"}
    assert 40 <= len(ds) <= 90  # English news pages survive; Chinese/Japanese WARC pages do not
    assert set(ds["language"]) == {"en"} and min(ds["language_score"]) >= 0.65
    truth = json.loads(TRUTH.read_text())
    for row in ds:
        if row["source_file"].endswith(".html.gz"):
            assert row["url"] == truth[row["id"]]["url"]
        else:  # an English page of the Common Crawl excerpt
            assert row["source_file"].endswith(".warc.gz") and row["url"].startswith("http")
            assert row["source_offset"] > 0 and row["date"].startswith("20")
        assert row["text"].strip() and "<div" not in row["text"]
    assert sum(row["source_file"].endswith(".html.gz") for row in ds) >= 40
    assert len(set(ds["id"])) == len(ds)


def test_stats_follow_fineweb_order_and_account_for_every_document(web_run):
    stats = stats_of(web_run)
    steps = stats["steps"]
    assert [s["step"] for s in steps] == FINEWEB_ORDER
    assert steps[0]["docs_in"] == 90 + 16 + 29 + 1  # article pages + the three WARC excerpts' HTML responses
    for before, after in zip(steps, steps[1:]):
        assert after["docs_in"] == before["docs_out"] and after["chars_in"] == before["chars_out"]
    for step in steps:
        assert step["docs_in"] - step["docs_out"] == sum(step["dropped"].values()), step
    assert stats["accounting"] == []  # the stage's own check found nothing amiss
    assert stats["files"] == {"input_files": 90 + 3} == steps[0]["files"]  # files apart from documents
    by_step = {s["step"]: s for s in steps}
    assert by_step["language"]["dropped"]["language"] >= 40
    assert by_step["extraction"]["chars_out"] < by_step["extraction"]["chars_in"] / 10  # HTML -> text
    assert stats["docs_out"] == len(load(web_run)) and stats["chars_out"] == sum(map(len, load(web_run)["text"]))
    metrics = json.loads((web_run / "data" / "metrics.json").read_text())
    assert metrics["docs_out"] == stats["docs_out"] and metrics["dropped_language"] == sum(
        by_step["language"]["dropped"].values())
    assert metrics["accounting_problems"] == 0 and metrics["files_in"] == 93
    # working files are gone once published; the datatrove logs stay beside the stage for inspection
    assert not (web_run / "data.incomplete").exists()
    assert sorted(p.name for p in (web_run / "data.work").iterdir()) == ["logs"]


def test_dropped_documents_are_kept_with_their_reason(web_run):
    dropped = web_run / "data" / "dropped"
    language = [json.loads(line) for f in (dropped / "language").glob("*.jsonl.gz")
                for line in gzip.open(f, "rt")]
    assert language and all(d["metadata"]["filter_reason"] == "language" for d in language)
    assert {d["metadata"]["language"] for d in language} & {"ja", "zh"}  # the ClueWeb and CC pages
    stats = {s["step"]: s for s in stats_of(web_run)["steps"]}
    for step in ("gopher_quality", "language"):
        rows = sum(1 for f in (dropped / step).glob("*.jsonl.gz") for _ in gzip.open(f, "rt"))
        assert rows == sum(stats[step]["dropped"].values())


def _copy_pages(tmp_path: Path, ids: list[str]) -> Path:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for page_id in ids:
        shutil.copy(HTML / f"{page_id}.html.gz", inputs)
    return inputs


def _body_words(html: str, n: int) -> list[str]:
    """n words of the article's extracted text that occur once in the HTML (safe to edit in place)."""
    from hf_pipeline.data.extract import extract_text

    text = extract_text(html)
    words = re.findall(r"\b[a-z]{7,}\b", text[len(text) // 3:])
    unique = [w for w in dict.fromkeys(words) if html.count(w) == 1][:n]
    assert len(unique) == n
    return unique


def _edit_words(html: str, n: int) -> str:
    """Change n words of the article's text (a reader would call it the same page, slightly edited)."""
    for word in _body_words(html, n):
        html = html.replace(word, "rewritten")
    return html


def test_near_and_exact_duplicates_removed_distinct_pages_kept_pii_replaced(web_run, tmp_path):
    kept = sorted(load(web_run)["id"])[:6]
    inputs = _copy_pages(tmp_path, kept)
    truth = json.loads(TRUTH.read_text())
    urls = {k: truth[k]["url"] for k in kept}
    # an exact copy of page 0 under another name, an edited copy of page 1, and an email written into page 2
    shutil.copy(HTML / f"{kept[0]}.html.gz", inputs / "copy0.html.gz")
    html1 = gzip.open(HTML / f"{kept[1]}.html.gz", "rt", encoding="utf-8", errors="replace").read()
    edited = _edit_words(html1, 3)
    assert edited != html1
    (inputs / "edit1.html.gz").write_bytes(gzip.compress(edited.encode()))
    html2 = gzip.open(HTML / f"{kept[2]}.html.gz", "rt", encoding="utf-8", errors="replace").read()
    word = _body_words(html2, 1)[0]
    html2 = html2.replace(word, f"{word} (write to jane.doe@gmail.com or call (415) 555-2671)")
    (inputs / f"{kept[2]}.html.gz").write_bytes(gzip.compress(html2.encode()))
    urls.update({"copy0": "https://mirror.example.org/copy0", "edit1": "https://mirror.example.org/edit1"})
    (tmp_path / "urls.json").write_text(json.dumps(urls))

    out = pipeline.run(DataConfig(inputs=[str(inputs)], url_map=str(tmp_path / "urls.json"),
                                  output_dir=str(tmp_path / "run"), workers=2, keep_dropped=True))
    ds = datasets.load_dataset(str(out), split="train")
    stats = {s["step"]: s for s in json.loads((out / "stats.json").read_text())["steps"]}
    assert stats["exact_dedup"]["dropped"] == {"exact_duplicate": 1}
    assert stats["minhash_dedup"]["dropped"] == {"near_duplicate": 1}
    assert len(ds) == 6
    kept_ids = set(ds["id"])
    assert len(kept_ids & {kept[0], "copy0"}) == 1 and len(kept_ids & {kept[1], "edit1"}) == 1
    assert set(kept[2:]) <= kept_ids  # distinct pages stay
    text2 = ds.filter(lambda r: r["id"] == kept[2])[0]["text"]
    assert "jane.doe@gmail.com" not in text2 and "555-2671" not in text2
    assert "email@example.com" in text2 or "firstname.lastname@example.org" in text2
    assert stats["pii"]["counts"]["pii_email"] >= 1 and stats["pii"]["counts"]["pii_phone"] >= 1


def warc_record(url: str, content_type: str, body: bytes) -> bytes:
    http = b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type.encode() + b"\r\n\r\n" + body
    head = (f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Record-ID: <urn:uuid:0000-{len(body)}>\r\n"
            f"WARC-Target-URI: {url}\r\nWARC-Date: 2024-01-01T00:00:00Z\r\n"
            f"Content-Type: application/http; msgtype=response\r\nContent-Length: {len(http)}\r\n\r\n")
    return head.encode() + http + b"\r\n\r\n"


def test_bad_input_is_counted_under_named_reasons_and_the_run_goes_on(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    raw = (WEB / "cc-main-2020-34_excerpt.warc.gz").read_bytes()
    (inputs / "truncated.warc.gz").write_bytes(raw[: len(raw) // 2])
    page_ids = sorted(p.name.split(".")[0] for p in HTML.glob("*.html.gz"))
    page = gzip.open(HTML / f"{page_ids[0]}.html.gz").read()
    (inputs / "records.warc").write_bytes(
        warc_record("https://example.com/logo.png", "image/png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
        + warc_record("https://example.com/empty", "text/html", b"   ")
        + warc_record("https://example.com/page", "text/html; charset=utf-8", page)
    )
    (inputs / "rows.jsonl").write_text("\n".join([
        json.dumps({"url": "https://example.com/a", "html": page.decode("utf-8", "replace")}),
        '{"url": "https://example.com/broken", "html": "<p>cut',
        json.dumps({"url": "https://example.com/no-html"}),
    ]) + "\n")
    # pathological HTML: a page repeated until extraction cannot finish within the timeout
    (inputs / "huge.html.gz").write_bytes(gzip.compress(page * 400))
    # files that are not what their names say: random bytes, an HTML error page saved as a WARC
    (inputs / "random.warc.gz").write_bytes(os.urandom(4096))
    (inputs / "error_page.warc.gz").write_bytes(b"<html><body><h1>503 Service Unavailable</h1></body></html>")
    out = pipeline.run(DataConfig(inputs=[str(inputs)], output_dir=str(tmp_path / "run"), workers=2,
                                  extractor_timeout=0.2))
    stats = json.loads((out / "stats.json").read_text())
    read = {s["step"]: s for s in stats["steps"]}
    # files are counted apart from documents: the drops of `read` are documents only and add up
    assert read["read"]["files"] == {"input_files": 6, "file_truncated": 1, "file_unreadable": 2}
    assert not any(reason.startswith("file_") for step in stats["steps"] for reason in step["dropped"])
    assert read["read"]["docs_in"] == read["read"]["docs_out"] + sum(read["read"]["dropped"].values())
    assert stats["accounting"] == [] and stats["files"] == read["read"]["files"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dropped_read"] == sum(read["read"]["dropped"].values()) >= 4  # documents, not files
    assert metrics["file_unreadable"] == 2 and metrics["files_in"] == 6
    assert read["read"]["files"]["file_truncated"] == 1
    assert read["read"]["dropped"]["skipped_non_html"] == 1
    assert read["read"]["dropped"]["skipped_empty"] == 1
    assert read["read"]["dropped"]["bad_json_line"] == 1
    assert read["read"]["dropped"]["missing_html_field"] == 1
    assert read["extraction"]["dropped"]["timeout"] == 1
    assert read["read"]["docs_out"] >= 3  # the truncated file's first records, the WARC page, the JSONL page


def test_missing_input_and_bad_config_fail_at_start_with_one_line(tmp_path):
    cases = [
        (["--inputs", tmp_path / "nope.warc.gz"], "nope.warc.gz"),
        (["--inputs", HTML, "--url_map", tmp_path / "missing.json"], "missing.json"),
        (["--inputs", HTML, "--step_args", '{"gopher_qualty": {}}'], "did you mean 'gopher_quality'"),
        (["--inputs", HTML, "--executor", "slurm"], "partition"),
        (["--inputs", HTML, "--language_threshold", "1.5"], "language_threshold"),
        (["--inputs", HTML, "--workers", "-1"], "data.workers: must be >= 0"),  # was an empty dataset, exit 0
        (["--inputs", HTML, "--workers", "-3"], "data.workers: must be >= 0"),  # was a traceback
        (["--inputs", HTML, "--step_args", '{"gopher_quality": {"min_doc_wrds": 20}}'],
         "data.step_args.gopher_quality: unknown argument 'min_doc_wrds' (did you mean 'min_doc_words'?)"),
    ]
    for args, needle in cases:
        result = run_cli("data", *args, "--output_dir", tmp_path / "run")
        assert result.returncode == 2, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.startswith("hf-pipeline: error:")]
        assert len(lines) == 1 and needle in lines[0], result.stderr[-2000:]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, needle", [
    (["--workers", "-1"], "data.workers: must be >= 0"),
    (["--tasks", "-1"], "data.tasks: must be >= 0"),
    (["--limit", "-2"], "data.limit"),
    (["--limit", "0"], "data.limit: must be -1 (all) or >= 1, not 0"),  # 0 published an empty dataset
    (["--extractor_timeout", "-1"], "data.extractor_timeout: must be > 0"),  # dropped every page as a timeout
    (["--extractor_timeout", "nan"], "data.extractor_timeout"),
    (["--minhash_ngrams", "0"], "data.minhash_ngrams: must be >= 1"),
    (["--minhash_buckets", "0"], "data.minhash_buckets: must be >= 1"),
    (["--minhash_hashes_per_bucket", "0"], "data.minhash_hashes_per_bucket: must be >= 1"),
    (["--language_threshold", "-0.1"], "data.language_threshold"),
    (["--languages", "xx"], "data.languages: unknown language 'xx'"),
    (["--step_args", '{"gopher_quality": {"min_doc_wrds": 20}}'],
     "data.step_args.gopher_quality: unknown argument 'min_doc_wrds' (did you mean 'min_doc_words'?)"),
    (["--step_args", '{"c4_quality": {"min_num_sentence": 3}}'], "(did you mean 'min_num_sentences'?)"),
    (["--step_args", '{"url_filter": {"use_integrated_list": false}}'], "(did you mean 'use_integrated_lists'?)"),
    (["--step_args", '{"extraction": {"min_text_char": 10}}'], "(did you mean 'min_text_chars'?)"),
    (["--extractor", "trafilatura", "--step_args", '{"extraction": {"favor_precision": true}}'],
     "(did you mean 'favour_precision'?)"),
    (["--step_args", '{"gopher_quality": {"min_doc_words": "many"}}'],
     "data.step_args.gopher_quality.min_doc_words: must be a number"),
    (["--step_args", '{"language": {"language_threshold": 0.2}}'], "set by data.language_threshold"),
    (["--step_args", '{"gopher_quality": {"exclusion_writer": null}}'], "set by data.keep_dropped"),
    (["--executor_options", '{"start_metod": "fork"}'],
     "data.executor_options (local): unknown argument 'start_metod' (did you mean 'start_method'?)"),
    (["--executor", "slurm", "--executor_options", '{"partition": "cpu", "cpus_per_tsk": 2}'],
     "(did you mean 'cpus_per_task'?)"),
    (["--executor_options", '{"workers": 3}'], "set by data.workers"),
])
def test_out_of_range_numbers_and_unknown_step_arguments_are_one_line_config_errors(args, needle, tmp_path):
    with pytest.raises(ConfigError) as error:
        build_config("data", ["--inputs", str(HTML), "--output_dir", str(tmp_path), *args])
    assert needle in str(error.value) and "\n" not in str(error.value)
    # the ones it accepts are accepted: known arguments of each step's class
    build_config("data", ["--inputs", str(HTML), "--step_args", json.dumps({
        "gopher_quality": {"min_doc_words": 20}, "c4_quality": {"min_num_sentences": 3},
        "url_filter": {"use_integrated_lists": False}, "extraction": {"min_text_chars": 100},
        "language": {"label_only": False}})])
    build_config("data", ["--inputs", str(HTML), "--executor", "slurm", "--executor_options", json.dumps(
        {"partition": "cpu", "time": "10:00:00", "cpus_per_task": 2, "mem_per_cpu_gb": 4})])  # as the README says


def test_slurm_switch_builds_datatrove_slurm_executors(tmp_path):
    from datatrove.executor import SlurmPipelineExecutor

    config = DataConfig(inputs=[str(HTML)], output_dir=str(tmp_path), executor="slurm",
                        executor_options={"partition": "cpu", "time": "01:00:00", "cpus_per_task": 2})
    root, files = pipeline.input_files(config.inputs)
    stages = pipeline.build_stages(config, root, files, tmp_path / "out", tmp_path)
    executor = None
    for stage in stages:
        executor = pipeline.make_executor(config, stage, tmp_path / "logs" / stage["name"], depends=executor)
        assert isinstance(executor, SlurmPipelineExecutor) and executor.partition == "cpu"
    assert executor.depends is not None and executor.cpus_per_task == 2
    assert [s["name"] for s in stages] == ["filter", "exact_find", "exact_filter", "minhash_buckets",
                                           "minhash_cluster", "final"]


# The resume tests' recipe: 24 pages in 4 tasks; ``small_clean`` is its uninterrupted run, to compare with
SMALL_ARGS = ["--tasks", "4", "--workers", "1", "--url_filter", "false"]


def _page_ids() -> list[str]:
    return sorted(p.name.split(".")[0] for p in HTML.glob("*.html.gz"))


@pytest.fixture(scope="module")
def small_clean(tmp_path_factory) -> tuple[Path, Path]:
    """(inputs, run folder) of an uninterrupted run of the small recipe."""
    tmp = tmp_path_factory.mktemp("small")
    inputs = _copy_pages(tmp, _page_ids()[:24])
    pipeline.run(build_config("data", ["--inputs", str(inputs), "--output_dir", str(tmp / "clean"), *SMALL_ARGS]))
    return inputs, tmp / "clean"


def comparable(stats: dict) -> dict:
    """stats.json without what differs between two runs of the same recipe (timings, the run folder)."""
    steps = [{k: v for k, v in step.items() if k != "seconds"} for step in stats["steps"]]
    return {**{k: v for k, v in stats.items() if k != "config"}, "steps": steps}


def rows(run_dir: Path) -> list[tuple]:
    ds = load(run_dir)
    assert len(set(ds["id"])) == len(ds)  # no duplicate output
    return sorted(zip(ds["id"], ds["text"]))


def live_processes(pgid: int) -> list[str]:
    """The processes of group ``pgid`` still running (not zombies), from /proc: ``pid cmdline`` each."""
    left = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            state, _, group = text[text.rindex(")") + 2:].split()[:3]
            if int(group) == pgid and state not in "ZX":
                left.append(f"{stat.parent.name} {(stat.parent / 'cmdline').read_bytes()[:120]!r}")
        except (OSError, ValueError):
            continue
    return left


def wait_for_no_process(pgid: int, seconds: float = 30) -> list[str]:
    deadline = time.time() + seconds
    while (left := live_processes(pgid)) and time.time() < deadline:
        time.sleep(0.2)
    return left


def start_data_cli(inputs: Path, run_dir: Path, log: Path, *args: str) -> subprocess.Popen:
    """``hf-pipeline data`` in its own process group (its workers and helpers too), as a terminal runs it; its
    output goes to ``log`` (a pipe would stay open as long as any process of the group lives)."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "hf_pipeline", "data", "--inputs", str(inputs), "--output_dir", str(run_dir),
               *args]
    with open(log, "w") as out:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def wait_for(predicate, seconds: float = 300) -> None:
    deadline = time.time() + seconds
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


def test_killed_run_resumes_without_redoing_finished_tasks_or_duplicating_output(tmp_path, small_clean):
    inputs, clean = small_clean
    args = ["-m", "hf_pipeline", "data", "--inputs", str(inputs), "--output_dir", str(tmp_path / "run"), *SMALL_ARGS]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    completions = tmp_path / "run" / "data.work" / "logs" / "filter" / "completions"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(completions.glob("*")) if completions.is_dir() else []) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in completions.iterdir())
    assert 2 <= len(done) and not (tmp_path / "run" / "data").exists()
    stats_files = {p.name: p.stat().st_mtime_ns for p in (completions.parent / "stats").glob("*.json")
                   if p.stem in done}

    result = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for name, mtime in stats_files.items():  # finished tasks were skipped, not redone
        assert (completions.parent / "stats" / name).stat().st_mtime_ns == mtime
    resumed = datasets.load_dataset(str(tmp_path / "run" / "data"), split="train")

    fresh = load(clean)
    assert len(set(resumed["id"])) == len(resumed) == len(fresh)
    assert sorted(zip(resumed["id"], resumed["text"])) == sorted(zip(fresh["id"], fresh["text"]))
    # the stats count what the whole run did (the killed process's tasks too), as a clean run counts it
    stats = stats_of(tmp_path / "run")
    assert comparable(stats) == comparable(stats_of(clean))
    assert stats["docs_in"] == 24 and stats["accounting"] == []
    metrics = json.loads((tmp_path / "run" / "data" / "metrics.json").read_text())
    assert metrics == json.loads((clean / "data" / "metrics.json").read_text()) and metrics["kept_fraction"] <= 1


@pytest.mark.parametrize("how", ["sigint_to_group", "sigkill_to_main_process"])
def test_interrupted_run_leaves_no_process_never_looks_complete_and_resumes(how, tmp_path, small_clean):
    """Ctrl-C (SIGINT to the process group) or a kill of the main process alone, while the first stage runs on
    two workers: nothing of the run is left running, RUN/data is not there, and a re-run ends with the rows and
    stats of a clean run."""
    inputs, clean = small_clean
    run_dir = tmp_path / "run"
    log = tmp_path / "output.txt"
    proc = start_data_cli(inputs, run_dir, log, "--tasks", "4", "--workers", "2", "--url_filter", "false")
    task_logs = run_dir / "data.work" / "logs" / "filter" / "logs"
    try:
        wait_for(lambda: task_logs.is_dir() and len(list(task_logs.iterdir())) >= 2)  # both workers under way
        time.sleep(0.1)  # (a small input finishes soon after: interrupt it while it runs)
        if how == "sigint_to_group":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=120)
        assert proc.returncode in (130, -signal.SIGINT, -signal.SIGKILL), log.read_text()[-3000:]
        assert wait_for_no_process(proc.pid) == []  # no worker, sandbox or helper process goes on
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever a failure left behind
    assert not (run_dir / "data").exists()  # never looks complete
    assert not (run_dir / "data.incomplete" / "stats.json").exists()

    pipeline.run(build_config("data", ["--inputs", str(inputs), "--output_dir", str(run_dir), "--tasks", "4",
                                       "--workers", "2", "--url_filter", "false"]))
    assert rows(run_dir) == rows(clean)
    assert comparable(stats_of(run_dir))["steps"] == comparable(stats_of(clean))["steps"]
    assert stats_of(run_dir)["accounting"] == []


def test_deleted_dataset_is_rebuilt_not_a_traceback(tmp_path, small_clean):
    """RUN/data deleted after a finished run (RUN/data.work/logs stays): a re-run rebuilds it."""
    inputs, clean = small_clean
    args = ["--inputs", str(inputs), "--output_dir", str(tmp_path), *SMALL_ARGS]
    shutil.copytree(clean / "data.work", tmp_path / "data.work")  # what a finished run leaves beside RUN/data
    out = pipeline.run(build_config("data", args))
    assert rows(tmp_path) == rows(clean) and comparable(stats_of(tmp_path)) == comparable(stats_of(clean))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".lock") == ["data", "data.work"]


def test_overwrite_starts_over_with_the_new_recipe_and_replaces_the_dataset(tmp_path, small_clean):
    inputs, clean = small_clean
    shutil.copytree(clean, tmp_path, dirs_exist_ok=True)  # a finished run of the small recipe
    (tmp_path / "data.incomplete").mkdir()  # and leftovers of a killed one
    (tmp_path / "data.incomplete" / "stale.txt").write_text("from an older run")
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "data" / "data").glob("*.parquet")}
    args = ["--inputs", str(inputs), "--output_dir", str(tmp_path), *SMALL_ARGS, "--overwrite", "true"]

    pipeline.run(build_config("data", args + ["--language_filter", "false"]))
    stats = stats_of(tmp_path)
    assert "language" not in [s["step"] for s in stats["steps"]] and stats["accounting"] == []
    assert "language_filter: false" in (tmp_path / "data" / "config.yaml").read_text()
    ds = load(tmp_path)
    assert stats["docs_out"] == len(ds) and set(ds["language"]) == {None}  # no language ID ran
    assert not (tmp_path / "data" / "stale.txt").exists() and not (tmp_path / "data.incomplete").exists()
    assert sorted(p.name for p in (tmp_path / "data.work").iterdir()) == ["logs"]

    pipeline.run(build_config("data", args))  # the same recipe again: redone, not skipped
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "data" / "data").glob("*.parquet")}
    assert after.keys() == before.keys() and all(after[k] > before[k] for k in after)
    assert rows(tmp_path) == rows(clean) and comparable(stats_of(tmp_path)) == comparable(stats_of(clean))
    assert "language_filter: true" in (tmp_path / "data" / "config.yaml").read_text()
    assert not (tmp_path / "data.incomplete").exists()


def _task_stats(folder: Path, rank: int, steps: list[tuple[str, dict]]) -> None:
    """A datatrove per-task stats file: one entry per pipeline step."""
    (folder / "stats").mkdir(parents=True, exist_ok=True)
    entries = [{"name": name, "time_stats": 0.5, "stats": stats} for name, stats in steps]
    (folder / "stats" / f"{rank:05d}.json").write_text(json.dumps(entries))


def test_stats_add_up_every_task_and_say_loudly_where_documents_do_not_add_up(tmp_path, caplog):
    from hf_pipeline.data.stats import collect_stats, summary_metrics

    logs = tmp_path / "logs"
    for rank in range(2):  # two tasks of one stage: read -> language -> writer
        _task_stats(logs / "filter", rank, [
            ("reader", {"input_files": 2, "documents": {"total": 10, "unit": "input_file"}, "skipped_empty": 1,
                        "file_truncated": 1, "doc_len": {"total": 1000, "mean": 100.0}}),
            ("language", {"total": 10, "forwarded": 7, "dropped": 2, "dropped_language": 2,
                          "doc_len": {"total": 500, "mean": 71.4}}),  # 10 in, 7 out, 2 dropped: one lost
            ("writer", {"total": 7})])
    stages = [{"name": "filter", "tasks": 3, "report": ["read", "language", None]}]  # task 2 never ran
    with caplog.at_level("WARNING", logger="hf_pipeline"):
        stats = collect_stats(stages, logs, published=13)
    read, language = stats["steps"]
    assert (read["docs_in"], read["docs_out"], read["dropped"]) == (22, 20, {"skipped_empty": 2})
    assert read["files"] == {"input_files": 4, "file_truncated": 2} == stats["files"]  # files, not documents
    assert (language["docs_in"], language["docs_out"], language["dropped"]) == (20, 14, {"language": 4})
    assert language["chars_in"] == 2000 and language["chars_out"] == 1000
    assert stats["accounting"] == [
        "language: docs_in 20 != docs_out 14 + dropped 4",
        "published: 13 rows != docs_out 14 of language",
        "filter: no stats for task(s) 00002 of 3",
    ]
    for problem in stats["accounting"]:  # and each one is a warning naming the step
        assert any(problem in r.getMessage() and r.levelname == "WARNING" for r in caplog.records), problem
    assert summary_metrics(stats)["accounting_problems"] == 3


def test_a_step_with_one_document_counts_it(tmp_path):
    """datatrove writes a one-document ``doc_len`` without ``n``: the read step said 0 -> 0."""
    from datatrove.utils.stats import PipelineStats

    from hf_pipeline.data.readers import WebReader
    from hf_pipeline.data.stats import collect_stats

    page = _page_ids()[0]
    (tmp_path / "in").mkdir()
    shutil.copy(HTML / f"{page}.html.gz", tmp_path / "in")
    reader = WebReader(str(tmp_path / "in"))
    docs = list(reader.run())
    (tmp_path / "logs" / "filter" / "stats").mkdir(parents=True)
    with open(tmp_path / "logs" / "filter" / "stats" / "00000.json", "w") as f:
        PipelineStats([reader]).save_to_disk(f)
    stats = collect_stats([{"name": "filter", "tasks": 1, "report": ["read"]}], tmp_path / "logs",
                          published=1, expected_files=1)
    (read,) = stats["steps"]
    assert (read["docs_in"], read["docs_out"], read["chars_out"]) == (1, 1, len(docs[0].text))
    assert stats["accounting"] == [] and stats["files"] == {"input_files": 1}


def test_tiny_recipe_feeds_the_data_stage_output_to_pretraining(web_run, tmp_path):
    from hf_pipeline.corpus import load_source

    recipe = ["--config", str(ROOT / "recipes" / "tiny.yaml"), "--output_dir", str(tmp_path)]
    config = build_config("pretrain", recipe)
    assert str(tmp_path / "data") in [s.path for s in config.corpus]
    config.check(planned=("data", "facts", "tokenizer"))  # made earlier in the same run: fine
    with pytest.raises(ConfigError, match=f"pretrain.corpus: '{tmp_path / 'data'}' not found"):
        config.check(planned=("facts", "tokenizer"))
    docs = load_source(Source(path=str(web_run / "data")))
    assert len(docs) == len(load(web_run)) and docs.column_names == ["text"]


def test_remote_style_input_urls_resolve_like_local_paths():
    local = pipeline.input_files([str(WEB / "*.warc.gz")])
    url = pipeline.input_files([f"file://{WEB}/*.warc.gz"])
    assert url == (f"file://{WEB}", local[1]) and len(local[1]) == 3
    with pytest.raises(ConfigError, match="must be the only input"):
        pipeline.input_files([f"file://{WEB}/*.warc.gz", str(HTML)])
