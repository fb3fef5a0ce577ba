"""The run folder: one sub-folder per stage, written under a temporary name and renamed when complete.

    RUN/tokenizer/            a complete stage: its artifact, metrics.json, config.yaml
    RUN/pretrain.incomplete/  a stage being written (or killed): never mistaken for done; resumed or redone

A re-run decides explicitly (``resume_or_start``): a finished stage is skipped, or redone with ``overwrite``; a killed
one resumes from its last complete checkpoint only with the configuration it was started with (a change that matters
refuses, naming the fields), and ``overwrite`` starts it over. One process at a time writes into a run folder
(``run_lock``: a second one refuses, naming the first). ``metrics.json`` has flat, lower-case keys
(``heldout_bpb``, ``bytes_per_token``...).

Under ``accelerate launch`` (or torchrun) with several processes, the main process (RANK 0) alone takes the lock,
creates, wipes and renames the stage folder and writes its files; the others wait for it (``wait_for_everyone``) and
read the same folder (a run folder on a file system every node sees).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
from pathlib import Path

import yaml

from .errors import ConfigError

logger = logging.getLogger("hf_pipeline")

INCOMPLETE_SUFFIX = ".incomplete"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
CHECKPOINTS_DIR = "checkpoints"  # the Trainer's checkpoint-N folders, in RUN/<stage>.incomplete
BASELINE_FILE = "baseline.json"  # a stage's measures of its starting model, kept in RUN/<stage>.incomplete


def world_size() -> int:
    """How many processes train together (``WORLD_SIZE``, set by accelerate launch and torchrun; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Whether this process writes the run folder: the only one, or RANK 0 of a multi-process launch."""
    return int(os.environ.get("RANK", "0")) == 0


def wait_for_everyone() -> None:
    """A barrier across the processes of a multi-process launch (nothing with one process)."""
    if world_size() > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


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


# Settings that change how a run is watched, not what it computes: a resumed run may change them.
RESUME_SAFE = {"overwrite", "resume", "num_proc", "logging_steps", "save_steps", "eval_steps", "keep_checkpoints",
               "report_to", "mirror", "output_dir"}


def resume_or_start(final: Path, settings: dict, resume: bool,
                    progress_file: str | None = None) -> tuple[Path, str | None]:
    """The temporary folder of a checkpointing stage and the checkpoint to resume from (None: a fresh start).

    A killed run's ``RUN/<stage>.incomplete`` is resumed when ``resume`` (the config's ``resume`` and not
    ``overwrite``) and it holds a complete checkpoint (or, for a stage that appends its results to
    ``progress_file``, that file), but only with the settings it recorded in config.yaml: a
    change outside ``RESUME_SAFE`` is a ConfigError naming the fields. Otherwise it is wiped. ``settings`` (the
    config as a dict) is written to config.yaml. With several processes the main one decides and writes; the others
    wait for it, then find the same checkpoint (or none).
    """
    work = incomplete_dir(final)
    if not is_main_process():
        wait_for_everyone()  # the main process has checked, wiped or kept the folder
        if not resume:
            return work, None
        if progress_file:
            return work, str(work / progress_file) if (work / progress_file).is_file() else None
        return work, last_complete_checkpoint(work / CHECKPOINTS_DIR)
    work, resume_from = _resume_or_start(final, work, settings, resume, progress_file)
    wait_for_everyone()
    return work, resume_from



def _resume_or_start(final: Path, work: Path, settings: dict, resume: bool,
                     progress_file: str | None) -> tuple[Path, str | None]:
    resume_from = None
    if resume and work.exists():
        if progress_file:
            resume_from = str(work / progress_file) if (work / progress_file).is_file() else None
        else:
            resume_from = last_complete_checkpoint(work / CHECKPOINTS_DIR)
    if resume_from:
        recorded = work / CONFIG_FILE
        before = yaml.safe_load(recorded.read_text()) if recorded.is_file() else {}
        now = yaml.safe_load(yaml.safe_dump(settings))  # the same types as the recorded file
        changed = [k for k in sorted(set(before) | set(now)) if k not in RESUME_SAFE and before.get(k) != now.get(k)]
        if changed:
            said = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:4])
            more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
            raise ConfigError(f"{work} was started with other settings ({said}{more}): resuming would mix them; "
                              f"run with the recorded settings, or --overwrite true to start over")
        logger.info("%s: resuming from %s", final.name, resume_from)
    elif work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / CONFIG_FILE).write_text(yaml.safe_dump(settings, sort_keys=False))
    return work, resume_from


def train_loss(log_history: list[dict]) -> float | None:
    """Mean training loss over every logged step, a resumed run's earlier steps included (the Trainer's own
    ``training_loss`` covers the steps of the last process only); exact when every step is logged."""
    total = steps = 0.0
    last = 0
    for entry in log_history:
        if "loss" in entry and "step" in entry:
            span = entry["step"] - last
            total, steps, last = total + entry["loss"] * span, steps + span, entry["step"]
    return total / steps if steps else None


_LOCKS: dict[str, list] = {}  # run folder -> [open file descriptor, depth]: the lock is re-entrant within a process


def _lock_holder(folder: Path) -> str:
    """Who holds the flock on ``folder`` (from /proc/locks on Linux), for the refusal message."""
    inode = folder.stat().st_ino
    try:
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if "FLOCK" in fields and fields[-3].split(":")[-1] == str(inode):
                return f"hf-pipeline process {fields[fields.index('FLOCK') + 3]}"
    except (OSError, IndexError):
        pass
    return "another process"


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike):
    """Hold an exclusive lock on the run folder while writing into it: a second process refuses with one line naming
    the holder. The lock is on the folder itself (no file is left behind), and the kernel drops it when its process
    ends, however it ends. In a multi-process launch only the main process (RANK 0) takes it: the lock is per launch,
    and the other ranks follow the main one."""
    import fcntl

    if not is_main_process():
        yield
        return
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    key = str(run_dir.resolve())
    if key in _LOCKS:
        _LOCKS[key][1] += 1
    else:
        fd = os.open(run_dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"{run_dir}: in use by {_lock_holder(run_dir)}; wait for it to finish or use another "
                              f"output_dir") from None
        _LOCKS[key] = [fd, 1]
    try:
        yield
    finally:
        _LOCKS[key][1] -= 1
        if _LOCKS[key][1] == 0:
            os.close(_LOCKS.pop(key)[0])  # closing releases the flock


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
    kept in ``work/baseline.json``, so that a resumed run reads what the killed run measured before training. With
    several processes every one measures (a measure may be collective, as the Trainer's evaluation is) and the main
    one writes."""
    path = Path(work) / BASELINE_FILE
    wait_for_everyone()  # every process sees the same baseline.json: all measure, or none
    if path.is_file():
        return json.loads(path.read_text())
    metrics, samples = measure()
    base = {"metrics": metrics, "samples": samples}
    if is_main_process():
        write_json(path, base)
    wait_for_everyone()
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
