"""The smoke recipe end to end, as a user runs it: every stage hands over to the next, the report is written, and the
last model answers through the server's OpenAI API. A broken hand-over between any two stages fails here."""

from __future__ import annotations

import json

from conftest import ROOT, run_cli
from hf_pipeline.stages import stage_names

SMOKE = ROOT / "recipes" / "smoke.yaml"


def test_the_smoke_recipe_runs_every_stage_and_writes_the_report(tmp_path):
    import yaml

    recipe = yaml.safe_load(SMOKE.read_text())
    assert recipe["stages"] == list(stage_names())  # every stage of the pipeline, in order
    result = run_cli("run", "--config", SMOKE, "--output_dir", tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    for stage in stage_names():
        folder = tmp_path / stage
        assert folder.is_dir() and not (tmp_path / f"{stage}.incomplete").exists(), stage
        assert (folder / "config.yaml").is_file() and json.loads((folder / "metrics.json").read_text()), stage
    report = (tmp_path / "report.md").read_text()
    assert all(f"## {stage}" in report or stage in report for stage in stage_names())
    assert (tmp_path / "report.html").is_file()
    # the run folder resolves to its last chat model (rlhf), which generates
    reply = run_cli("generate", tmp_path, "--prompt", "Hello", "--max_new_tokens", "4", "--seed", "0")
    assert reply.returncode == 0, reply.stderr[-2000:]
