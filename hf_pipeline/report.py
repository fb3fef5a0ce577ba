"""The run's report card: RUN/report.md and a self-contained RUN/report.html from what the stages wrote.

    RUN/<stage>/metrics.json, config.yaml, samples.json, *.png (and pretrain's held-out curve in log_history.json)
    -> header: this machine (CPU, bf16 instructions, GPU, RAM), library versions, the package's git commit, the
       time; which stages finished, which are incomplete (RUN/<stage>.incomplete) or not there
    -> summary: the headline measures of each model side by side (base -> SFT -> GRPO -> DPO -> RLHF), then the
       tokenizer's, the probe's, the preference data's and the reward model's figures
    -> per stage, in pipeline order: wall time, key settings (all of them folded away), every metric (a
       post-training stage's ``<measure>_before`` / ``<measure>_after`` side by side), its plots, the first sample
       replies of each model (before / after)
    -> the total wall time (the sum of the stages')

A pure aggregator (nanochat's lesson: per-stage report code is what bloats): it reads the files and recomputes
nothing; no stage writes into it. In the summary a model's figure is the ``<measure>_after`` of the stage that
trained it, or else the ``<measure>_before`` of a stage that started from it (the GRPO, DPO and RLHF stages measure
their SFT start model); a missing stage or key shows "–". Floats have 4 significant digits, big integers thousands
separators; the summary shows shares (rates, accuracies) as percentages, the stage tables as the numbers
metrics.json holds. report.html embeds its plots as data URIs and its CSS inline: one file, no external resource.

Usage::

    hf-pipeline report runs/tiny                    # -> runs/tiny/report.md, runs/tiny/report.html
    hf-pipeline report runs/tiny --output /tmp/r    # -> /tmp/r/report.md, /tmp/r/report.html

``hf-pipeline run`` writes it at its end (``write_report(run_dir)``).
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import os
import platform
import re
import subprocess
from argparse import ArgumentParser
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml

from .artifacts import INCOMPLETE_SUFFIX as INCOMPLETE
from .errors import ConfigError
from .stages import get_stage, stage_names

logger = logging.getLogger("hf_pipeline")

DASH = "–"
LIBRARIES = ("torch", "transformers", "trl", "datasets", "peft", "tokenizers", "datatrove")
SAMPLES_SHOWN, SAMPLE_CHARS = 3, 160

# The summary's model columns: (stage, heading).
MODEL_COLUMNS = (("pretrain", "base"), ("sft", "SFT"), ("grpo", "GRPO"), ("dpo", "DPO"), ("rlhf", "RLHF"))
TOOL_FAMILIES = ("multiply", "add", "count_letter", "compare", "search")


@dataclass(frozen=True)
class Row:
    """A summary row: ``keys`` are measures; ``kind`` "pair" reads ``<key>_after`` (or a later stage's
    ``<key>_before``), "plain" the key itself; two keys show as "a / b"; ``percent`` for shares."""

    label: str
    keys: tuple[str, ...]
    kind: str = "pair"
    percent: bool = False


MODEL_ROWS = (
    Row("held-out bits per byte (pretraining text)", ("heldout_bpb",), "plain"),
    Row("held-out chat loss (assistant tokens)", ("heldout_loss",)),
    Row("stop rate (ends its turn)", ("stop_rate",), percent=True),
    Row("identity accuracy", ("identity_accuracy",), percent=True),
    Row("MMLU accuracy", ("mmlu_accuracy",), percent=True),
    Row("held-out facts: answered right", ("qa_accuracy",), percent=True),
    Row("held-out facts: refused", ("qa_refusal_rate",), percent=True),
    Row("never-seen people: refused", ("refusal_rate_unseen",), percent=True),
    *(Row(f"tools, {family}: right with / without tools", (f"tools_{family}_with", f"tools_{family}_without"),
          percent=True) for family in TOOL_FAMILIES),
    Row("tool calls well-formed", ("tools_wellformed",), percent=True),
    Row("pass@1 (held-out problems)", ("pass1",), percent=True),
    Row("pass@k (held-out problems)", ("passk",), percent=True),
    Row("judge score (held-out prompts)", ("judge_score",)),
    Row("proxy reward (the reward model's score)", ("proxy_reward",)),
    Row("win rate vs its start model", ("win_rate",), "plain", percent=True),
    Row("degenerate replies", ("degenerate_share",), percent=True),
)

# A few settings per stage worth a glance; config.yaml has them all (and the report shows them folded away).
KEY_SETTINGS = {
    "quality": ("positive", "positive_pages", "negative", "negative_pages", "boilerplate_pages", "word_ngrams",
                "threshold"),
    "data": ("inputs", "languages", "minhash_dedup", "pii", "classifiers", "limit"),
    "facts": ("num_entities", "exposures", "heldout_fraction", "practice_entities"),
    "index": ("sources", "passage_words"),
    "tokenizer": ("corpus", "vocab_size", "individual_digits", "compare_with"),
    "pretrain": ("depth", "aspect_ratio", "head_dim", "seq_len", "batch_size", "max_steps", "num_epochs",
                 "learning_rate", "bf16"),
    "probe": ("model", "num_samples", "temperature", "known_threshold", "judge"),
    "sft": ("model", "num_epochs", "max_steps", "learning_rate", "batch_size", "max_length", "worked_problems",
            "probe_data", "tool_traces", "use_lora"),
    "grpo": ("model", "max_steps", "learning_rate", "batch_size", "num_generations", "beta", "loss_type",
             "reward_weights", "use_lora"),
    "rank": ("model", "num_prompts", "k", "judge", "max_new_tokens"),
    "reward": ("model", "preferences", "num_epochs", "learning_rate", "batch_size", "use_lora"),
    "dpo": ("model", "preferences", "num_epochs", "learning_rate", "beta", "loss_type", "use_lora"),
    "rlhf": ("model", "reward_model", "max_steps", "learning_rate", "beta", "num_generations", "unfinished_penalty",
             "guard", "use_lora"),
}


# -- reading the run ------------------------------------------------------------------------------------------------

@dataclass
class StageReport:
    """What one stage folder holds, as read (``status``: finished, incomplete or missing)."""

    name: str
    status: str
    path: Path | None = None
    metrics: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    samples: object = None
    plots: list[Path] = field(default_factory=list)
    curve: list[dict] = field(default_factory=list)  # log_history.json's held-out evaluations (eval_bpb)
    wall_time: tuple[float, str] | None = None  # seconds, and where they come from
    finished_at: datetime | None = None
    problems: list[str] = field(default_factory=list)  # files that could not be read
    rerun_incomplete: bool = False  # finished, and a newer RUN/<stage>.incomplete is there too


def _read(path: Path, problems: list[str], parse):
    if not path.is_file():
        return None
    try:
        return parse(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as e:  # a report is no place to fail: say so and go on
        problems.append(f"{path.name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        logger.warning("report: %s: unreadable (%s)", path, e)
        return None


def read_stage(run_dir: Path, name: str) -> StageReport:
    """One stage of ``run_dir`` (a finished folder ``RUN/<name>``, or only ``RUN/<name>.incomplete``)."""
    final, work = run_dir / name, run_dir / f"{name}{INCOMPLETE}"
    if not final.is_dir():
        return StageReport(name, "incomplete" if work.is_dir() else "missing", work if work.is_dir() else None)
    stage = StageReport(name, "finished", final, rerun_incomplete=work.is_dir())
    metrics = _read(final / "metrics.json", stage.problems, json.loads)
    stage.metrics = metrics if isinstance(metrics, dict) else {}
    config = _read(final / "config.yaml", stage.problems, yaml.safe_load)
    stage.config = config if isinstance(config, dict) else {}
    stage.samples = _read(final / "samples.json", stage.problems, json.loads)
    stage.plots = sorted(final.glob("*.png"))
    history = _read(final / "log_history.json", stage.problems, json.loads)
    if isinstance(history, dict):
        history = history.get("log_history")
    if isinstance(history, list):
        stage.curve = [row for row in history if isinstance(row, dict) and "eval_bpb" in row and "step" in row]
    stage.wall_time = _wall_time(final, stage.metrics, stage.problems)
    if (final / "metrics.json").is_file():
        stage.finished_at = datetime.fromtimestamp((final / "metrics.json").stat().st_mtime).astimezone()
    return stage


def _wall_time(folder: Path, metrics: dict, problems: list[str]) -> tuple[float, str] | None:
    """``wall_time_s``; else ``train_seconds``; else the data stage's steps in stats.json, summed."""
    for key in ("wall_time_s", "train_seconds"):
        if isinstance(metrics.get(key), (int, float)):
            return float(metrics[key]), key
    stats = _read(folder / "stats.json", problems, json.loads)
    if isinstance(stats, dict) and isinstance(stats.get("steps"), list):
        seconds = [s.get("seconds") for s in stats["steps"] if isinstance(s, dict)]
        if seconds and all(isinstance(s, (int, float)) for s in seconds):
            return float(sum(seconds)), "the steps' seconds in stats.json, summed"
    return None


def read_run(run_dir: Path) -> tuple[list[StageReport], list[StageReport]]:
    """The pipeline's stages in order, and any other finished folder with a metrics.json (an eval's output)."""
    stages = [read_stage(run_dir, name) for name in stage_names()]
    known = set(stage_names())
    others = [read_stage(run_dir, p.name) for p in sorted(run_dir.iterdir())
              if p.is_dir() and p.name not in known and not p.name.endswith(INCOMPLETE)
              and (p / "metrics.json").is_file()]
    return stages, others


# -- formatting -----------------------------------------------------------------------------------------------------

def fmt(value) -> str:
    """A value as the report writes it: 4 significant digits, thousands separators, yes / no, "–" for none."""
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value) if value else "[]"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {fmt(v)}" for k, v in value.items()) if value else "{}"
    return str(value)


def pct(value) -> str:
    """A share as a percentage, 4 significant digits (0.9567 -> 95.67%)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return fmt(value)
    return f"{100 * value:.4g}%"


def fmt_seconds(seconds: float | None) -> str:
    """4.0 s, 13 min 48 s, 1 h 08 min."""
    if seconds is None:
        return DASH
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# -- the summary ----------------------------------------------------------------------------------------------------

def start_stage(stage: StageReport) -> str | None:
    """The stage whose model ``stage`` started from: the folder name of its ``start_model`` (or config ``model``)
    when that is a stage, else the stage table's default input; None for a model from elsewhere (a Hub id)."""
    start = stage.metrics.get("start_model") or stage.config.get("model")
    if start:
        name = Path(str(start)).name
        return name if name in stage_names() else None
    return get_stage(stage.name).inputs.get("model") if stage.name in stage_names() else None


def model_value(by_name: dict[str, StageReport], column: str, key: str, kind: str):
    """The figure of ``column``'s model for measure ``key``: its own ``<key>_after`` (``key`` for "plain"), else the
    ``<key>_before`` of a later stage that started from it; None when no file has it."""
    own = by_name[column].metrics
    if kind == "plain":
        return own.get(key)
    if own.get(f"{key}_after") is not None:
        return own[f"{key}_after"]
    for stage in by_name.values():
        if stage.status == "finished" and stage.metrics.get(f"{key}_before") is not None \
                and stage.name != column and start_stage(stage) == column:
            return stage.metrics[f"{key}_before"]
    return None


def model_table(stages: list[StageReport]) -> tuple[list[str], list[list[str]]]:
    """Rows = headline measures, columns = base -> SFT -> GRPO -> DPO -> RLHF."""
    by_name = {s.name: s for s in stages}
    headers = ["measure", *(heading for _, heading in MODEL_COLUMNS)]
    rows = []
    for row in MODEL_ROWS:
        label = row.label
        if row.keys == ("passk",) and _number(by_name["grpo"].metrics.get("k")):
            label = f"pass@{by_name['grpo'].metrics['k']} (held-out problems)"
        show = pct if row.percent else fmt
        cells = []
        for column, _ in MODEL_COLUMNS:
            values = [model_value(by_name, column, key, row.kind) for key in row.keys]
            cells.append(DASH if all(v is None for v in values) else " / ".join(show(v) for v in values))
        rows.append([label, *cells])
    rows.append(["wall time", *(fmt_seconds(by_name[c].wall_time[0]) if by_name[c].wall_time else DASH
                                for c, _ in MODEL_COLUMNS)])
    rows.append(["device (bf16)", *(_device(by_name[c].metrics) for c, _ in MODEL_COLUMNS)])
    return headers, rows


def _device(metrics: dict) -> str:
    if "device" not in metrics:
        return DASH
    return f"{metrics['device']} (bf16)" if metrics.get("bf16") else f"{metrics['device']} (fp32)"


def _of(part, whole, share=None) -> str:
    if part is None:
        return DASH
    text = fmt(part) + (f" of {fmt(whole)}" if whole is not None else "")
    return text + (f" ({pct(share)})" if share is not None else "")


def _arrow(before, after, show=fmt) -> str:
    if before is None and after is None:
        return DASH
    if before is None:
        return show(after)
    return f"{show(before)} → {show(after)}"


def other_table(stages: list[StageReport]) -> tuple[list[str], list[list[str]]]:
    """The figures that are no chat model's: data, tokenizer, base model size, probe, preference pairs, reward
    model."""
    m = {s.name: s.metrics for s in stages}
    tok, pre, rm = m["tokenizer"], m["pretrain"], m["reward"]
    bpt = fmt(tok.get("bytes_per_token"))
    if tok.get("bytes_per_token") is not None and tok.get("reference_bytes_per_token") is not None:
        reference = Path(str(tok.get("reference") or "reference")).name
        bpt += f" ({reference}: {fmt(tok['reference_bytes_per_token'])}, ratio {fmt(tok.get('bytes_per_token_ratio'))})"
    params = fmt(pre.get("num_params"))
    if pre.get("non_embedding_params") is not None:
        params += f" ({fmt(pre['non_embedding_params'])} non-embedding)"
    tokens = fmt(pre.get("train_tokens"))
    if pre.get("tokens_per_s") is not None:
        tokens += f" at {fmt(pre['tokens_per_s'])} tokens/s"
    pairs = DASH if m["rank"].get("pairs_train") is None else \
        f"{fmt(m['rank']['pairs_train'])} / {fmt(m['rank'].get('pairs_test'))}"
    quality = m["quality"]
    rows = [
        ["quality classifier: held-out accuracy (ROC AUC)", DASH if quality.get("heldout_accuracy") is None else
         f"{pct(quality['heldout_accuracy'])} ({fmt(quality.get('heldout_roc_auc'))})"],
        ["data: documents kept", _of(m["data"].get("docs_out"), m["data"].get("docs_in"),
                                     m["data"].get("kept_fraction"))],
        ["tokenizer: vocabulary", fmt(tok.get("vocab_size"))],
        ["tokenizer: held-out bytes per token", bpt],
        ["base model: parameters", params],
        ["pretraining: tokens", tokens],
        ["probe: questions the base model knows", _of(m["probe"].get("known"), m["probe"].get("questions"),
                                                      m["probe"].get("known_share"))],
        ["preference pairs (train / test)", pairs],
        ["reward model: held-out pair accuracy", _arrow(rm.get("accuracy_before"), rm.get("accuracy_after"), pct)],
    ]
    for key in sorted(rm):
        extra = re.fullmatch(r"accuracy_(.+)_after", key)
        if extra:
            rows.append([f"reward model: pair accuracy on {extra.group(1)}",
                         _arrow(rm.get(f"accuracy_{extra.group(1)}_before"), rm[key], pct)])
    return ["measure", "value"], rows


# -- the header -----------------------------------------------------------------------------------------------------

def system_info() -> list[tuple[str, str]]:
    """This machine (the one writing the report), the libraries, the package's git commit."""
    cpu, flags = "", set()
    with _quiet():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not cpu:
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    cpu = cpu or platform.processor() or platform.machine() or "unknown CPU"
    logical = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical
    from .model import BF16_CPU_FLAGS, cpu_has_fast_bf16

    fast = False
    with _quiet():
        fast = cpu_has_fast_bf16()
    found = sorted(f for f in BF16_CPU_FLAGS if f in flags)
    bf16 = ("yes" + (f" ({', '.join(found)})" if found else "")) if fast else "no (bf16 matmuls are emulated: slow)"
    info = [("CPU", f"{cpu}, {logical} cores ({usable} usable)"), ("AVX512-BF16 / AMX", bf16), ("GPU", _gpus()),
            ("RAM", _ram()), ("Python", f"{platform.python_version()} ({platform.system()} {platform.machine()})")]
    info.append(("libraries", ", ".join(f"{name} {_version(name)}" for name in LIBRARIES)))
    from . import __version__

    info.append(("hf-pipeline", f"{__version__}, {_git()}"))
    return info


class _quiet:
    """Suppress what an optional look at the system raises (no /proc, no git...)."""

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        return kind is not None and issubclass(kind, (OSError, ValueError, RuntimeError, subprocess.SubprocessError))


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _gpus() -> str:
    try:
        import torch
    except ImportError:
        return "none (no torch)"
    if not torch.cuda.is_available():
        return "none (torch.cuda is not available)"
    names = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        names.append(f"{props.name} ({props.total_memory / 2**30:.0f} GiB)")
    return f"{len(names)} x " + ", ".join(names) + f", CUDA {torch.version.cuda}"


def _ram() -> str:
    with _quiet():
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    with _quiet():
        return f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB"
    return DASH


def _git() -> str:
    """``git 7999d5f (main, uncommitted changes)`` for the checkout the package lives in; "not a git checkout"."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return "not a git checkout"

    def git(*args) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20,
                              check=True).stdout.strip()

    with _quiet():
        commit = git("rev-parse", "--short", "HEAD")
        branch = git("rev-parse", "--abbrev-ref", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
        return f"git {commit} ({branch}{', uncommitted changes' if dirty else ', clean'})"
    return "git: unknown (git failed)"


def stage_lines(stages: list[StageReport]) -> list[tuple[str, str]]:
    finished = [s.name for s in stages if s.status == "finished"]
    incomplete = [f"{s.name} ({s.name}{INCOMPLETE})" for s in stages if s.status == "incomplete"]
    incomplete += [f"{s.name} (again: {s.name}{INCOMPLETE})" for s in stages if s.rerun_incomplete]
    missing = [s.name for s in stages if s.status == "missing"]
    return [("finished", f"{', '.join(finished) or DASH} ({len(finished)} of {len(stages)})"),
            ("incomplete", ", ".join(incomplete) or DASH), ("not run", ", ".join(missing) or DASH)]


def total_wall_time(stages: list[StageReport]) -> str:
    timed = [s for s in stages if s.status == "finished" and s.wall_time]
    untimed = [s.name for s in stages if s.status == "finished" and not s.wall_time]
    text = f"{fmt_seconds(sum(s.wall_time[0] for s in timed))} (the sum of {len(timed)} stages' wall times"
    return text + (f"; no time for {', '.join(untimed)})" if untimed else ")")


# -- the document: blocks both writers render -----------------------------------------------------------------------

@dataclass
class Block:
    """``kind``: h (text, level, anchor), p (text, label), table (headers, rows, cls), kv (rows), details (label,
    text), img (path, text), note (text)."""

    kind: str
    text: str = ""
    level: int = 2
    anchor: str = ""
    label: str = ""
    headers: list = field(default_factory=list)
    rows: list = field(default_factory=list)
    cls: str = ""
    path: Path | None = None


def build(run_dir: Path, stages: list[StageReport], others: list[StageReport]) -> list[Block]:
    now = datetime.now().astimezone().isoformat(timespec="seconds")
    blocks = [Block("h", f"Report card: {run_dir.name}", level=1, anchor="top"),
              Block("p", f"Run folder {run_dir}, report written {now}. Every figure comes from the stages' own files "
                         "(metrics.json, config.yaml, samples.json, plots); nothing is recomputed.")]
    blocks += [Block("h", "System", anchor="system"), Block("kv", rows=[list(r) for r in system_info()]),
               Block("note", "The machine that wrote this report; each stage's own device is in its section.")]
    blocks += [Block("h", "Stages", anchor="stages"),
               Block("kv", rows=[*map(list, stage_lines(stages)), ["total wall time", total_wall_time(stages)]])]
    outside = [f"{s.name} started from {s.metrics['start_model']}" for s in stages
               if s.status == "finished" and s.metrics.get("start_model")
               and Path(str(s.metrics["start_model"])).parent.name not in (run_dir.resolve().name, "")]
    if outside:
        blocks.append(Block("note", "Start models from outside this run folder: " + "; ".join(outside) + "."))
    headers, rows = model_table(stages)
    blocks += [Block("h", "Summary", anchor="summary"), Block("table", headers=headers, rows=rows, cls="summary"),
               Block("note", "A model's figure is measure_after in the metrics.json of the stage that trained it, "
                             "or else measure_before in that of a stage that started from it (the base column is "
                             "SFT's before, SFT's is GRPO's, DPO's and RLHF's before). Shares as percentages; "
                             "– where no stage wrote the figure.")]
    headers, rows = other_table(stages)
    blocks.append(Block("table", headers=headers, rows=rows, cls="summary"))
    blocks.append(Block("h", "Stage by stage", anchor="by-stage"))
    for number, stage in enumerate([s for s in stages if s.status != "missing"] + others, 1):
        blocks += stage_blocks(number, stage, run_dir)
    blocks += [Block("h", "Total wall time", anchor="total"), Block("p", total_wall_time(stages))]
    return blocks


def stage_blocks(number: int, stage: StageReport, run_dir: Path) -> list[Block]:
    anchor = f"stage-{re.sub(r'[^A-Za-z0-9_-]', '-', stage.name)}"
    if stage.status == "incomplete":
        return [Block("h", f"{number}. {stage.name}: incomplete", level=3, anchor=anchor),
                Block("p", f"{stage.name}{INCOMPLETE} is there: the stage started and did not finish (running now, "
                           "or killed); nothing of it is reported.")]
    title = f"{number}. {stage.name}" + ("" if stage.name in stage_names() else " (not a pipeline stage)")
    blocks = [Block("h", title, level=3, anchor=anchor)]
    m = stage.metrics
    facts = [f"wall time {fmt_seconds(stage.wall_time[0])}" + ("" if stage.wall_time[1] == "wall_time_s"
                                                              else f" ({stage.wall_time[1]})")
             if stage.wall_time else f"wall time {DASH}"]
    if stage.finished_at:
        facts.append(f"finished {stage.finished_at:%Y-%m-%d %H:%M}")
    if "device" in m:
        facts.append(f"device {_device(m)}")
    if _number(m.get("steps")):
        facts.append(f"{fmt(m['steps'])} steps" + (f", training {fmt_seconds(m['train_seconds'])}"
                                                   if _number(m.get("train_seconds")) else ""))
    if m.get("start_model"):
        facts.append(f"started from {m['start_model']}")
    blocks.append(Block("p", "; ".join(facts) + "."))
    if stage.rerun_incomplete:
        blocks.append(Block("note", f"{stage.name}{INCOMPLETE} is there too: a newer run of this stage has not "
                                    "finished; this is the finished one."))
    for problem in stage.problems:
        blocks.append(Block("note", f"unreadable: {problem}"))
    if not (stage.path / "metrics.json").is_file():
        blocks.append(Block("note", "no metrics.json"))
    if stage.config:
        keys = [k for k in KEY_SETTINGS.get(stage.name, ()) if k in stage.config]
        inputs = get_stage(stage.name).inputs if stage.name in stage_names() else {}
        if keys:
            blocks.append(Block("p", " · ".join(f"{k}: {_brief(stage.config[k], inputs.get(k))}" for k in keys),
                                label="settings"))
        everything = {k: v for k, v in stage.config.items() if k != "stage"}
        blocks.append(Block("details", " · ".join(f"{k}: {_setting(v)}" for k, v in everything.items()),
                            label=f"all settings (config.yaml, {len(everything)})"))
    pairs, plain = split_metrics(m)
    if pairs:
        blocks.append(Block("table", headers=["measure", "before", "after"], rows=pairs, cls="metrics"))
    if plain:
        blocks.append(Block("table", headers=["metric", "value"], rows=plain, cls="metrics"))
    if stage.curve:
        blocks.append(Block("p", " · ".join(f"{row['step']}: {fmt(row['eval_bpb'])}" for row in stage.curve),
                            label="held-out bits per byte by step (log_history.json)"))
    for png in stage.plots:
        blocks.append(Block("img", png.name, path=png))
    blocks += sample_blocks(stage.samples)
    return blocks


def _brief(value, default_stage: str | None = None) -> str:
    """A key setting, short: a list of data sources as their paths (x weight), an unset input as the stage it
    reads by default."""
    if value is None and default_stage:
        return f"{DASH} (RUN/{default_stage})"
    if isinstance(value, list) and value and all(isinstance(v, dict) and "path" in v for v in value):
        return ", ".join(str(v["path"]) + (f"[{v['split']}]" if v.get("split") else "")
                         + (f" x{fmt(v['weight'])}" if v.get("weight") not in (None, 1, 1.0) else "") for v in value)
    return _setting(value)


def _setting(value) -> str:
    if isinstance(value, (dict, list)) and any(isinstance(v, (dict, list)) for v in
                                               (value.values() if isinstance(value, dict) else value)):
        return json.dumps(value, separators=(", ", ": "), default=str)
    return fmt(value)


def split_metrics(metrics: dict) -> tuple[list[list[str]], list[list[str]]]:
    """``(pairs, plain)``: ``[measure, before, after]`` for every ``<measure>_before`` / ``_after`` key (in the order
    of their first key), ``[key, value]`` for the rest."""
    pairs: dict[str, list] = {}
    plain = []
    for key, value in metrics.items():
        found = re.fullmatch(r"(.+)_(before|after)", key)
        if found:
            pairs.setdefault(found.group(1), [None, None])[found.group(2) == "after"] = value
        else:
            plain.append([key, fmt(value)])
    return [[k, fmt(b), fmt(a)] for k, (b, a) in pairs.items()], plain


# -- samples --------------------------------------------------------------------------------------------------------

PROMPT_KEYS = ("prompt", "question")
REPLY_KEYS = (("reply", ""), ("replies", ""), ("with_tools", "with tools"), ("without_tools", "without tools"),
              ("chosen", "chosen"), ("rejected", "rejected"), ("passage", ""))  # passage: a classifier's sample
QUIET_KEYS = {"id", "text"}  # text: the reply again, with its special tokens


def _short(text, limit: int = SAMPLE_CHARS) -> str:
    text = " ".join(str(text).split()) if not isinstance(text, str) else text.strip()
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


def _prompt(item: dict) -> str:
    for key in PROMPT_KEYS:
        value = item.get(key)
        if isinstance(value, list):  # chat messages: the last user turn
            users = [m.get("content", "") for m in value if isinstance(m, dict) and m.get("role") == "user"]
            value = users[-1] if users else None
        if value:
            return _short(value)
    return ""


def _reply(item: dict) -> str:
    """The reply (or replies), each with the notes that belong to it, then the item's other notes."""
    entries = []  # (key, label, text)
    for key, label in REPLY_KEYS:
        value = item.get(key)
        if isinstance(value, list):
            entries += [(key, f"{i}.", v) for i, v in enumerate(value, 1)]
        elif value is not None:
            entries.append((key, label, value))
    used = {key for key, _ in REPLY_KEYS} | set(PROMPT_KEYS) | QUIET_KEYS
    per_entry = {k: v for k, v in item.items() if k not in used and isinstance(v, list) and entries
                 and len(v) == len(entries) and len(entries) > 1}
    lines = []
    for i, (key, label, text) in enumerate(entries):
        notes = [f"{k[:-1] if k.endswith('s') else k} {fmt(v[i])}" for k, v in per_entry.items()]  # scores: score
        notes += [f"{k[len(key) + 1:]}: {fmt(v)}" for k, v in item.items() if k.startswith(key + "_") and k not in used]
        lines.append(" ".join(filter(None, [label, _short(text) or "(empty)",
                                             f"[{', '.join(notes)}]" if notes else ""])))
    entry_keys = {key for key, _, _ in entries}
    rest = [f"{k}: {fmt(v)}" for k, v in item.items() if k not in used and k not in per_entry
            and not any(k.startswith(key + "_") for key in entry_keys) and not isinstance(v, dict)]
    if rest:
        lines.append("(" + ", ".join(rest) + ")")
    return "\n".join(lines)


def _models(samples) -> list[tuple[str, dict[str, list]]]:
    """``[(model, {category: items})]``: samples.json as ``{"before": ..., "after": ...}`` (each a list, or a
    dict of lists per category), or one model's list / dict of lists."""
    def categories(value) -> dict[str, list]:
        if isinstance(value, list):
            return {"": value}
        if isinstance(value, dict):
            return {k: v for k, v in value.items() if isinstance(v, list)}
        return {}

    if isinstance(samples, dict) and samples and set(samples) <= {"before", "after"}:
        return [(model, categories(samples[model])) for model in ("before", "after") if model in samples]
    found = categories(samples)
    return [("reply", found)] if found else []


def sample_blocks(samples) -> list[Block]:
    """Per category, the first SAMPLES_SHOWN items of each model side by side (one row per prompt)."""
    models = _models(samples)
    if not models:
        return []
    names = [name for name, _ in models]
    blocks = []
    order = list(dict.fromkeys(c for _, cats in models for c in cats))
    for category in order:
        rows = []
        lists = [[i for i in cats.get(category, [])[:SAMPLES_SHOWN] if isinstance(i, dict)] for _, cats in models]
        for i in range(max(map(len, lists), default=0)):
            items = [items[i] if i < len(items) else None for items in lists]
            prompts = {_prompt(item) for item in items if item is not None}
            if len(prompts) == 1:  # the same prompt: one row
                rows.append([prompts.pop(), *(_reply(item) if item else DASH for item in items)])
            else:
                for j, item in enumerate(items):
                    if item is not None:
                        rows.append([_prompt(item), *(_reply(item) if k == j else DASH for k in range(len(items)))])
        if rows:
            title = f"samples: {category}" if category else "samples"
            blocks.append(Block("table", headers=["prompt", *names], rows=rows, cls="samples", label=title))
    return blocks


# -- writers --------------------------------------------------------------------------------------------------------

def _md_cell(text: str) -> str:
    text = re.sub(r"<(?=[A-Za-z/!])", "&lt;", str(text))  # a reply's "<b>" is text, not markup
    return text.replace("|", "\\|").replace("\n", "<br>")


def render_md(blocks: list[Block], out_dir: Path) -> str:
    lines: list[str] = []
    for b in blocks:
        if b.kind == "h":
            lines += [f"{'#' * b.level} {b.text}", ""]
        elif b.kind == "p":
            lines += [f"**{b.label}:** {b.text}" if b.label else b.text, ""]
        elif b.kind == "note":
            lines += [f"> {b.text}", ""]
        elif b.kind == "details":
            lines += [f"{b.label}: {b.text}", ""]
        elif b.kind == "kv":
            lines += ["| | |", "|---|---|", *(f"| {_md_cell(k)} | {_md_cell(v)} |" for k, v in b.rows), ""]
        elif b.kind == "table":
            if b.label:
                lines += [f"**{b.label}**", ""]
            align = "|---|" + ("---:|" if b.cls in ("summary", "metrics") else "---|") * (len(b.headers) - 1)
            lines += ["| " + " | ".join(map(_md_cell, b.headers)) + " |", align]
            lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in b.rows]
            lines.append("")
        elif b.kind == "img":
            lines += [f"![{b.text}]({Path(os.path.relpath(b.path, out_dir)).as_posix()})", ""]
    return "\n".join(lines).rstrip() + "\n"


CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2430; margin: 0;
       background: #f6f7f9; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 60px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 6px; } h2 { font-size: 20px; margin: 34px 0 10px; border-bottom: 2px solid #e3e6eb;
padding-bottom: 4px; } h3 { font-size: 17px; margin: 30px 0 8px; color: #243b6b; }
nav { font-size: 13px; margin: 8px 0 0; } nav a { margin-right: 10px; color: #3a5ba0; text-decoration: none; }
p { margin: 6px 0 10px; } .note { color: #5d6675; font-size: 13px; font-style: italic; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13.5px; }
th, td { border: 1px solid #dde1e7; padding: 4px 9px; vertical-align: top; text-align: left; }
th { background: #eef1f5; font-weight: 600; }
table.summary td:not(:first-child), table.metrics td:not(:first-child) { text-align: right;
  font-variant-numeric: tabular-nums; white-space: nowrap; }
table.summary th:not(:first-child), table.metrics th:not(:first-child) { text-align: right; }
table.summary tr:nth-child(even) td, table.metrics tr:nth-child(even) td { background: #f9fafb; }
table.kv th { width: 170px; } table.samples { width: 100%; table-layout: fixed; font-size: 13px; }
table.samples td { white-space: pre-wrap; word-break: break-word; } table.samples td:first-child { width: 24%; }
.caption { font-weight: 600; font-size: 13.5px; margin: 12px 0 2px; }
details { margin: 4px 0 12px; font-size: 13px; } summary { cursor: pointer; color: #3a5ba0; }
details div { margin-top: 6px; color: #444; word-break: break-word; }
figure { margin: 10px 0 18px; } figure img { max-width: 100%; border: 1px solid #e3e6eb; }
figcaption { font-size: 12.5px; color: #5d6675; }
.side { display: flex; flex-wrap: wrap; gap: 0 28px; align-items: flex-start; }
"""


def render_html(blocks: list[Block], title: str) -> str:
    e = html.escape
    nav = [b for b in blocks if b.kind == "h" and b.level in (2, 3)]
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{e(title)}</title><style>{CSS}</style></head><body><main>"]
    side_by_side = False  # a stage's metrics tables (before/after, the rest) sit next to each other
    for b in blocks:
        if side_by_side and not (b.kind == "table" and b.cls == "metrics"):
            out.append("</div>")
            side_by_side = False
        if b.kind == "table" and b.cls == "metrics" and not side_by_side:
            out.append('<div class="side">')
            side_by_side = True
        if b.kind == "h":
            out.append(f'<h{b.level} id="{e(b.anchor)}">{e(b.text)}</h{b.level}>')
            if b.level == 1:
                out.append("<nav>" + "".join(f'<a href="#{e(h.anchor)}">{e(h.text)}</a>' for h in nav) + "</nav>")
        elif b.kind == "p":
            out.append(f"<p><b>{e(b.label)}:</b> {e(b.text)}</p>" if b.label else f"<p>{e(b.text)}</p>")
        elif b.kind == "note":
            out.append(f'<p class="note">{e(b.text)}</p>')
        elif b.kind == "details":
            out.append(f"<details><summary>{e(b.label)}</summary><div>{e(b.text)}</div></details>")
        elif b.kind == "kv":
            out.append('<table class="kv">' + "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in b.rows)
                       + "</table>")
        elif b.kind == "table":
            if b.label:
                out.append(f'<div class="caption">{e(b.label)}</div>')
            out.append(f'<table class="{e(b.cls)}"><thead><tr>' + "".join(f"<th>{e(h)}</th>" for h in b.headers)
                       + "</tr></thead><tbody>")
            out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in b.rows]
            out.append("</tbody></table>")
        elif b.kind == "img":
            data = base64.b64encode(b.path.read_bytes()).decode("ascii")
            out.append(f'<figure><img alt="{e(b.text)}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{e(b.text)}</figcaption></figure>")
    out.append("</div></main></body></html>" if side_by_side else "</main></body></html>")
    return "\n".join(out) + "\n"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_report(run_dir: str | os.PathLike, output_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` for ``run_dir`` (into ``output_dir``, the run folder by default) and
    return their paths. ConfigError when the run folder is not there or has no finished stage."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"report: {run_dir}: no such run folder")
    stages, others = read_run(run_dir)
    if not any(s.status == "finished" for s in stages):
        hint = ""
        if (run_dir / "metrics.json").is_file():
            hint = f"; it looks like a stage folder: give its run folder ({run_dir.parent})"
        elif any(s.status == "incomplete" for s in stages):
            hint = "; incomplete: " + ", ".join(s.name for s in stages if s.status == "incomplete")
        raise ConfigError(f"report: {run_dir}: no finished stage (none of {', '.join(stage_names())}){hint}")
    out_dir = Path(output_dir) if output_dir is not None else run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    blocks = build(run_dir, stages, others)
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    _write(md_path, render_md(blocks, out_dir))
    _write(html_path, render_html(blocks, f"hf-pipeline report: {run_dir.name}"))
    logger.info("report: %s, %s (%d stages finished)", md_path, html_path,
                sum(s.status == "finished" for s in stages))
    return md_path, html_path


def main(argv: list[str] | None = None) -> int:
    """``hf-pipeline report RUN [--output DIR]``: write the report, print the two paths."""
    parser = ArgumentParser(prog="hf-pipeline report",
                            description="Write RUN/report.md and a self-contained RUN/report.html: every stage's "
                                        "settings, times, measures, plots and sample replies.")
    parser.add_argument("run", help="A run folder, e.g. runs/tiny.")
    parser.add_argument("--output", default=None, help="Folder for report.md / report.html (default: RUN).")
    args = parser.parse_args(argv)
    for path in write_report(args.run, args.output):
        print(path)
    return 0

