"""The stage table: every stage of the pipeline, in order, as one row of strings.

Each row names the stage (its CLI command and its folder ``RUN/<name>/``), the module whose ``run(config)`` does the
work, its config class in ``hf_pipeline.config``, the kind of artifact its folder holds, and its default inputs: the
config field that reads an earlier stage's output, and that stage, when the field is left unset::

    Stage("probe", "hf_pipeline.probe", "ProbeConfig", "dataset", {"model": "pretrain"}),  # sft names RUN/probe
    Stage("sft", "hf_pipeline.sft", "SFTStageConfig", "model", {"model": "pretrain"})

An input chain is per stage, not a line: a new stage is one row naming the stage it reads from (a ``probe`` stage
reading ``{"model": "sft"}``, the ``rlhf`` stage reading ``{"model": "sft", "reward_model": "reward", ...}``).

A pure table: it imports nothing from the package, so that ``config`` and ``refs`` can import it without a circle;
``config.STAGE_CONFIGS`` and the CLI look the classes and modules up by these names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, Mapping

Artifact = Literal["classifier", "dataset", "index", "tokenizer", "model", "reward_model"]


@dataclass(frozen=True)
class Stage:
    """One stage: ``name``, ``module`` (has ``run(config) -> Path``), ``config`` (a class name in
    ``hf_pipeline.config``), ``artifact`` (what ``RUN/<name>/`` holds) and ``inputs`` ({config field: the stage whose
    folder it reads when unset}). A ``reward_model`` folder holds a sequence-classification model: never what a run
    folder given as a chat model resolves to."""

    name: str
    module: str
    config: str
    artifact: Artifact
    inputs: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self):
        object.__setattr__(self, "inputs", MappingProxyType(dict(self.inputs)))  # a row is read-only


STAGES: tuple[Stage, ...] = (  # pipeline order: `run` runs a recipe's stages in this order
    Stage("quality", "hf_pipeline.data.quality", "QualityConfig", "classifier"),  # data.classifiers name RUN/quality
    Stage("data", "hf_pipeline.data.pipeline", "DataConfig", "dataset"),  # corpora name RUN/data explicitly
    Stage("facts", "hf_pipeline.facts", "FactsConfig", "dataset"),  # the pretraining corpus names RUN/facts
    Stage("index", "hf_pipeline.tools.search", "IndexConfig", "index"),  # the search tool's index; sft names it
    Stage("tokenizer", "hf_pipeline.tokenizer", "TokenizerConfig", "tokenizer"),
    Stage("pretrain", "hf_pipeline.pretrain", "PretrainConfig", "model", {"tokenizer": "tokenizer"}),
    Stage("probe", "hf_pipeline.probe", "ProbeConfig", "dataset", {"model": "pretrain"}),  # sft names RUN/probe
    Stage("sft", "hf_pipeline.sft", "SFTStageConfig", "model", {"model": "pretrain"}),
    Stage("grpo", "hf_pipeline.grpo", "GRPOStageConfig", "model", {"model": "sft"}),
    Stage("rank", "hf_pipeline.rank", "RankConfig", "dataset", {"model": "sft"}),
    Stage("reward", "hf_pipeline.reward_model", "RewardStageConfig", "reward_model",
          {"model": "sft", "preferences": "rank"}),
    Stage("dpo", "hf_pipeline.dpo", "DPOStageConfig", "model", {"model": "sft", "preferences": "rank"}),
    Stage("rlhf", "hf_pipeline.rlhf", "RLHFStageConfig", "model",
          {"model": "sft", "reward_model": "reward", "preferences": "rank"}),
)

_BY_NAME = {stage.name: stage for stage in STAGES}
assert len(_BY_NAME) == len(STAGES), "two stages share a name"
assert all(source in _BY_NAME and STAGES.index(_BY_NAME[source]) < STAGES.index(stage)
           for stage in STAGES for source in stage.inputs.values()), "a stage reads from a later or unknown stage"


def stage_names() -> tuple[str, ...]:
    """The stage names, in pipeline order."""
    return tuple(_BY_NAME)


def get_stage(name: str) -> Stage:
    """The row of stage ``name`` (KeyError if there is none)."""
    return _BY_NAME[name]


def model_stages() -> tuple[str, ...]:
    """The stages whose folder holds a model, latest first: what a run folder given as a model resolves to."""
    return tuple(stage.name for stage in reversed(STAGES) if stage.artifact == "model")
