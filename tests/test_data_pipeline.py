"""The data stage end to end: real WARC and HTML through FineWeb's chain, dedup, PII, stats, bad input, resume."""

from __future__ import annotations

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
    by_step = {s["step"]: s for s in steps}
    assert by_step["language"]["dropped"]["language"] >= 40
    assert by_step["extraction"]["chars_out"] < by_step["extraction"]["chars_in"] / 10  # HTML -> text
    assert stats["docs_out"] == len(load(web_run)) and stats["chars_out"] == sum(map(len, load(web_run)["text"]))
    metrics = json.loads((web_run / "data" / "metrics.json").read_text())
    assert metrics["docs_out"] == stats["docs_out"] and metrics["dropped_language"] == sum(
        by_step["language"]["dropped"].values())
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
    out = pipeline.run(DataConfig(inputs=[str(inputs)], output_dir=str(tmp_path / "run"), workers=2,
                                  extractor_timeout=0.2))
    read = {s["step"]: s for s in json.loads((out / "stats.json").read_text())["steps"]}
    assert read["read"]["dropped"]["file_truncated"] == 1
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
    ]
    for args, needle in cases:
        result = run_cli("data", *args, "--output_dir", tmp_path / "run")
        assert result.returncode == 2, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.startswith("hf-pipeline: error:")]
        assert len(lines) == 1 and needle in lines[0], result.stderr[-2000:]
    assert not (tmp_path / "run").exists()


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


def test_killed_run_resumes_without_redoing_finished_tasks_or_duplicating_output(tmp_path):
    inputs = _copy_pages(tmp_path, sorted(p.name.split(".")[0] for p in HTML.glob("*.html.gz"))[:24])
    args = ["-m", "hf_pipeline", "data", "--inputs", str(inputs), "--output_dir", str(tmp_path / "run"),
            "--tasks", "4", "--workers", "1", "--url_filter", "false"]
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

    clean = pipeline.run(build_config("data", args[3:] + ["--output_dir", str(tmp_path / "clean")]))
    fresh = datasets.load_dataset(str(clean), split="train")
    assert len(set(resumed["id"])) == len(resumed) == len(fresh)
    assert sorted(zip(resumed["id"], resumed["text"])) == sorted(zip(fresh["id"], fresh["text"]))


def test_tiny_recipe_feeds_the_data_stage_output_to_pretraining(web_run, tmp_path):
    from hf_pipeline.corpus import load_source

    recipe = ["--config", str(ROOT / "recipes" / "tiny.yaml"), "--output_dir", str(tmp_path)]
    config = build_config("pretrain", recipe)
    assert str(tmp_path / "data") in [s.path for s in config.corpus]
    config.check(planned=("data", "tokenizer"))  # made earlier in the same run: fine
    with pytest.raises(ConfigError, match=f"pretrain.corpus: '{tmp_path / 'data'}' not found"):
        config.check(planned=("tokenizer",))
    docs = load_source(Source(path=str(web_run / "data")))
    assert len(docs) == len(load(web_run)) and docs.column_names == ["text"]


def test_remote_style_input_urls_resolve_like_local_paths():
    local = pipeline.input_files([str(WEB / "*.warc.gz")])
    url = pipeline.input_files([f"file://{WEB}/*.warc.gz"])
    assert url == (f"file://{WEB}", local[1]) and len(local[1]) == 3
    with pytest.raises(ConfigError, match="must be the only input"):
        pipeline.input_files([f"file://{WEB}/*.warc.gz", str(HTML)])
