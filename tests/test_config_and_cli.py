"""Recipes, overrides and the CLI: every bad config fails at start with one line naming the problem."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import GPT2, MIRROR, SHAKESPEARE, SHARED_DATA, run_cli
from hf_pipeline.cli import main
from hf_pipeline.config import ConfigError, PretrainConfig, Source, build_config


def write_recipe(tmp_path, recipe: dict | str, name: str = "recipe.yaml"):
    path = tmp_path / name
    path.write_text(recipe if isinstance(recipe, str) else yaml.safe_dump(recipe))
    return path


def test_recipe_section_and_command_line_merge(tmp_path):
    recipe = write_recipe(tmp_path, {
        "output_dir": str(tmp_path / "run"), "seed": 7, "mirror": str(MIRROR),
        "pretrain": {"depth": 3, "corpus": [str(SHAKESPEARE), {"path": str(SHAKESPEARE), "weight": 2.5}]},
    })
    config = build_config("pretrain", ["--config", str(recipe), "--depth", "5", "--bf16", "false"])
    assert isinstance(config, PretrainConfig)
    assert (config.seed, config.depth, config.bf16, config.mirror) == (7, 5, False, str(MIRROR))
    assert config.corpus == [Source(str(SHAKESPEARE)), Source(str(SHAKESPEARE), weight=2.5)]
    assert config.stage_dir() == tmp_path / "run" / "pretrain"


def test_mirror_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("HF_PIPELINE_MIRROR", "/some/mirror")
    assert build_config("tokenizer", []).mirror == "/some/mirror"


@pytest.mark.parametrize(
    "recipe, message",
    [
        ({"pretrain": {"dept": 4}}, "recipe.yaml: pretrain.dept: unknown key (did you mean 'depth'?)"),
        ({"outptu_dir": "x"}, "recipe.yaml: unknown key 'outptu_dir' (did you mean 'output_dir'?)"),
        ({"pretrain": {"depth": "four"}}, "recipe.yaml: pretrain.depth: expected int, got 'four'"),
        ({"pretrain": {"depth": 2.5}}, "recipe.yaml: pretrain.depth: expected int, got 2.5"),
        ({"pretrain": {"bf16": "maybe"}}, "recipe.yaml: pretrain.bf16: expected bool (true/false), got 'maybe'"),
        ({"pretrain": {"learning_rate": [1, 2]}}, "recipe.yaml: pretrain.learning_rate: expected a single value"),
        ({"pretrain": {"corpus": [{"path": "a.txt", "colour": 1}]}}, "pretrain.corpus: unknown key 'colour'"),
        ({"pretrain": {"corpus": [{"path": "a.txt", "sample_by": "word"}]}}, "sample_by must be line, paragraph or document"),
        ({"stages": ["tokenizer", "pretrian"]}, "stages: unknown stage 'pretrian' (did you mean 'pretrain'?)"),
        ({"pretrain": 3}, "section 'pretrain' must be a mapping"),
        ("depth: [unclosed", "recipe.yaml: not valid YAML (line 1)"),
        ("- a\n- b\n", "a recipe must be a YAML mapping, not list"),
    ],
)
def test_bad_recipe_fails_with_one_line(tmp_path, capsys, recipe, message):
    path = write_recipe(tmp_path, recipe)
    assert main(["pretrain", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("hf-pipeline: error: ") and message in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["pretrain", "--config", "nope.yaml"], "nope.yaml: recipe file not found"),
        (["pretrain", "--depht", "3"], "hf-pipeline pretrain: unknown option --depht"),
        (["pretrain", "--depth", "x"], "argument --depth: invalid int value: 'x'"),
        (["pretrain", "--corpus", "missing/file.txt"], "pretrain.corpus: 'missing/file.txt' not found"),
        (["tokenizer", "--corpus", "../shared/data/text/*.nothing"], "matches no file"),
        (["tokenizer", "--corpus", str(SHAKESPEARE), "--compare_with", "./no/such/gpt2"], "compare_with: './no/such/gpt2' not found"),
        (["pretrain", "--corpus", str(SHAKESPEARE), "--output_dir", "/nonexistent/run"],
         "pretrain.tokenizer: not set and /nonexistent/run/tokenizer does not exist"),
        (["pretrain", "--corpus", str(SHAKESPEARE), "--tokenizer", "./no/tokenizer"], "./no/tokenizer: no such tokenizer folder"),
        (["frobnicate"], "unknown command 'frobnicate'"),
        (["run", "--config", "nope.yaml"], "nope.yaml: recipe file not found"),
    ],
)
def test_bad_command_line_fails_with_one_line(capsys, args, message):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err.splitlines()[0], err


def test_unknown_dataset_id_fails_at_start(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # CI has no internet either way; make it fast and certain
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    args = ["tokenizer", "--corpus", "nobody/no-such-dataset", "--mirror", str(MIRROR), "--output_dir", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "'nobody/no-such-dataset' is no local path, not in the mirror" in err
    assert not (tmp_path / "tokenizer.incomplete").exists()


def test_dataset_ids_resolve_through_the_mirror(tmp_path):
    """A Hub id found in the mirror loads offline, with the dataset's own config, split and column."""
    from hf_pipeline.config import Source
    from hf_pipeline.corpus import load_source

    ds = load_source(Source("openai/gsm8k", name="main", split="train", text_column="question"), str(MIRROR))
    assert ds.column_names == ["text"] and len(ds) == 7473
    with pytest.raises(ConfigError, match="has no column 'body'"):
        load_source(Source("openai/gsm8k", name="main", text_column="body"), str(MIRROR))


def test_run_executes_the_recipe_and_skips_finished_stages(tmp_path):
    recipe = write_recipe(tmp_path, {
        "output_dir": str(tmp_path / "run"), "seed": 0, "num_proc": 1, "stages": ["tokenizer", "pretrain"],
        "tokenizer": {"vocab_size": 400, "corpus": [str(SHAKESPEARE)], "compare_with": str(GPT2)},
        "pretrain": {"corpus": [str(SHAKESPEARE), {"path": str(SHARED_DATA / "text" / "c4_200.jsonl"), "weight": 0.5}],
                     "depth": 1, "aspect_ratio": 32, "head_dim": 32, "seq_len": 32, "batch_size": 4,
                     "max_steps": 50, "eval_steps": 100, "save_steps": 100},
    })
    out = run_cli("run", "--config", recipe, "--pretrain.max_steps", "6", "--seed", "1")
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "run"
    assert out.stdout.strip().splitlines()[-1] == str(run)
    metrics = json.loads((run / "pretrain" / "metrics.json").read_text())
    assert metrics["steps"] == 6  # the dotted override reached the stage
    saved = yaml.safe_load((run / "pretrain" / "config.yaml").read_text())
    assert saved["seed"] == 1 and saved["stage"] == "pretrain" and saved["corpus"][1]["weight"] == 0.5
    assert "c4_200.jsonl: 200 documents" in out.stderr  # the log says what the stage read
    assert sorted(p.name for p in run.iterdir()) == ["pretrain", "report.html", "report.md", "tokenizer"]

    again = run_cli("run", "--config", recipe)
    assert again.returncode == 0
    assert "tokenizer: " in again.stderr and "is complete, skipping" in again.stderr
    assert json.loads((run / "pretrain" / "metrics.json").read_text()) == metrics


def test_help_lists_stage_fields(capsys):
    assert main(["pretrain", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--depth" in out and "one dial" not in out and "Number of transformer layers" in out
    assert main([]) == 2
    assert "tokenizer" in capsys.readouterr().out
