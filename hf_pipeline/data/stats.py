"""stats.json: what each step of the data stage read, kept and dropped, from datatrove's per-task stats.

Each datatrove task writes ``logs/<stage>/stats/<rank>.json``: one entry per pipeline step, in pipeline order, with
``total`` (documents in), ``forwarded`` (out), ``dropped_<reason>`` and ``doc_len`` (characters of the documents a
step passed on). The stage's own ``logs/<stage>/stats.json`` only merges the tasks of the *last* process (a resumed
run skips finished tasks, a killed main process writes none), so this module sums the per-task files of every task
of the stage instead, and lines them up into one report, as FineWeb reports its filters::

    {"steps": [{"step": "language", "docs_in": 136, "docs_out": 82, "chars_in": 485877, "chars_out": 383238,
                "dropped": {"language": 54}, "counts": {}}, ...],
     "docs_in": ..., "docs_out": ..., "chars_out": ..., "files": {"input_files": 4, "file_truncated": 1},
     "accounting": []}

Documents and files are counted apart: ``dropped`` holds documents only (``docs_in == docs_out + sum(dropped)``);
``files`` (on the ``read`` step and at the top) holds input files and the files that could not be read whole.
``accounting`` lists every place where the documents do not add up (a step, or one step to the next): empty when
every document is accounted for; each entry is also logged as a warning.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger("hf_pipeline")

# Counters that mean "this document was not passed on", for steps that do not name them dropped_<reason>
SKIP_REASONS = {
    "read": ("skipped_non_html", "skipped_undecodable", "skipped_empty", "bad_json_line", "missing_html_field"),
    "extraction": ("timeout", "broken_process", "clean_error"),
}
# Counters of input files (not documents): opened, and the ones that could not be read whole
FILE_COUNTS = ("input_files", "file_truncated", "file_unreadable", "file_empty", "skipped_unknown_file_type")
# The name of an unnamed ``dropped`` count, per step
UNNAMED_DROP = {"extraction": "no_text", "exact_dedup": "exact_duplicate", "minhash_dedup": "near_duplicate"}
IGNORED = {"total", "forwarded", "dropped", "doc_len", "doc_len_tokens", "documents", "extracted", "batches"}


def _value(stat) -> float:
    """A datatrove counter's total (it writes a bare number, or a dict with ``total``)."""
    return stat.get("total", 0) if isinstance(stat, dict) else stat


def step_seconds(entry: dict) -> float:
    """Seconds a step took, summed over tasks (datatrove writes a number or a dict with ``total``)."""
    return float(_value(entry.get("time_stats") or 0.0))


def merge_task_stats(files: list[Path]) -> list[dict]:
    """Sum per-task stats files (one list of step entries each) into one list: ``{name, seconds, stats}`` per
    step, every counter as its plain total (counts and characters add up; means and variances are not needed)."""
    merged: list[dict] = []
    for path in files:
        for i, entry in enumerate(json.loads(Path(path).read_text())):
            if i == len(merged):
                merged.append({"name": entry.get("name"), "seconds": 0.0, "stats": {}})
            merged[i]["seconds"] += step_seconds(entry)
            for name, stat in (entry.get("stats") or {}).items():
                if isinstance(stat, (int, float, dict)):
                    merged[i]["stats"][name] = merged[i]["stats"].get(name, 0) + _value(stat)
    return merged


def step_report(key: str, stats: dict, chars_in: int | None) -> dict:
    """One step's line of the report from its (merged) datatrove counters."""
    stats = {name: int(v) for name, v in stats.items()}
    files = {name: stats.pop(name) for name in FILE_COUNTS if name in stats}  # files, not documents
    skips = {reason: stats[reason] for reason in SKIP_REASONS.get(key, ()) if reason in stats}
    dropped = {name[len("dropped_"):]: v for name, v in stats.items() if name.startswith("dropped_")}
    if stats.get("dropped", 0) > sum(dropped.values()):  # datatrove's own count of the step's drops, some unnamed
        dropped[UNNAMED_DROP.get(key, "unnamed")] = stats["dropped"] - sum(dropped.values())
    dropped.update(skips)
    if key == "read":
        docs_out = stats.get("documents", 0)  # what the reader passed on (per file, so never ambiguous)
        docs_in = docs_out + sum(skips.values())
    else:
        docs_in = stats.get("total", 0)
        # a step that does not count what it passes on (a formatter) drops nothing
        docs_out = stats["forwarded"] if "forwarded" in stats else docs_in - sum(dropped.values())
    counts = {name: v for name, v in stats.items()
              if name not in IGNORED and not name.startswith("dropped_") and name not in skips}
    if "doc_len" in stats or docs_out == 0:
        chars_out = stats.get("doc_len", 0)
    else:  # a step that does not count characters passes them on unchanged
        chars_out = chars_in
    line = {"step": key, "docs_in": docs_in, "docs_out": docs_out, "chars_in": chars_in, "chars_out": chars_out,
            "dropped": dict(sorted(dropped.items())), "counts": dict(sorted(counts.items()))}
    if key == "read":
        line["files"] = files
    return line


def check_accounting(steps: list[dict], published: int | None = None, files: dict | None = None,
                     expected_files: int | None = None) -> list[str]:
    """Where documents (or files) do not add up, one line each naming the step: within a step
    (``docs_in == docs_out + sum(dropped)``), from one step to the next (in == the previous step's out), and at the
    end (the rows published == the last step's out)."""
    problems = []
    previous = None
    for step in steps:
        name, dropped = step["step"], sum(step["dropped"].values())
        if step["docs_in"] != step["docs_out"] + dropped:
            problems.append(f"{name}: docs_in {step['docs_in']} != docs_out {step['docs_out']} + dropped {dropped}")
        if previous is not None and step["docs_in"] != previous["docs_out"]:
            problems.append(f"{name}: docs_in {step['docs_in']} != docs_out {previous['docs_out']} of "
                            f"{previous['step']}, the step before")
        previous = step
    if published is not None and previous is not None and published != previous["docs_out"]:
        problems.append(f"published: {published} rows != docs_out {previous['docs_out']} of {previous['step']}")
    if expected_files is not None and files is not None and files.get("input_files", 0) != expected_files:
        problems.append(f"read: {files.get('input_files', 0)} input files opened of {expected_files}")
    return problems


def collect_stats(stages: list[dict], logs: Path, published: int | None = None,
                  expected_files: int | None = None) -> dict:
    """The report over all stages and all their tasks, whichever process ran them. ``stages``: ``{name, tasks,
    report}`` where ``report`` has one stats key (or None) per pipeline step of the stage, in order.
    ``published``: rows in the published dataset; ``expected_files``: input files the reader should open (None:
    not checked, e.g. with a ``limit``)."""
    steps, chars, problems = [], None, []
    for stage in stages:
        folder = Path(logs) / stage["name"] / "stats"
        tasks = [folder / f"{rank:05d}.json" for rank in range(stage["tasks"])]
        missing = [p.stem for p in tasks if not p.is_file()]
        if missing:
            problems.append(f"{stage['name']}: no stats for task(s) {', '.join(missing[:5])}"
                            f"{' ...' if len(missing) > 5 else ''} of {stage['tasks']}")
        merged = merge_task_stats([p for p in tasks if p.is_file()])
        for key, entry in zip(stage["report"], merged):
            if key is None:
                continue
            line = step_report(key, entry["stats"], chars)
            line["seconds"] = round(entry["seconds"], 3)
            chars = line["chars_out"]
            steps.append(line)
    first, last = (steps[0], steps[-1]) if steps else ({}, {})
    files = first.get("files", {}) if first.get("step") == "read" else {}
    problems = check_accounting(steps, published, files, expected_files) + problems
    for problem in problems:
        logger.warning("data: accounting: %s", problem)
    return {"steps": steps, "docs_in": first.get("docs_in", 0), "docs_out": last.get("docs_out", 0),
            "chars_out": last.get("chars_out", 0), "files": files, "accounting": problems}


def summary_metrics(stats: dict) -> dict:
    """Flat numbers for metrics.json: documents read and written, the documents each step dropped, the input files
    (and those not read whole), and how many accounting problems the report found (0: every document adds up)."""
    metrics = {"docs_in": stats["docs_in"], "docs_out": stats["docs_out"], "chars_out": stats["chars_out"]}
    metrics["kept_fraction"] = stats["docs_out"] / stats["docs_in"] if stats["docs_in"] else 0.0
    for step in stats["steps"]:
        metrics[f"dropped_{step['step']}"] = sum(step["dropped"].values())
    for name, n in stats.get("files", {}).items():
        metrics["files_in" if name == "input_files" else name] = n
    metrics["accounting_problems"] = len(stats.get("accounting", []))
    return metrics
