"""The data stage past one machine: on a Ray runtime (the local executor's dataset and stats, document for document)
and on Slurm (the chain of sbatch scripts it submits, checked against what datatrove writes, without a cluster)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

import test_data_pipeline
from conftest import HTML, run_cli
from hf_pipeline.config import ConfigError, build_config
from hf_pipeline.data import pipeline
from test_data_pipeline import SMALL_ARGS, comparable, rows, stats_of

small_clean = test_data_pipeline.small_clean  # the local executor's run of the small recipe (a fixture)

STAGES = ["filter", "exact_find", "exact_filter", "minhash_buckets", "minhash_cluster", "final", "finalize"]


def ray_processes() -> list[str]:
    """Ray's processes on this machine (raylet, gcs_server, its workers...), from /proc: ``pid cmdline`` each."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in "ZX" and ("ray/" in cmd or "raylet" in cmd or "gcs_server" in cmd or cmd.startswith("ray::")):
            found.append(f"{proc.name} {cmd[:200]}")
    return found


@pytest.fixture(scope="module")
def ray_runtime():
    """One local Ray runtime for the module (2 CPUs, as CI has), shut down at the end, leaving no process."""
    ray = pytest.importorskip("ray")
    before = set(ray_processes())
    start = time.monotonic()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    print(f"ray.init: {time.monotonic() - start:.1f} s")
    assert set(ray_processes()) - before  # (what the check below looks for is there while Ray runs)
    yield ray
    ray.shutdown()
    deadline = time.monotonic() + 30
    while (left := set(ray_processes()) - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"Ray processes left behind: {sorted(left)}"


def test_ray_executor_gives_the_local_executors_dataset_and_stats(ray_runtime, small_clean, tmp_path):
    inputs, clean = small_clean
    run_dir = tmp_path / "ray"
    start = time.monotonic()
    pipeline.run(build_config("data", ["--inputs", str(inputs), "--output_dir", str(run_dir), *SMALL_ARGS,
                                       "--workers", "0", "--executor", "ray"]))
    print(f"data stage on Ray: {time.monotonic() - start:.1f} s")
    assert not (run_dir / "data.incomplete").exists()
    ray_rows, local_rows = rows(run_dir), rows(clean)
    assert len(local_rows) > 5 and ray_rows == local_rows  # same ids, same texts
    ray_stats, local_stats = stats_of(run_dir), stats_of(clean)
    assert ray_stats["config"]["executor"] == "ray" and local_stats["config"]["executor"] == "local"
    assert comparable(ray_stats) == comparable(local_stats)
    assert sorted(p.name for p in (run_dir / "data.work" / "logs").iterdir()) == sorted(STAGES)
    # a finished run is not redone
    assert pipeline.run(build_config("data", ["--inputs", str(inputs), "--output_dir", str(run_dir), *SMALL_ARGS,
                                              "--workers", "0", "--executor", "ray"])) == run_dir / "data"


def test_ray_not_installed_is_a_one_line_config_error(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else find_spec(name, *a))
    with pytest.raises(ConfigError, match=r"^data.executor: ray is not installed \(pip install ray\)$"):
        build_config("data", ["--inputs", str(HTML), "--executor", "ray"])


FAKE_SBATCH = """#!/bin/sh
# sbatch as a test sees it: keeps each script and its arguments, prints a job id as Slurm does
n=$(( $(ls "$FAKE_SBATCH_DIR" | grep -c '[.]args$') + 1 ))
for last in "$@"; do :; done
cp "$last" "$FAKE_SBATCH_DIR/$n.sh"
printf '%s\\n' "$@" > "$FAKE_SBATCH_DIR/$n.args"
echo "Submitted batch job $((1000 + n))"
"""


def test_slurm_run_submits_datatroves_sbatch_scripts_chained_afterok(tmp_path):
    import dill

    from datatrove.executor import SlurmPipelineExecutor

    bin_dir, jobs = tmp_path / "bin", tmp_path / "jobs"
    bin_dir.mkdir()
    jobs.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "sbatch").chmod(0o755)
    options = {"partition": "cpu", "time": "01:00:00", "cpus_per_task": 2}
    args = ["--inputs", str(HTML), "--output_dir", str(tmp_path / "run"), "--tasks", "4", "--executor", "slurm",
            "--executor_options", json.dumps(options)]
    result = run_cli("data", *args, env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                                         "FAKE_SBATCH_DIR": str(jobs)})
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "run"
    work = run_dir / "data.work"
    # nothing ran: the dataset appears when the last job (finalize) renames data.incomplete
    assert not (run_dir / "data").exists() and (run_dir / "data.incomplete" / "config.yaml").is_file()
    assert "appears when the last job finishes" in result.stderr

    # each stage: its job (an array of one job per task), then datatrove's job merging its stats
    assert len(list(jobs.glob("*.args"))) == 2 * len(STAGES)
    config = build_config("data", args)
    tasks = {"minhash_buckets": config.minhash_buckets, "exact_find": 1, "minhash_cluster": 1, "finalize": 1}
    previous = None
    for i, name in enumerate(STAGES):
        n, logs = 2 * i + 1, work / "logs" / name
        script, sbatch_args = (jobs / f"{n}.sh").read_text(), (jobs / f"{n}.args").read_text().split()
        # the script is the one datatrove wrote in the stage's logs, built by datatrove for this stage's executor
        assert script == (logs / "launch_script.slurm").read_text()
        executor = dill.loads((logs / "executor.pik").read_bytes())
        assert isinstance(executor, SlurmPipelineExecutor) and executor.job_name == f"hf-pipeline-data-{name}"
        n_tasks = tasks.get(name, 4)
        command = f"srun  -l -n 1 launch_pickled_pipeline {logs}/executor.pik"
        assert script == executor.get_launch_file_contents(executor.get_sbatch_args(n_tasks), command)
        directives = [line for line in script.splitlines() if line.startswith("#SBATCH")]
        for expected in ["--partition=cpu", "--time=01:00:00", "--cpus-per-task=2", "--mem-per-cpu=2G",
                         f"--job-name=hf-pipeline-data-{name}", f"--array=0-{n_tasks - 1}",
                         f"--output={logs}/slurm_logs/%A_%a.out", f"--error={logs}/slurm_logs/%A_%a.out"]:
            assert f"#SBATCH {expected}" in directives, (name, expected, directives)
        assert script.rstrip().endswith(command)
        # chained: each stage's job waits for the previous stage's job to succeed
        assert sbatch_args[0] == "--export=ALL,RUN_OFFSET=0"
        if previous is None:
            assert not any(a.startswith("--dependency") for a in sbatch_args)
        else:
            assert sbatch_args[1] == f"--dependency=afterok:{previous}"
        previous = 1000 + n
        merge = (jobs / f"{n + 1}.sh").read_text()  # datatrove's stats summary, after this stage's job
        assert f"#SBATCH --dependency=afterok:{previous}" in merge and f"merge_stats {logs}/stats" in merge
    # the last job publishes: its pipeline is ``finalize``, which renames data.incomplete to data
    last = dill.loads((work / "logs" / "finalize" / "executor.pik").read_bytes())
    assert last.pipeline[0].func is pipeline.finalize
    assert last.pipeline[0].keywords["final"] == str(run_dir / "data")
