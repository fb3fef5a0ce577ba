"""The web reader on real WARC/WET/HTML files, and every kind of bad input counted under its reason."""

from __future__ import annotations

import gzip
import json
import os
import uuid

from conftest import SHARED_DATA
from hf_pipeline.data.readers import WebReader, decode_html

WEB = SHARED_DATA / "web"


def read(folder, **kwargs):
    reader = WebReader(str(folder), **kwargs)
    docs = list(reader.run())
    return docs, reader.stats.to_dict()["stats"]


def warc_record(url: str, content_type: str, body: bytes) -> bytes:
    http = b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type.encode() + b"\r\n\r\n" + body
    head = (
        f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Record-ID: <urn:uuid:{uuid.uuid4()}>\r\n"
        f"WARC-Target-URI: {url}\r\nWARC-Date: 2024-01-01T00:00:00Z\r\n"
        f"Content-Type: application/http; msgtype=response\r\nContent-Length: {len(http)}\r\n\r\n"
    )
    return head.encode() + http + b"\r\n\r\n"


def test_real_common_crawl_and_clueweb_warcs(tmp_path):
    for name in ("cc-main-2020-34_excerpt.warc.gz", "clueweb09-ja_excerpt.warc.gz", "whirlwind.warc.wet.gz"):
        os.symlink(WEB / name, tmp_path / name)
    docs, stats = read(tmp_path)
    by_file = {}
    for d in docs:
        by_file.setdefault(d.metadata["source_file"], []).append(d)
    assert len(by_file["cc-main-2020-34_excerpt.warc.gz"]) == 16
    assert len(by_file["clueweb09-ja_excerpt.warc.gz"]) == 29  # WARC/0.18 with bad dates, multi-member gzip
    wet = by_file["whirlwind.warc.wet.gz"][0]
    assert wet.metadata["is_plain_text"] and wet.metadata["url"] == "https://an.wikipedia.org/wiki/Escopete"
    cc = by_file["cc-main-2020-34_excerpt.warc.gz"][0]
    assert cc.metadata["url"].startswith("http") and cc.id.startswith("<urn:uuid:") and "<html" in cc.text.lower()
    offsets = [d.metadata["source_offset"] for d in by_file["cc-main-2020-34_excerpt.warc.gz"]]
    assert offsets == sorted(offsets) and len(set(offsets)) == 16
    assert stats["documents"]["total"] == 46


def test_html_files_and_jsonl_rows(tmp_path):
    truth = json.loads((WEB / "article_extraction" / "ground-truth.json").read_text())
    first = sorted(truth)[0]
    docs, _ = read(WEB / "article_extraction" / "html", limit=2, url_by_file={first: truth[first]["url"]})
    assert docs[0].id == first and docs[0].metadata["url"] == truth[first]["url"] and "<" in docs[0].text

    html = gzip.open(WEB / "article_extraction" / "html" / f"{first}.html.gz").read().decode("utf-8", "replace")
    lines = [json.dumps({"url": "https://a.example/1", "html": html}), "{broken json", json.dumps({"url": "x"}),
             json.dumps({"url": "https://a.example/2", "html": "  "}), ""]
    (tmp_path / "pages.jsonl").write_text("\n".join(lines))
    docs, stats = read(tmp_path)
    assert [d.metadata["url"] for d in docs] == ["https://a.example/1"]
    assert docs[0].metadata["source_line"] == 1
    assert stats["bad_json_line"] == 1 and stats["missing_html_field"] == 1 and stats["skipped_empty"] == 1


def test_bad_records_are_counted_not_lost(tmp_path):
    records = [
        warc_record("https://ok.example/", "text/html; charset=utf-8", b"<html><body><p>Fine page.</p></body></html>"),
        warc_record("https://pdf.example/", "application/pdf", b"%PDF-1.4 binary"),
        warc_record("https://empty.example/", "text/html", b"   "),
        warc_record("https://binary.example/", "text/html", bytes(range(256)) * 8),
        warc_record("https://latin.example/", "text/html; charset=iso-8859-1", "<p>Caf\xe9 cr\xe8me</p>".encode("latin-1")),
    ]
    with gzip.open(tmp_path / "mixed.warc.gz", "wb") as f:
        f.write(b"".join(records))
    docs, stats = read(tmp_path)
    assert [d.metadata["url"] for d in docs] == ["https://ok.example/", "https://latin.example/"]
    assert "Café crème" in docs[1].text
    assert stats["skipped_non_html"] == 1 and stats["skipped_empty"] == 1 and stats["skipped_undecodable"] == 1


def test_truncated_gzip_keeps_what_was_read_and_counts_the_file(tmp_path):
    data = (WEB / "cc-main-2020-34_excerpt.warc.gz").read_bytes()
    (tmp_path / "cut.warc.gz").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.txt").write_text("not a web file")
    docs, stats = read(tmp_path)
    assert 0 < len(docs) < 16
    assert stats["file_truncated"] == 1 and stats["skipped_unknown_file_type"] == 1


def test_decode_html():
    assert decode_html("héllo".encode("utf-8")) == "héllo"
    assert decode_html("h\xe9llo wörld".encode("cp1252"), "cp1252") == "h\xe9llo wörld"
    assert decode_html(os.urandom(4000)) is None


def test_files_that_are_not_what_their_name_says_are_counted_as_files_and_named(tmp_path):
    """Random bytes or an HTML error page saved as .warc.gz used to give 0 documents and no trace; now each such file
    is counted once, as a file (never as documents), with a warning naming it."""
    from loguru import logger

    page = b"<html><head><title>404 Not Found</title></head><body><h1>Not Found</h1></body></html>"
    (tmp_path / "random.warc.gz").write_bytes(os.urandom(5000))
    (tmp_path / "error.warc.gz").write_bytes(page)
    (tmp_path / "gzipped.warc.gz").write_bytes(gzip.compress(page))
    (tmp_path / "random.html.gz").write_bytes(os.urandom(5000))  # not gzip at all: unreadable, not "truncated"
    (tmp_path / "nothing.warc.gz").write_bytes(b"")
    (tmp_path / "good.warc").write_bytes(warc_record("https://ok.example/", "text/html",
                                                     b"<html><body><p>Fine page.</p></body></html>"))
    warnings = []
    sink = logger.add(lambda message: warnings.append(str(message)), level="WARNING")
    try:
        docs, stats = read(tmp_path)
    finally:
        logger.remove(sink)
    assert [d.metadata["url"] for d in docs] == ["https://ok.example/"]
    assert stats["file_unreadable"] == 4 and stats["file_empty"] == 1 and "file_truncated" not in stats
    assert stats["input_files"] == 6 and stats["documents"]["total"] == 1
    for name in ("random.warc.gz", "error.warc.gz", "gzipped.warc.gz", "random.html.gz", "nothing.warc.gz"):
        assert sum(name in w and ("file_unreadable" in w or "file_empty" in w) for w in warnings) == 1, (name, warnings)
