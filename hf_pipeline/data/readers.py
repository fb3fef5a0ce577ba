"""Reading the web: WARC, WET, HTML files and JSONL with ``url``/``html``, as a datatrove reader that counts what it skips.

datatrove's own ``WarcReader`` drops non-HTML and undecodable records silently and needs libmagic; this reader uses
FastWARC, decodes with the HTTP charset or resiliparse's detector, and records every skip under a named reason in the
step's stats (``skipped_non_html``, ``skipped_undecodable``, ``skipped_empty``, ``file_truncated``,
``file_unreadable``, ``bad_json_line``...). Each document carries its source file and byte offset (WARC) or line
number (JSONL), so any output row can be traced back to its input.

Documents hold raw HTML in ``text`` (the extractor runs next) unless ``metadata["is_plain_text"]`` is true (WET
records, whose text Common Crawl already extracted).
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from pathlib import Path
from typing import Callable

from datatrove.pipeline.readers.base import BaseDiskReader
from loguru import logger  # datatrove's logger

from ..errors import ConfigError

HTML_TYPES = {"text/html", "application/xhtml+xml"}
HTML_SUFFIXES = (".html", ".htm", ".html.gz", ".htm.gz")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")
WARC_SUFFIXES = (".warc", ".warc.gz", ".wet", ".wet.gz", ".warc.wet.gz", ".arc.gz")


def decode_html(payload: bytes, charset: str | None = None) -> str | None:
    """Bytes -> text with the declared charset, else the detected one; None when it cannot be decoded."""
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    text = None
    for encoding in filter(None, (charset, "utf-8")):
        try:
            text = payload.decode(encoding)
            break
        except (UnicodeDecodeError, LookupError):
            continue
    if text is None:
        detected = detect_encoding(payload)
        if not detected:
            return None
        text = bytes_to_str(payload, detected, errors="replace")
    # binary data that happens to decode (any byte is valid cp1252) is full of control characters
    junk = sum(1 for ch in text if (ord(ch) < 32 and ch not in "\t\n\r\f") or ch == "\ufffd")
    return None if junk > max(10, len(text) // 100) else text


class UnreadableFile(ValueError):
    """A file whose bytes are not what its name says (counted as ``reason``: ``file_unreadable``, ``file_empty``)."""

    def __init__(self, message: str, reason: str = "file_unreadable"):
        super().__init__(message)
        self.reason = reason


class WebReader(BaseDiskReader):
    """Reads ``.warc[.gz]``, ``.wet[.gz]``, ``.html[.gz]`` and ``.jsonl[.gz]`` (``url`` + ``html`` fields) files."""

    name = "🕸 Web reader"
    _requires_dependencies = ["fastwarc", "resiliparse"]

    def __init__(self, data_folder, paths_file=None, limit: int = -1, skip: int = 0, file_progress: bool = False,
                 doc_progress: bool = False, adapter: Callable = None, default_metadata: dict = None,
                 recursive: bool = True, glob_pattern: str | None = None, html_key: str = "html", url_key: str = "url",
                 url_by_file: dict[str, str] | None = None):
        super().__init__(data_folder, paths_file, limit, skip, file_progress, doc_progress, adapter, "text", "id",
                         default_metadata, recursive, glob_pattern, shuffle_files=False)
        self.html_key = html_key
        self.url_key = url_key
        self.url_by_file = url_by_file or {}  # plain HTML files carry no URL: a caller may know it (file stem -> url)

    def read_file(self, filepath: str):
        """The documents of one file. A file that cannot be read whole is counted once, as a file (not as
        documents): ``file_truncated`` (it ends early), ``file_unreadable`` (not what its name says: random bytes,
        an HTML error page saved as .warc.gz, a corrupt gzip), ``file_empty``, ``skipped_unknown_file_type``."""
        name = filepath.lower()
        read = 0
        try:
            if name.endswith(WARC_SUFFIXES):
                reader = self._read_warc(filepath)
            elif name.endswith(JSONL_SUFFIXES):
                reader = self._read_jsonl(filepath)
            elif name.endswith(HTML_SUFFIXES):
                reader = self._read_html(filepath)
            else:
                self.stat_update("skipped_unknown_file_type")
                logger.warning(f"{filepath}: skipped_unknown_file_type (not WARC/WET, HTML or JSONL by its name)")
                return
            for doc in reader:
                read += 1
                yield doc
        except (OSError, EOFError, zlib.error, UnreadableFile) as e:
            # EOFError: the gzip stream stops before its end; anything else: the bytes are not what the name says
            reason = "file_truncated" if isinstance(e, EOFError) else getattr(e, "reason", "file_unreadable")
            self.stat_update(reason)
            kept = f"; kept the {read} documents read before the error" if read else ""
            logger.warning(f"{filepath}: {reason} ({e}){kept}")

    # -- WARC / WET ----------------------------------------------------------------------------------------------
    def _read_warc(self, filepath: str):
        from fastwarc.warc import ArchiveIterator, WarcRecordType

        wanted = WarcRecordType.response | WarcRecordType.conversion
        with self.data_folder.open(filepath, "rb", compression=None) as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            # Python's gzip (streamed, never the whole file in memory) reads the multi-member files with quirks
            # (ClueWeb) that FastWARC's own decompressor rejects; FastWARC then parses the records
            stream = gzip.GzipFile(fileobj=raw) if gzipped else raw
            head = stream.peek(64)[:64] if gzipped else raw.read(64)
            if not gzipped:
                raw.seek(0)
            if not head.strip():
                raise UnreadableFile("no content", reason="file_empty")
            if not head.lstrip().startswith(b"WARC/"):  # FastWARC would find no record in it, and say nothing
                raise UnreadableFile(f"not a WARC file: it starts with {head.lstrip()[:20]!r}")
            records = ArchiveIterator(stream, record_types=wanted, quirks_mode=True, strict_mode=False)
            for index, record in enumerate(records):
                doc = self._record_to_document(record, filepath, index)
                if doc is not None:
                    yield doc

    def _record_to_document(self, record, filepath: str, index: int):
        from fastwarc.warc import WarcRecordType

        with self.track_time():
            headers = record.headers
            url = headers.get("WARC-Target-URI")
            plain = record.record_type == WarcRecordType.conversion  # a WET record: already text
            if plain:
                content_type = (headers.get("Content-Type") or "text/plain").split(";")[0].strip()
                charset = "utf-8"
            else:
                content_type = (record.http_content_type or headers.get("WARC-Identified-Payload-Type") or "").lower()
                charset = record.http_charset
            if not plain and content_type and content_type not in HTML_TYPES:
                self.stat_update("skipped_non_html")
                return None
            payload = record.reader.read()
            if not payload.strip():
                self.stat_update("skipped_empty")
                return None
            text = decode_html(payload, charset)
            if text is None:
                self.stat_update("skipped_undecodable")
                return None
            metadata = {
                "url": url,
                "date": headers.get("WARC-Date"),
                "source_file": filepath,
                "source_offset": getattr(record, "stream_pos", index),
                "is_plain_text": plain,
            }
            return self.get_document_from_dict(
                {"text": text, "id": record.record_id or f"{filepath}/{index}", "metadata": metadata}, filepath, index
            )

    # -- JSONL and HTML files ------------------------------------------------------------------------------------
    def _read_jsonl(self, filepath: str):
        with self.data_folder.open(filepath, "rt", compression="infer", encoding="utf-8", errors="replace") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    self.stat_update("bad_json_line")
                    continue
                html = row.get(self.html_key) if isinstance(row, dict) else None
                if not isinstance(html, str) or not html.strip():
                    self.stat_update("skipped_empty" if isinstance(row, dict) and self.html_key in row else "missing_html_field")
                    continue
                metadata = {"url": row.get(self.url_key), "source_file": filepath, "source_line": line_no,
                            "is_plain_text": False}
                doc_id = str(row.get("id") or f"{filepath}/{line_no}")
                yield self.get_document_from_dict({"text": html, "id": doc_id, "metadata": metadata}, filepath, line_no)

    def _read_html(self, filepath: str):
        compression = "gzip" if filepath.lower().endswith(".gz") else None
        with self.data_folder.open(filepath, "rb", compression=compression) as f:
            payload = f.read()
        if not payload.strip():
            self.stat_update("skipped_empty")
            return
        text = decode_html(payload)
        if text is None:
            self.stat_update("skipped_undecodable")
            return
        stem = filepath.rsplit("/", 1)[-1].split(".")[0]
        metadata = {"url": self.url_by_file.get(stem), "source_file": filepath, "is_plain_text": False}
        yield self.get_document_from_dict({"text": text, "id": stem, "metadata": metadata}, filepath, 0)


# ----------------------------------------------------------------------------------------------------------------
# Which files, and their URLs (checked by DataConfig.check before anything runs)


def input_files(inputs: list[str]) -> tuple[str, list[str]]:
    """Resolve ``inputs`` to a root folder and the files under it (relative paths, stable order).

    Local inputs are files, globs or folders. A remote input (``s3://bucket/crawl/*.warc.gz``, ``hf://...``: any
    fsspec URL datatrove reads) must be the only input; its folder is listed with its glob.
    """
    from ..refs import GLOB_CHARS, local_files

    remote = [ref for ref in inputs if "://" in ref]
    if remote:
        if len(inputs) > 1:
            raise ConfigError("data.inputs: a remote input (scheme://...) must be the only input")
        from datatrove.io import get_datafolder

        ref = remote[0]
        cut = min((ref.index(c) for c in GLOB_CHARS if c in ref), default=len(ref))
        root = ref[:cut].rsplit("/", 1)[0] if cut < len(ref) else ref
        pattern = ref[len(root):].lstrip("/") or None
        files = sorted(get_datafolder(root).list_files(recursive=True, glob_pattern=pattern))
        if not files:
            raise ConfigError(f"data.inputs: '{ref}' matches no file")
        return root, files
    found: list[Path] = []
    for ref in inputs:
        path = Path(ref).expanduser()
        if path.is_dir():
            matched = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        else:
            matched = local_files(ref)
        if not matched:
            raise ConfigError(f"data.inputs: '{ref}' matches no file")
        found.extend(p.resolve() for p in matched)
    found = sorted(set(found))
    root = Path(os.path.commonpath([str(p.parent) for p in found]))
    return str(root), [str(p.relative_to(root)) for p in found]


def load_url_map(path: str | None) -> dict[str, str]:
    """``{file stem: url}`` from a JSON file; values may be URLs or objects with a ``url`` field."""
    if not path:
        return {}
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"data.url_map: '{path}' not found") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"data.url_map: '{path}' is not valid JSON (line {e.lineno})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"data.url_map: '{path}' must hold a JSON object {{name: url}}")
    return {k: (v.get("url") if isinstance(v, dict) else v) for k, v in raw.items()}
