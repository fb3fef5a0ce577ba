"""The Python API: the README's example runs as written, and the top level exposes the stages, engine and evals."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import ROOT


def readme_example() -> str:
    """The first python block of the README's "Python API" section."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_api_example_runs(tmp_path):
    code = readme_example().replace('"runs/api"', repr(str(tmp_path / "api")))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "api" / "tokenizer" / "tokenizer.json").is_file()
    assert (tmp_path / "api" / "pretrain" / "model.safetensors").is_file()
    printed = out.stdout.strip().splitlines()
    assert len(printed) >= 2  # the sampled continuation and the chat reply


def test_top_level_exposes_every_stage_the_engine_and_the_evals():
    import hf_pipeline
    from hf_pipeline.stages import STAGES

    for stage in STAGES:
        run = getattr(hf_pipeline, f"run_{stage.name}")
        assert run.__module__ == stage.module and run.__doc__
        assert getattr(hf_pipeline, stage.config).stage == stage.name
    for name in ("Engine", "SamplingParams", "Tool", "ChatSession", "chat", "EvalConfig", "evaluate", "run_stage",
                 "Source", "ConfigError"):
        assert getattr(hf_pipeline, name).__doc__, name
    assert set(hf_pipeline.__all__) <= set(dir(hf_pipeline))
