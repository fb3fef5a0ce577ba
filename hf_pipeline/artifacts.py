"""The run folder: one sub-folder per stage, written under a temporary name and renamed when complete.

    RUN/tokenizer/            a complete stage: its artifact, metrics.json, config.yaml
    RUN/pretrain.incomplete/  a stage being written (or killed): never mistaken for done; resumed or redone

``metrics.json`` has flat, lower-case keys (``heldout_bpb``, ``bytes_per_token``...).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path

logger = logging.getLogger("hf_pipeline")

INCOMPLETE_SUFFIX = ".incomplete"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
BASELINE_FILE = "baseline.json"  # a stage's measures of its starting model, kept in RUN/<stage>.incomplete


def incomplete_dir(final: Path) -> Path:
    return final.with_name(final.name + INCOMPLETE_SUFFIX)


def is_complete(stage_dir: str | os.PathLike) -> bool:
    return Path(stage_dir).is_dir() and not Path(stage_dir).name.endswith(INCOMPLETE_SUFFIX)


def begin_stage(final: Path, keep_partial: bool = False) -> Path:
    """Return the temporary folder a stage writes into; a leftover one is wiped unless ``keep_partial``."""
    work = incomplete_dir(final)
    if work.exists() and not keep_partial:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    return work


def finish_stage(work: Path, final: Path) -> Path:
    """Atomically publish a finished stage: rename RUN/<stage>.incomplete to RUN/<stage>."""
    if final.exists():
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        work.rename(final)
        shutil.rmtree(old)
    else:
        work.rename(final)
    return final


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest ``checkpoint-N`` that was fully written (Trainer writes ``trainer_state.json`` last)."""
    found = [p for p in Path(folder).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    for path in sorted(found, key=lambda p: int(p.name.split("-")[-1]), reverse=True):
        if (path / "trainer_state.json").is_file():
            return str(path)
    return None


def write_json(path: str | os.PathLike, data: dict) -> None:
    """Write JSON through a temporary file so a reader never sees half of it."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_finite(data), indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def measure_once(work: Path, measure) -> dict:
    """The starting model's measures: ``measure()`` (a ``(metrics, samples)`` pair) as ``{"metrics", "samples"}``,
    kept in ``work/baseline.json``, so that a resumed run reads what the killed run measured before training."""
    path = Path(work) / BASELINE_FILE
    if path.is_file():
        return json.loads(path.read_text())
    metrics, samples = measure()
    base = {"metrics": metrics, "samples": samples}
    write_json(path, base)
    return base


def format_metrics(metrics: dict) -> str:
    """``"name 0.1234, other 5"``: a metrics dict on one log line (floats to 4 significant digits)."""
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())


def read_metrics(stage_dir: str | os.PathLike) -> dict:
    path = Path(stage_dir) / METRICS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _finite(data):
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, float) and not math.isfinite(data):
        return None
    return data
