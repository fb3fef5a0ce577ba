"""Experiment trackers: a training stage's ``report_to`` from the recipe, TensorBoard's event files read back."""

from __future__ import annotations

import pytest

from conftest import SHAKESPEARE
from hf_pipeline import grpo, pretrain
from hf_pipeline.config import ConfigError, PretrainConfig, build_config
from test_grpo import grpo_config


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of the TensorBoard event files under ``folder``: {tag: [(step, value)]}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(folder.rglob("events.out.tfevents.*"))
    assert files, f"no event file under {folder}"
    series = {}
    for path in files:
        events = EventAccumulator(str(path))
        events.Reload()
        for tag in events.Tags()["scalars"]:
            series.setdefault(tag, []).extend((e.step, e.value) for e in events.Scalars(tag))
    return series


def test_pretraining_logs_to_tensorboard_beside_the_stage_folders(tiny_run, tmp_path):
    config = PretrainConfig(output_dir=str(tmp_path), tokenizer=str(tiny_run / "tokenizer"), corpus=[str(SHAKESPEARE)],
                            depth=1, aspect_ratio=32, head_dim=32, seq_len=32, batch_size=4, max_steps=4,
                            eval_steps=2, save_steps=2, logging_steps=1, seed=0, num_proc=1,
                            report_to=["tensorboard"])
    pretrain.run(config)
    series = scalars(tmp_path / "tensorboard" / "pretrain")
    assert [step for step, _ in series["train/loss"]] == [1, 2, 3, 4]
    assert all(value > 0 for _, value in series["train/loss"])
    assert "eval/loss" in series and len(series["eval/loss"]) == 2
    assert not list((tmp_path / "pretrain").rglob("events.out.tfevents.*"))  # the stage folder carries none


def test_post_training_stages_log_their_own_figures(tiny_run, tmp_path):
    config = grpo_config(tmp_path, tiny_run, max_steps=2, report_to=["tensorboard"])
    grpo.run(config)
    series = scalars(tmp_path / "tensorboard" / "grpo")
    assert [step for step, _ in series["train/reward"]] == [1, 2]
    assert "train/rewards/correctness_reward/mean" in series and "train/completions/mean_length" in series


def test_an_unknown_tracker_is_one_line():
    with pytest.raises(ConfigError, match="pretrain.report_to: unknown tracker 'tensorbord' "
                                          r"\(did you mean 'tensorboard'\?\)"):
        build_config("pretrain", ["--report_to", "tensorbord"])
    with pytest.raises(ConfigError, match="'none' with trackers"):
        build_config("sft", ["--report_to", "none", "wandb"])
