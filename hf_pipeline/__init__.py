"""hf-pipeline: the ChatGPT training pipeline on the Hugging Face stack, one thin stage per step.

The Python API (the ``hf-pipeline`` command is a thin layer over it)::

    from hf_pipeline import TokenizerConfig, PretrainConfig, run_tokenizer, run_pretrain, Engine, ChatSession

    run_tokenizer(TokenizerConfig(output_dir="runs/demo", corpus=["my.txt"], vocab_size=4096))   # -> runs/demo/tokenizer
    run_pretrain(PretrainConfig(output_dir="runs/demo", corpus=["my.txt"], depth=4))            # -> runs/demo/pretrain
    engine = Engine.load("runs/demo")                            # the run's latest model, or any model reference
    ChatSession(engine, temperature=0).send("Hello!")

- Stages (the table in ``hf_pipeline.stages``): each has a config class and ``run_<stage>(config) -> Path``
  (``run_data``, ``run_facts``, ``run_index``, ``run_tokenizer``, ``run_pretrain``, ``run_probe``, ``run_sft``,
  ``run_grpo``), or ``run_stage(config)`` for any.
- Inference: ``Engine`` (load any model reference; ``complete``, ``reply``, ``stream``; tools), ``SamplingParams``,
  ``Tool``, ``ChatSession``, ``chat``; the tools themselves in ``hf_pipeline.tools`` (``make_tools``,
  ``PythonSandbox``, ``SearchIndex``).
- Evaluation: ``hf_pipeline.evals`` (bits per byte, multiple choice, chat checks, pass@k, honesty) and
  ``evaluate(EvalConfig)``.

Names are imported on first use, so ``import hf_pipeline`` stays light.
"""

from __future__ import annotations

import functools
import importlib

from .stages import STAGES

__version__ = "0.1.0"

_EXPORTS = {
    # configs
    "SharedConfig": "config", "Source": "config", "ConfigError": "config", "DataConfig": "config",
    "QualityConfig": "config", "ClassifierSpec": "config",
    "TokenizerConfig": "config", "PretrainConfig": "config", "PostTrainingConfig": "config",
    "SFTStageConfig": "config", "GRPOStageConfig": "config", "FactsConfig": "config", "ProbeConfig": "config",
    "IndexConfig": "config", "RankConfig": "config", "RewardStageConfig": "config", "RLHFStageConfig": "config",
    "DPOStageConfig": "config", "build_config": "config", "load_recipe": "config",
    # inference
    "Engine": "engine", "SamplingParams": "engine", "Tool": "engine", "ChatSession": "engine", "chat": "engine",
    # evaluation
    "EvalConfig": "evals",
}

__all__ = [*_EXPORTS, "evaluate", "run_stage", *(f"run_{stage.name}" for stage in STAGES)]


def run_stage(config):
    """Run the stage a config belongs to (``config.stage``) and return its folder ``RUN/<stage>/``. The run folder
    is locked meanwhile: another process writing into it refuses with one line."""
    from .artifacts import run_lock
    from .stages import get_stage

    with run_lock(config.output_dir):
        return importlib.import_module(get_stage(config.stage).module).run(config)


def evaluate(config):
    """Run the evaluation suites of an ``EvalConfig`` on its model; returns the folder holding metrics.json."""
    from .evals import run

    return run(config)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    for stage in STAGES:
        if name == f"run_{stage.name}":  # the stage's run, holding the run folder's lock
            return functools.wraps(importlib.import_module(stage.module).run)(run_stage)
    raise AttributeError(f"module 'hf_pipeline' has no attribute '{name}'")


def __dir__():
    return sorted([*globals(), *__all__])
