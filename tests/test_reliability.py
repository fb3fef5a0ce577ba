"""The classes of fault behind the defects a skeptical user found (issue 13), each tested as a class:

- every expected failure of every command is one line on stderr and a non-zero exit, never a traceback;
- every numeric option of every stage (those of the stages to come included: the test walks the stage table) is
  range-checked when the config is built, before any work;
- a re-run resumes, overwrites or refuses explicitly, from the recorded settings;
- two processes writing into one run folder: the second refuses;
- an interrupt leaves no orphan process and nothing half-done that looks complete; in chat it stops the reply only.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, SHAKESPEARE, run_cli
from hf_pipeline.artifacts import resume_or_start, run_lock
from hf_pipeline.config import RANGES, STAGE_CONFIGS, ConfigError, build_config, in_range

TINY = ROOT / "recipes" / "tiny.yaml"


def one_error_line(result) -> str:
    """The single stderr line of a failed command (asserting there is exactly one, and no traceback)."""
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("hf-pipeline: error: "), lines[0]
    return lines[0]


# ----------------------------------------------------------------------------------------------------------------
# Range checks: every numeric field of every stage


def _numeric_fields(cls):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kinds = set(typing.get_args(hints[f.name])) - {type(None)} or {hints[f.name]}
        if kinds <= {int, float} and bool not in kinds:
            yield f.name, kinds


def _outside(spec: str, kinds: set):
    """A value just outside ``spec`` (of the field's type)."""
    spec = spec.split(" in ")[-1].split(" (")[0]
    if spec[0] in "[(":
        lo, hi = (float(x) for x in spec[1:-1].split(","))
        value = hi + 1 if spec[-1] == "]" else hi
    else:
        op, bound = spec.split()
        value = float(bound) - 1 if op == ">=" else float(bound)
    return int(value) if float not in kinds else value


@pytest.mark.parametrize("stage", list(STAGE_CONFIGS))
def test_every_numeric_field_has_a_range_checked_when_the_config_is_built(stage):
    cls = STAGE_CONFIGS[stage]
    fields = list(_numeric_fields(cls))
    assert fields
    for name, kinds in fields:
        spec = RANGES.get(f"{stage}.{name}") or RANGES.get(name)
        assert spec, f"{stage}.{name} declares no range in config.RANGES"
        default = getattr(cls, name, None) if not isinstance(getattr(cls, name, None), dataclasses.Field) else None
        if default is not None:
            assert in_range(default, spec), f"{stage}.{name}: the default {default} is outside {spec}"
        bad = _outside(spec, kinds)
        with pytest.raises(ConfigError, match=rf"^{stage}\.{name}: .*not {bad}"):
            build_config(stage, [f"--{name}", str(bad)])
        if float in kinds:
            with pytest.raises(ConfigError, match=rf"^{stage}\.{name}: .*not nan"):
                build_config(stage, [f"--{name}", "nan"])


def test_ranges_are_checked_in_recipes_too(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), "pretrain": {"batch_size": 0}}))
    with pytest.raises(ConfigError, match=r"pretrain.batch_size: must be >= 1, not 0"):
        build_config("pretrain", ["--config", str(recipe)])
    assert math.isclose(build_config("pretrain", ["--warmup_ratio", "0.5"]).warmup_ratio, 0.5)


# ----------------------------------------------------------------------------------------------------------------
# One line for every expected failure, through the real command


def test_expected_failures_are_one_line_and_a_nonzero_exit(tiny_run, tmp_path):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for f in (tiny_run / "pretrain").iterdir():
        if f.is_file():
            (corrupt / f.name).write_bytes(f.read_bytes())
    weights = corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("description: caf\xe9 r\xe9cipe\n".encode("latin-1"))
    model = tiny_run / "pretrain"
    out = tmp_path / "out"
    cases = [
        # defect 7: a truncated model file
        (["generate", corrupt, "--prompt", "Hi"], "cannot load a model"),
        (["chat", corrupt], "cannot load a model"),
        # defect 9: sampling values
        (["generate", model, "--prompt", "Hi", "--max_new_tokens", "0"], "max_new_tokens: must be an integer >= 1"),
        (["generate", model, "--prompt", "Hi", "--top_k", "-3"], "top_k: must be >= 0"),
        (["generate", model, "--prompt", "Hi", "--seed", "-1"], "seed: must be >= 0"),
        (["generate", model, "--prompt", ""], "--prompt must not be empty"),
        (["generate", model, "--prompt", "Hi", "--temperature", "-1"], "temperature: must be a finite number >= 0"),
        (["generate", model, "--prompt", "Hi", "--temperature", "nan"], "temperature: must be a finite number >= 0"),
        (["generate", model, "--prompt", "Hi", "--top_p", "2"], "top_p: must be in (0, 1]"),
        (["chat", model, "--temperature", "-0.5"], "temperature: must be a finite number >= 0"),
        # defect 11: no abbreviations
        (["pretrain", "--config", TINY, "--output_dir", out, "--dept", "3"], "unknown option --dept"),
        (["run", "--config", TINY, "--output_dir", out, "--pretrain.dept", "3"], "unknown option --dept"),
        (["generate", model, "--prompt", "Hi", "--temp", "0"], "unrecognized arguments: --temp"),
        # defect 15: bad config
        (["pretrain", "--config", latin1], "not UTF-8 text (line 1"),
        (["pretrain", "--config", TINY, "--output_dir", out, "--batch_size", "0"], "batch_size: must be >= 1, not 0"),
        (["eval", model, "--suites", "chatt"], "unknown suite 'chatt'"),
        (["eval", model, "--suites", "problems", "--k", "0"], "eval.k: must be >= 1, not 0"),
        (["frobnicate"], "unknown command 'frobnicate'"),
    ]
    for args, message in cases:
        result = run_cli(*args, timeout=300)
        line = one_error_line(result)
        assert message in line, (args, line)
    assert not out.exists()  # nothing was started: no half-written stage folder (defect 15)


# ----------------------------------------------------------------------------------------------------------------
# Re-runs: resume, overwrite or refuse


def _killed_run(folder: Path, settings: dict) -> Path:
    """A stage folder as a killed run leaves it: its settings and one complete checkpoint."""
    work = folder / "pretrain.incomplete"
    (work / "checkpoints" / "checkpoint-10").mkdir(parents=True)
    (work / "checkpoints" / "checkpoint-10" / "trainer_state.json").write_text("{}")
    (work / "checkpoints" / "checkpoint-20").mkdir()  # killed while writing: no trainer_state.json
    (work / "config.yaml").write_text(yaml.safe_dump(settings))
    return work


def test_a_rerun_resumes_only_with_the_recorded_settings(tmp_path):
    settings = {"stage": "pretrain", "depth": 4, "seed": 0, "logging_steps": 10, "output_dir": "a"}
    work = _killed_run(tmp_path, settings)
    final = tmp_path / "pretrain"
    # the same settings, or only bookkeeping changed: resume from the last complete checkpoint
    same, resume_from = resume_or_start(final, {**settings, "logging_steps": 1, "output_dir": "b"}, resume=True)
    assert same == work and resume_from.endswith("checkpoint-10")
    # a change that matters: refuse, naming it, and leave the folder as it was
    with pytest.raises(ConfigError, match=r"depth: 4 -> 3, seed: 0 -> 1\).*--overwrite true to start over"):
        resume_or_start(final, {**settings, "depth": 3, "seed": 1}, resume=True)
    assert (work / "checkpoints" / "checkpoint-10").is_dir()
    # overwrite (resume=False): start over
    fresh, resume_from = resume_or_start(final, {**settings, "depth": 3}, resume=False)
    assert resume_from is None and not (fresh / "checkpoints").exists()
    assert yaml.safe_load((fresh / "config.yaml").read_text())["depth"] == 3


# ----------------------------------------------------------------------------------------------------------------
# One writer per run folder


def test_a_second_process_writing_into_the_same_run_folder_refuses(tiny_run, tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom hf_pipeline.artifacts import run_lock\n"
                               f"with run_lock({str(run_dir)!r}):\n    print('locked', flush=True)\n"
                               "    time.sleep(120)\n"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = run_cli("tokenizer", "--corpus", SHAKESPEARE, "--vocab_size", "300", "--output_dir", run_dir)
        line = one_error_line(result)
        assert f"in use by hf-pipeline process {holder.pid}" in line
        assert not (run_dir / "tokenizer").exists() and not (run_dir / "tokenizer.incomplete").exists()
    finally:
        holder.kill()
        holder.wait()
    with run_lock(run_dir), run_lock(run_dir):  # the holder is gone (the kernel freed its lock); re-entrant here
        pass


# ----------------------------------------------------------------------------------------------------------------
# Interrupts


def _group_alive(pgid: int) -> list[int]:
    alive = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                alive.append(int(entry.name))
    return alive


def test_interrupting_a_stage_leaves_no_orphan_and_nothing_that_looks_done(tiny_run, tmp_path):
    run_dir = tmp_path / "run"
    args = ["pretrain", "--output_dir", run_dir, "--corpus", SHAKESPEARE, "--tokenizer", tiny_run / "tokenizer",
            "--depth", "1", "--aspect_ratio", "32", "--head_dim", "32", "--seq_len", "64", "--batch_size", "8",
            "--max_steps", "50000", "--save_steps", "5", "--eval_steps", "1000", "--num_proc", "2"]  # never finishes
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "hf_pipeline", *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    checkpoints = run_dir / "pretrain.incomplete" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and not any(checkpoints.glob("checkpoint-*/trainer_state.json")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C goes to the whole foreground group
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    # (the message may follow a progress bar's last \r-update on the same line)
    assert "hf-pipeline: interrupted" in stderr and "Traceback" not in stderr
    deadline = time.time() + 10
    while _group_alive(proc.pid) and time.time() < deadline:
        time.sleep(0.1)
    assert _group_alive(proc.pid) == []  # no worker left behind
    assert not (run_dir / "pretrain").exists() and (run_dir / "pretrain.incomplete").is_dir()


def test_ctrl_c_in_chat_stops_the_reply_and_keeps_the_conversation(tiny_run):
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hf_pipeline", "chat", str(tiny_run), "--max_new_tokens", "100000",
         "--temperature", "1.0", "--seed", "0"],
        cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    proc.stdin.write("Tell me a very long story.\n")
    proc.stdin.flush()
    seen = ""
    while "assistant> " not in seen:  # the reply has started streaming
        seen += proc.stdout.read(1)
    seen += proc.stdout.read(1)  # the first character: generation is under way (a short reply may end any moment)
    proc.send_signal(signal.SIGINT)
    proc.stdin.write("Hello again\n/exit\n")
    proc.stdin.flush()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]  # not 134 (SIGABRT): the generation thread was stopped and joined
    transcript = seen + out
    assert "[interrupted]" in transcript and "you> Hello again" in transcript
    assert transcript.count("assistant> ") == 2  # the conversation went on after the interrupted reply
