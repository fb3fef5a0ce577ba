"""stats.json: what each step of the data stage read, kept and dropped, from datatrove's per-stage stats.

Datatrove's executors merge every task's counters into ``logs/<stage>/stats.json``: one entry per pipeline step, in
pipeline order, with ``total`` (documents in), ``forwarded`` (out), ``dropped_<reason>`` and ``doc_len`` (characters
of the documents a step passed on). This module lines them up into one report, as FineWeb reports its filters::

    {"steps": [{"step": "language", "docs_in": 136, "docs_out": 82, "chars_in": 485877, "chars_out": 383238,
                "dropped": {"language": 54}, "counts": {}}, ...],
     "docs_in": ..., "docs_out": ..., "chars_out": ...}
"""

from __future__ import annotations

import json
from pathlib import Path

# Counters that mean "this document was not passed on", for steps that do not name them dropped_<reason>
SKIP_REASONS = {
    "read": ("skipped_non_html", "skipped_undecodable", "skipped_empty", "bad_json_line", "missing_html_field"),
    "extraction": ("timeout", "broken_process", "clean_error"),
}
# The name of an unnamed ``dropped`` count, per step
UNNAMED_DROP = {"extraction": "no_text", "exact_dedup": "exact_duplicate", "minhash_dedup": "near_duplicate"}
IGNORED = {"total", "forwarded", "dropped", "doc_len", "doc_len_tokens", "documents", "input_files", "extracted"}


def _value(stat) -> int:
    return int(stat["total"] if isinstance(stat, dict) else stat)


def step_report(key: str, stats: dict, chars_in: int | None) -> dict:
    """One step's line of the report from its datatrove counters."""
    doc_len = stats.get("doc_len") or {}
    skips = {reason: _value(stats[reason]) for reason in SKIP_REASONS.get(key, ()) if reason in stats}
    dropped = {name[len("dropped_"):]: _value(v) for name, v in stats.items() if name.startswith("dropped_")}
    dropped.update(skips)
    if key == "read":
        docs_out = int(doc_len.get("n", 0))
        docs_in = docs_out + sum(skips.values())
    else:
        docs_in = _value(stats.get("total", 0))
        docs_out = _value(stats["forwarded"]) if "forwarded" in stats else int(doc_len.get("n", docs_in))
    unnamed = docs_in - docs_out - sum(dropped.values())
    if unnamed > 0:
        dropped[UNNAMED_DROP.get(key, "unspecified")] = unnamed
    counts = {
        name: _value(v) for name, v in stats.items()
        if name not in IGNORED and not name.startswith("dropped_") and name not in skips
        and (isinstance(v, (int, float)) or "total" in v)
    }
    for reason in ("file_truncated", "file_unreadable", "skipped_unknown_file_type"):  # files, not documents
        if reason in counts:
            dropped[reason] = counts.pop(reason)
    chars_out = int(doc_len["total"]) if "total" in doc_len else chars_in
    return {"step": key, "docs_in": docs_in, "docs_out": docs_out, "chars_in": chars_in, "chars_out": chars_out,
            "dropped": dict(sorted(dropped.items())), "counts": dict(sorted(counts.items()))}


def step_seconds(entry: dict) -> float:
    """Seconds a step took, summed over tasks (datatrove writes a number or a dict with ``total``)."""
    times = entry.get("time_stats") or 0.0
    return float(times.get("total", 0.0) if isinstance(times, dict) else times)


def collect_stats(stages: list[dict], logs: Path) -> dict:
    """The report over all stages. ``stages``: ``{name, report}`` where ``report`` has one stats key (or None)
    per pipeline step of the stage, in order."""
    steps, chars = [], None
    for stage in stages:
        path = Path(logs) / stage["name"] / "stats.json"
        merged = json.loads(path.read_text()) if path.is_file() else []
        for key, entry in zip(stage["report"], merged):
            if key is None:
                continue
            line = step_report(key, entry.get("stats", {}), chars)
            line["seconds"] = round(step_seconds(entry), 3)
            chars = line["chars_out"]
            steps.append(line)
    first, last = (steps[0], steps[-1]) if steps else ({}, {})
    return {"steps": steps, "docs_in": first.get("docs_in", 0), "docs_out": last.get("docs_out", 0),
            "chars_out": last.get("chars_out", 0)}


def summary_metrics(stats: dict) -> dict:
    """Flat numbers for metrics.json: documents read and written, and the documents each step dropped."""
    metrics = {"docs_in": stats["docs_in"], "docs_out": stats["docs_out"], "chars_out": stats["chars_out"]}
    metrics["kept_fraction"] = stats["docs_out"] / stats["docs_in"] if stats["docs_in"] else 0.0
    for step in stats["steps"]:
        metrics[f"dropped_{step['step']}"] = sum(step["dropped"].values())
    return metrics
