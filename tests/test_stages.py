"""The stage table is the only list of stages, default inputs come from it, and every config checks its own fields
and inputs: a bad recipe fails in seconds, with one line naming the field, before the first stage writes anything."""

from __future__ import annotations

import importlib.util

import pytest
import yaml

from conftest import ROOT, run_cli
from hf_pipeline import cli, refs
from hf_pipeline.config import (
    STAGE_CONFIGS, ConfigError, GRPOStageConfig, PretrainConfig, RLHFStageConfig, SFTStageConfig, build_config,
)
from hf_pipeline.stages import STAGES, get_stage, model_stages, stage_names

TINY = ROOT / "recipes" / "tiny.yaml"


def test_the_table_is_the_only_stage_list():
    assert stage_names() == ("quality", "data", "facts", "index", "tokenizer", "pretrain", "probe", "sft", "grpo",
                             "rank", "reward", "dpo", "rlhf")
    assert tuple(STAGE_CONFIGS) == stage_names()
    for stage in STAGES:
        cls = STAGE_CONFIGS[stage.name]
        assert (cls.__name__, cls.stage) == (stage.config, stage.name)
        assert importlib.util.find_spec(stage.module) is not None, stage.module
        assert stage.artifact in ("classifier", "dataset", "index", "tokenizer", "model", "reward_model")
        for source in stage.inputs.values():  # every default input is an earlier stage's output
            assert stage_names().index(source) < stage_names().index(stage.name)
    listed = [line.split()[0] for line in cli.usage().split("stages (each writes RUN/<stage>/):\n")[1]
              .split("\n\n")[0].splitlines()]
    assert tuple(listed) == stage_names()
    # latest first; a reward model is never what a run folder resolves to as a chat model
    assert refs.MODEL_STAGES == model_stages() == ("rlhf", "dpo", "grpo", "sft", "pretrain")
    for old in ("STAGE_MODULES", "PREVIOUS_MODEL_STAGE", "check_inputs"):
        assert not hasattr(cli, old)
    assert dict(get_stage("sft").inputs) == {"model": "pretrain"} and dict(get_stage("grpo").inputs) == {"model": "sft"}
    assert dict(get_stage("probe").inputs) == {"model": "pretrain"}  # it probes the model sft will train
    with pytest.raises(TypeError):
        get_stage("sft").inputs["model"] = "grpo"  # read-only rows


def test_default_inputs_resolve_from_the_table(tmp_path):
    run = tmp_path / "run"
    sft = SFTStageConfig(output_dir=str(run), worked_problems=10)
    assert sft.input_ref("model") == str(run / "pretrain")
    assert GRPOStageConfig(output_dir=str(run)).input_ref("model") == str(run / "sft")
    rlhf = RLHFStageConfig(output_dir=str(run))
    assert [rlhf.input_ref(name) for name in ("model", "reward_model", "preferences")] == [
        str(run / "sft"), str(run / "reward"), str(run / "rank")]
    assert PretrainConfig(output_dir=str(run)).input_ref("tokenizer") == str(run / "tokenizer")
    assert SFTStageConfig(output_dir=str(run), model="org/base").input_ref("model") == "org/base"  # a set field wins
    with pytest.raises(ConfigError, match="sft.mmlu: not set, and the sft stage has no default for it"):
        sft.input_ref("mmlu")

    with pytest.raises(ConfigError, match=rf"sft.model: not set and {run / 'pretrain'} does not exist \(run the "
                                          r"pretrain stage first or set model\)"):
        sft.check()
    sft.check(planned=("tokenizer", "pretrain"))  # made earlier in the same run: fine
    (run / "pretrain").mkdir(parents=True)
    sft.check()  # a finished RUN/pretrain: fine
    with pytest.raises(ConfigError, match="sft.model: ./no/model: no such model folder"):
        SFTStageConfig(output_dir=str(run), worked_problems=10, model="./no/model").check()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--reward_weights", '{"corectness": 1}'],
         "grpo.reward_weights: unknown reward function 'corectness' (did you mean 'correctness'?)"),
        (["--reward_weights", '{"correctness": "high"}'], "grpo.reward_weights.correctness: expected a number, got 'high'"),
        (["--reward_weights", "{}"],
         "grpo.reward_weights: name at least one reward function (correctness, checked_correctness, format, length, "
         "worked)"),
        (["--length_penalty", '{"targt": 200}'], "grpo.length_penalty: unknown argument 'targt' (did you mean 'target'?)"),
        (["--length_penalty", '{"unit": "words"}'], "grpo.length_penalty: unit must be 'chars' or 'tokens', not 'words'"),
        (["--problem_templates", "sharing", "agse"], "grpo.problem_templates: unknown template 'agse' (did you mean 'ages'?)"),
    ],
)
def test_bad_reward_and_problem_fields_fail_at_build(args, message):
    with pytest.raises(ConfigError) as error:
        build_config("grpo", args)
    assert str(error.value) == message


def bad_section(tmp_path):
    """tiny.yaml with a typo in a field of its sft section."""
    recipe = yaml.safe_load(TINY.read_text())
    recipe["sft"]["lerning_rate"] = recipe["sft"].pop("learning_rate")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.parametrize(
    "args, message",
    [
        (["--grpo.reward_weights", '{"corectness": 1}'],
         "grpo.reward_weights: unknown reward function 'corectness' (did you mean 'correctness'?)"),
        (["--sft.problem_templates", "shoping_total"],
         "sft.problem_templates: unknown template 'shoping_total' (did you mean 'shopping_total'?)"),
        (bad_section, "recipe.yaml: sft.lerning_rate: unknown key (did you mean 'learning_rate'?)"),
        (["--sft.identity_data", "../shared/data/conversations/no_such.json"],
         "sft.identity_data: '../shared/data/conversations/no_such.json' not found"),
        (["--stages", "data", "tokenizer", "pretrian"], "--stages: unknown stage 'pretrian' (did you mean 'pretrain'?)"),
    ],
    ids=["reward", "template", "section_field", "missing_input", "stage_name"],
)
def test_run_fails_before_the_first_stage(tmp_path, args, message):
    """`hf-pipeline run` on the tiny recipe with one mistake: exit 2 in seconds, one line, no stage folder."""
    recipe = [TINY, *args] if isinstance(args, list) else [args(tmp_path)]
    out = tmp_path / "run"
    result = run_cli("run", "--config", *recipe, "--output_dir", out, env={"HF_HUB_OFFLINE": "1"}, timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hf-pipeline: error: ") and lines[0].endswith(message), lines
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_builds_each_of_its_stages(recipe):
    """Each recipe's sections are valid configs of the stages it runs (fields, ranges, names): a recipe that would
    fail at its third stage fails here (inputs that an earlier run makes are not checked)."""
    from hf_pipeline.config import load_recipe

    loaded = load_recipe(recipe)
    assert loaded["stages"]
    for stage in loaded["stages"]:
        config = build_config(stage, [], loaded, str(recipe))
        assert config.stage == stage
