"""Configuration: one dataclass per stage, recipes in YAML, overrides on the command line.

A recipe is a YAML mapping with shared fields at the top and one section per stage::

    output_dir: runs/tiny
    seed: 0
    stages: [tokenizer, pretrain]
    tokenizer:
      vocab_size: 4096
      corpus: [../shared/data/text/tinyshakespeare.txt]
    pretrain:
      depth: 4

A stage's config is its section merged over the shared fields, then the command line over both, in the
``HfArgumentParser`` tradition (``--field value``). Every value from YAML goes through the same argparse type
conversion as the command line, so a wrong type, an unknown key or a bad choice fails at start with one line naming
the file and the key.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

import yaml

from .errors import ConfigError, suggest, unknown
from .refs import Source, as_sources, from_mapping, run_path
from .stages import STAGES, get_stage

MIRROR_ENV = "HF_PIPELINE_MIRROR"

# The tool switch: a line at the end of the system message says whether tools are on (hf_pipeline/tools/).
TOOLS_ON = "Tools: python, search."
TOOLS_OFF = "Tools: none."
TOOL_FAMILIES = ("multiply", "add", "count_letter", "compare", "search", "gsm8k", "trivial")



def _help(text: str, **kwargs) -> Any:
    return field(metadata={"help": text}, **kwargs)


# The range of every numeric field, by name, or "stage.field" where a stage differs: checked when a config is built,
# so a bad value fails before any work starts, with one line naming the field. A numeric field of a stage config that
# is missing here fails the tests (tests/test_config_and_cli.py): a new stage declares its ranges with its fields.
RANGES: dict[str, str] = {
    "seed": ">= 0", "num_proc": ">= 1",
    # data
    "limit": ">= -1", "tasks": ">= 0 (0: as many as workers)", "workers": ">= 0 (0: num_proc)", "extractor_timeout": "> 0", "language_threshold": "[0, 1]",
    "minhash_ngrams": ">= 1", "minhash_buckets": ">= 1", "minhash_hashes_per_bucket": ">= 1",
    # quality classifier
    "min_words": ">= 1", "max_words": ">= 1", "max_passages_per_source": ">= 1", "group_rows": ">= 1",
    "quality.heldout_fraction": "(0, 1)", "threshold": "[0, 1]", "epoch": ">= 1", "word_ngrams": ">= 1",
    "dim": ">= 1", "min_count": ">= 1", "bucket": ">= 1",
    # tokenizer
    "vocab_size": ">= 1", "min_frequency": ">= 1", "max_train_chars": ">= 1", "heldout_fraction": "[0, 1)",
    # model and optimisation
    "depth": ">= 1", "aspect_ratio": ">= 1", "head_dim": ">= 1", "seq_len": ">= 2", "learning_rate": "> 0",
    "batch_size": ">= 1", "gradient_accumulation_steps": ">= 1", "max_steps": ">= -1", "num_epochs": "> 0",
    "warmup_ratio": "a share of the steps in [0, 1)",  # passed on as warmup_steps: 1 or more counts steps
    "min_lr_ratio": "[0, 1]", "weight_decay": ">= 0",
    "adam_beta2": "(0, 1)",
    "max_grad_norm": ">= 0", "eval_steps": ">= 0", "pretrain.eval_steps": ">= 1", "save_steps": ">= 1",
    "logging_steps": ">= 1", "lora_r": ">= 1", "lora_alpha": ">= 1", "lora_dropout": "[0, 1)",
    # post-training data and measures
    "problem_min_steps": ">= 1", "problem_max_steps": ">= 1", "problem_max_number": ">= 1", "max_length": ">= 2",
    "sft.language_threshold": "a language score in [0, 1)", "identity_weight": "> 0", "worked_problems": ">= 0",
    "worked_share": "[0, 1]",
    "eval_generations": ">= 0", "max_new_tokens": ">= 1", "mmlu_limit": ">= -1",
    # facts and probe
    "num_entities": ">= 2", "exposures": ">= 0 (documents per person)", "num_shots": ">= 0", "num_samples": ">= 1", "known_threshold": "(0, 1]",
    "f1_threshold": "(0, 1]", "refusal_share": "[0, 1]", "probe_weight": "> 0", "honesty_limit": ">= -1", "honesty_max_new_tokens": ">= 1", "facts.heldout_fraction": "(0, 1)", "pool_size": ">= 2", "practice_entities": ">= 0",
    # grpo
    "num_train_problems": ">= 1", "num_test_problems": ">= 1", "beta": ">= 0",
    "num_generations": ">= 2 (a group needs a spread)",
    "temperature": "> 0", "max_completion_length": ">= 1", "num_iterations": ">= 1", "pass_k": ">= 1",
    "eval_temperature": "> 0", "eval_batch_size": ">= 1",
    # tools and the search index
    "passage_words": ">= 1", "tools_off_share": "[0, 1]", "tool_eval_tasks": ">= 0", "max_tool_calls": ">= 0",
    "search_k": ">= 1", "search_max_chars": ">= 1", "tool_tasks": ">= 1", "tool_max_new_tokens": ">= 1",
    # rank, reward, rlhf, dpo
    "rank.k": ">= 2 (a ranking needs two rollouts)", "port": "[0, 65535]", "top_p": "(0, 1]",
    "preference_heldout": "[0, 1)", "rank.heldout_fraction": "[0, 1)", "eval_limit": ">= -1",
    "center_rewards_coefficient": ">= 0", "judge_prompts": ">= -1", "judge_samples": ">= 1",
    "unfinished_penalty": "[-10, 0]", "guard_steps": ">= 1", "guard_prompts": ">= 1", "patience": ">= 1",
    # hf-pipeline eval (evals.EvalConfig)
    "num_prompts": ">= 1", "num_problems": ">= 1", "k": ">= 1", "bpb_max_windows": ">= -1",
}


def in_range(value, spec: str) -> bool:
    """``value`` within ``spec``: ``">= 1"``, ``"> 0"``, ``"[0, 1)"`` (brackets: inclusive, parentheses: exclusive),
    optionally after words saying what the value is (``"a share of the steps in [0, 1)"``) or before a note in
    parentheses (``">= 2 (a group needs a spread)"``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return False
    spec = spec.split(" (")[0] if spec[0] not in "[(" and " in " not in spec else spec
    spec = spec[spec.index(" in ") + 4:] if " in " in spec else spec
    if spec[0] in "[(":
        lo, hi = (float(x) for x in spec[1:-1].split(","))
        return (lo <= value if spec[0] == "[" else lo < value) and (value <= hi if spec[-1] == "]" else value < hi)
    op, bound = spec.split()
    return value >= float(bound) if op == ">=" else value > float(bound)


def check_ranges(config, stage: str) -> None:
    """Every numeric field of ``config`` within its range (``RANGES``); None stays allowed for optional fields."""
    for f in dataclasses.fields(config):
        spec = RANGES.get(f"{stage}.{f.name}") or RANGES.get(f.name)
        values = getattr(config, f.name)
        for value in values if isinstance(values, list) else [values]:  # a list of numbers: each one
            if spec is None or value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not in_range(value, spec):
                said = spec if " in " in spec else f"in {spec}" if spec[0] in "[(" else spec
                raise ConfigError(f"{stage}.{f.name}: {'' if ' in ' in spec else 'must be '}{said}, not {value}")


def check_trackers(stage: str, report_to) -> None:
    """``report_to``: none, or names of transformers' tracker integrations (one line for an unknown one)."""
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    names = [report_to] if isinstance(report_to, str) else list(report_to)
    for name in names:
        if name not in ("none", *INTEGRATION_TO_CALLBACK):
            raise ConfigError(f"{stage}.report_to: {unknown('tracker', name, ['none', *INTEGRATION_TO_CALLBACK])}")
    if "none" in names and len(names) > 1:
        raise ConfigError(f"{stage}.report_to: 'none' with trackers {names}: name the trackers, or none alone")


# ----------------------------------------------------------------------------------------------------------------
# Shared fields and data references


@dataclass
class SharedConfig:
    """Fields every stage has; set once at the top of a recipe."""

    output_dir: str = _help("Run folder: each stage writes RUN/<stage>/.", default="runs/default")
    seed: int = _help("Random seed for data splits, initialisation, shuffling and sampling.", default=42)
    mirror: Optional[str] = _help(
        f"Local folder laid out as <org>/<name>/ that is tried before the Hub for dataset ids "
        f"(default: ${MIRROR_ENV}).",
        default=None,
    )
    overwrite: bool = _help("Redo a stage whose output folder is already complete.", default=False)
    num_proc: int = _help("Worker processes for dataset maps.", default=min(os.cpu_count() or 1, 8))

    def __post_init__(self):
        if self.mirror is None:
            self.mirror = os.environ.get(MIRROR_ENV) or None
        check_ranges(self, self.stage)
        if hasattr(self, "report_to"):  # the training stages
            check_trackers(self.stage, self.report_to)

    def stage_dir(self, stage: str | None = None) -> Path:
        return Path(self.output_dir) / (stage or self.stage)

    def _references(self, *names: str) -> None:
        """Reference fields as given on the command line or in a recipe: "none" / "" -> None, RUN/<stage> -> the
        stage's folder in this run."""
        for name in names:
            value = getattr(self, name)
            if isinstance(value, str) and value.strip().lower() in ("", "none", "null"):
                setattr(self, name, None)
            elif isinstance(value, str) and value.startswith("RUN/"):
                setattr(self, name, run_path(value, self.output_dir))

    def input_ref(self, name: str) -> str:
        """What input field ``name`` reads: its value if set, else the folder of the stage the stage table names
        for it (sft's ``model`` -> ``RUN/pretrain``). Resolve it with ``refs.resolve_model``/``resolve_tokenizer``."""
        value = getattr(self, name)
        if value:
            return value
        source = get_stage(self.stage).inputs.get(name)
        if source is None:
            raise ConfigError(f"{self.stage}.{name}: not set, and the {self.stage} stage has no default for it")
        return str(self.stage_dir(source))

    def check(self, planned: tuple[str, ...] = ()) -> None:
        """Check the inputs exist before anything runs: a ConfigError whose one line names the field.

        ``planned``: stages that run earlier in the same run (their folders count as there). This default checks
        the stage table's inputs (``model``, ``tokenizer``...); a stage with inputs of its own checks those, then
        calls it.
        """
        for name, source in get_stage(self.stage).inputs.items():
            self._check_input(name, source, planned)

    def _check_input(self, name: str, source: str, planned: tuple[str, ...]) -> None:
        """A table input: the reference that is set must resolve, else the source stage's folder must be there."""
        from .artifacts import is_complete
        from .refs import check_dataset_ref, resolve_model, resolve_tokenizer

        where, value = f"{self.stage}.{name}", getattr(self, name)
        if not value:
            folder = self.stage_dir(source)
            if source not in planned and not is_complete(folder):
                raise ConfigError(f"{where}: not set and {folder} does not exist "
                                  f"(run the {source} stage first or set {name})")
            return
        artifact = get_stage(source).artifact
        if artifact == "dataset":
            check_dataset_ref(value, self.mirror, what=where)
            return
        try:
            (resolve_tokenizer if artifact == "tokenizer" else resolve_model)(value)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None

    def _check_sources(self, name: str, planned: tuple[str, ...]) -> None:
        """Each source of list field ``name`` (corpus, datasets) exists, or is the folder of a planned stage."""
        from .refs import check_dataset_ref

        planned_dirs = {self.stage_dir(stage) for stage in planned}
        for source in getattr(self, name):
            if Path(source.path) not in planned_dirs:  # RUN/data made by an earlier stage of this run is checked then
                check_dataset_ref(source.path, self.mirror, what=f"{self.stage}.{name}")


# ----------------------------------------------------------------------------------------------------------------
# Stage configs


@dataclass
class FactsConfig(SharedConfig):
    """Fictional people with facts at controlled exposure: documents for pretraining, questions for probing."""

    stage: ClassVar[str] = "facts"

    num_entities: int = _help("Fictional people, spread evenly over the exposure levels.", default=400)
    exposures: list[int] = _help("Documents per person in the pretraining corpus, one level per group of people "
                                 "(0: never seen).", default_factory=lambda: [0, 4, 16, 64, 128])
    heldout_fraction: float = _help("Share of each level's people whose questions only the evaluation asks.",
                                    default=0.5)
    pool_size: int = _help("Invented cities, employers and universities to draw each fact from (a guess is "
                           "right 1 time in pool_size).", default=30)
    practice_entities: int = _help("More people, never in the documents, only in the passages (the search index): "
                                   "the search tool's training traces ask about them (split practice).", default=0)

    def __post_init__(self):
        super().__post_init__()
        if not self.exposures:
            raise ConfigError("facts.exposures: at least one level")
        if len(set(self.exposures)) != len(self.exposures):
            raise ConfigError(f"facts.exposures: each level once, not {self.exposures}")
        if self.num_entities < 2 * len(self.exposures):
            raise ConfigError(f"facts.num_entities: at least 2 per exposure level ({2 * len(self.exposures)}), "
                              f"not {self.num_entities}")


@dataclass
class IndexConfig(SharedConfig):
    """The search tool's full-text index (SQLite FTS5) of text sources: RUN/index/index.sqlite."""

    stage: ClassVar[str] = "index"

    sources: list[Source] = _help("Text sources to index: paths, globs, Hub ids, RUN/data, {path: RUN/facts, split: "
                                  "passages}, {path: rajpurkar/squad, text_column: context}.", default_factory=list)
    passage_words: int = _help("Longest passage, in words (documents are cut at paragraphs first).", default=120)

    def __post_init__(self):
        super().__post_init__()
        self.sources = as_sources(self.sources, self.output_dir)

    def check(self, planned: tuple[str, ...] = ()) -> None:
        if not self.sources:
            raise ConfigError("index.sources: name at least one text source")
        self._check_sources("sources", planned)


@dataclass
class TokenizerConfig(SharedConfig):
    """Byte-level BPE trained from scratch, saved as a PreTrainedTokenizerFast with the chat template."""

    stage: ClassVar[str] = "tokenizer"

    corpus: list[Source] = _help(
        "Text sources to train on: paths, globs, Hub ids, or RUN/data (this run's data stage).", default_factory=list
    )
    vocab_size: int = _help("Vocabulary size, special tokens included.", default=8192)
    min_frequency: int = _help("Minimum pair count for a merge.", default=2)
    individual_digits: bool = _help("Split numbers into single digits (Llama 2, PaLM, DeepSeek do): '415' is 4, 1, 5, "
                                    "never 4 + 15 next to 41 + 5 elsewhere.", default=False)
    max_train_chars: Optional[int] = _help("Stop feeding the trainer after this many characters.", default=None)
    heldout_fraction: float = _help("Share of documents held out to measure compression.", default=0.01)
    compare_with: Optional[str] = _help(
        "Reference tokenizer for the compression report: a tokenizer folder, a folder with GPT-2 style "
        "vocab.json/merges.txt, or a Hub id.",
        default=None,
    )

    def __post_init__(self):
        super().__post_init__()
        self.corpus = as_sources(self.corpus, self.output_dir)

    def check(self, planned: tuple[str, ...] = ()) -> None:
        self._check_sources("corpus", planned)
        if not self.corpus:
            raise ConfigError("tokenizer.corpus: no sources given")
        ref = self.compare_with
        if ref and not Path(ref).exists() and (ref.startswith((".", "/", "~")) or ref.count("/") > 1):
            raise ConfigError(f"tokenizer.compare_with: '{ref}' not found")
        super().check(planned)


@dataclass
class PretrainConfig(SharedConfig):
    """A Llama-style causal LM trained from scratch on packed token windows with transformers.Trainer."""

    stage: ClassVar[str] = "pretrain"

    tokenizer: Optional[str] = _help("Tokenizer folder or Hub id (default: RUN/tokenizer).", default=None)
    corpus: list[Source] = _help(
        "Text sources to train on: paths, globs, Hub ids, or RUN/data (this run's data stage).", default_factory=list
    )
    heldout_fraction: float = _help("Share of documents held out for evaluation (bits per byte).", default=0.01)
    # The one dial: everything about the model's shape follows from depth (see hf_pipeline/model.py).
    depth: int = _help("Number of transformer layers; width, heads and learning rate follow from it.", default=4)
    aspect_ratio: int = _help("Model width per layer of depth (hidden_size = depth * aspect_ratio).", default=64)
    head_dim: int = _help("Width of one attention head.", default=64)
    seq_len: int = _help("Tokens per packed training window.", default=256)
    # Optimisation
    learning_rate: Optional[float] = _help("Peak learning rate (default: follows from the model width).", default=None)
    batch_size: int = _help("Windows per device per micro-step.", default=16)
    gradient_accumulation_steps: int = _help("Micro-steps per optimizer step.", default=1)
    max_steps: int = _help("Optimizer steps; -1 trains for num_epochs.", default=-1)
    num_epochs: float = _help("Passes over the packed corpus when max_steps is -1.", default=1.0)
    warmup_ratio: float = _help("Share of steps spent warming up the learning rate.", default=0.05)
    min_lr_ratio: float = _help("Cosine schedule floor, as a share of the peak learning rate.", default=0.1)
    weight_decay: float = _help("AdamW weight decay.", default=0.1)
    adam_beta2: float = _help("AdamW beta2.", default=0.95)
    max_grad_norm: float = _help("Gradient clipping.", default=1.0)
    bf16: bool = _help("Mixed precision in bfloat16 where the hardware has it (GPU; CPU with AMX or AVX512-BF16: "
                       "elsewhere float32, with a warning).", default=True)
    torch_compile: bool = _help("Compile the model with torch.compile.", default=False)
    # Bookkeeping
    eval_steps: int = _help("Evaluate held-out loss and bits per byte every N steps.", default=100)
    save_steps: int = _help("Checkpoint every N steps (resume picks up the last one).", default=100)
    logging_steps: int = _help("Log training loss every N steps.", default=10)
    resume: bool = _help("Continue a killed run from its last checkpoint, with the same data order.", default=True)
    keep_checkpoints: bool = _help("Keep checkpoints in the finished stage folder.", default=False)
    report_to: list[str] = _help(
        "Experiment trackers the trainer logs to: none, or tensorboard (RUN/tensorboard/<stage>/), trackio, wandb, "
        "mlflow... (transformers' integrations; a tracker's own settings, e.g. WANDB_MODE=offline, apply).",
        default_factory=lambda: ["none"])

    def __post_init__(self):
        super().__post_init__()
        self.corpus = as_sources(self.corpus, self.output_dir)

    def check(self, planned: tuple[str, ...] = ()) -> None:
        self._check_sources("corpus", planned)
        if not self.corpus:
            raise ConfigError("pretrain.corpus: no sources given")
        super().check(planned)  # tokenizer


@dataclass
class ClassifierSpec:
    """One document classifier of the data stage (``hf_pipeline/data/quality.py``): ``name`` names the score
    (``<name>_score``) and the step in the stats; ``model`` is RUN/quality, a fastText file or folder, a transformers
    sequence-classification folder, or a Hub id (``filename``: which file of a repo); ``label`` the label scored
    (default: the positive label of a classifier the quality stage trained). Documents scoring below ``min_score``
    or above ``max_score`` are dropped (neither: scored only)."""

    name: str
    model: str
    label: Optional[str] = None
    filename: Optional[str] = None
    min_score: Optional[float] = None
    max_score: Optional[float] = None
    max_length: int = 512
    batch_size: int = 1


def as_classifier(item, index: int, output_dir: str | None, taken: tuple[str, ...]) -> ClassifierSpec:
    """A ClassifierSpec from a recipe mapping; one line naming the field for a bad value."""
    where = f"data.classifiers[{index}]"
    if isinstance(item, ClassifierSpec):
        spec = item
    elif isinstance(item, dict):
        try:
            spec = from_mapping(ClassifierSpec, item)
        except (ConfigError, TypeError) as e:
            raise ConfigError(f"{where}: {e}") from None
    else:
        raise ConfigError(f"{where}: a mapping {{name, model, min_score...}}, not {item!r}")
    if not isinstance(spec.name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", spec.name):
        raise ConfigError(f"{where}.name: lower-case letters, digits and _ (it names a column), not {spec.name!r}")
    if spec.name in taken:
        raise ConfigError(f"{where}.name: '{spec.name}' is a step of the data stage; choose another")
    if not isinstance(spec.model, str) or not spec.model:
        raise ConfigError(f"{where}.model: a path or a Hub id, not {spec.model!r}")
    spec.model = run_path(spec.model, output_dir)
    for field_name in ("min_score", "max_score"):
        value = getattr(spec, field_name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
            raise ConfigError(f"{where}.{field_name}: a number, not {value!r}")
    if spec.min_score is not None and spec.max_score is not None and spec.min_score > spec.max_score:
        raise ConfigError(f"{where}: min_score {spec.min_score} > max_score {spec.max_score} drops everything")
    for field_name in ("max_length", "batch_size"):
        value = getattr(spec, field_name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{where}.{field_name}: an integer >= 1, not {value!r}")
    return spec


@dataclass
class QualityConfig(SharedConfig):
    """A fastText quality classifier trained on reference text against crawl text (hf_pipeline/data/quality.py)."""

    stage: ClassVar[str] = "quality"
    # web-file fields per side, and the part of each page they give: main text, whole text, boilerplate
    PAGE_FIELDS: ClassVar[dict] = {"positive": (("positive_pages", "main"),),
                                   "negative": (("negative_pages", "page"), ("boilerplate_pages", "boilerplate"))}

    positive: list[Source] = _help("Reference text sources (label positive_label): paths, globs, Hub ids.",
                                   default_factory=list)
    negative: list[Source] = _help("Crawl text sources (label negative_label).", default_factory=list)
    positive_pages: list[str] = _help("Web files (HTML/WARC, globs, folders) whose main text is positive.",
                                      default_factory=list)
    negative_pages: list[str] = _help("Web files whose whole visible text (raw crawl) is negative.",
                                      default_factory=list)
    boilerplate_pages: list[str] = _help("Web files whose boilerplate (the page text the main-text extractor "
                                         "leaves out) is negative.", default_factory=list)
    url_map: Optional[str] = _help("JSON file {file name without extension: url} for plain HTML files.", default=None)
    positive_label: str = _help("fastText label of reference text.", default="hq")
    negative_label: str = _help("fastText label of crawl text.", default="cc")
    min_words: int = _help("Words a passage needs (shorter rows are joined with the next).", default=20)
    max_words: int = _help("Words a passage holds at most (longer rows are cut).", default=200)
    max_passages_per_source: int = _help("Passages kept per source (a seeded sample).", default=2000)
    group_rows: int = _help("Consecutive rows of a text source held out together.", default=20)
    heldout_fraction: float = _help("Share of each source's groups (pages, runs of rows) held out.", default=0.2)
    threshold: float = _help("Positive-label score at which held-out precision and recall are measured.",
                             default=0.5)
    epoch: int = _help("fastText epochs.", default=25)
    learning_rate: float = _help("fastText learning rate.", default=0.5)
    word_ngrams: int = _help("fastText word n-grams (2: DCLM's bigram classifier).", default=2)
    dim: int = _help("fastText vector size.", default=64)
    min_count: int = _help("fastText minimum word count.", default=1)
    bucket: int = _help("fastText hash buckets of the word n-grams (model size: bucket x dim floats).",
                        default=100_000)

    def __post_init__(self):
        super().__post_init__()
        self.positive = as_sources(self.positive, self.output_dir)
        self.negative = as_sources(self.negative, self.output_dir)
        self.positive_pages = [run_path(p, self.output_dir) for p in self.positive_pages]
        self.negative_pages = [run_path(p, self.output_dir) for p in self.negative_pages]
        self.boilerplate_pages = [run_path(p, self.output_dir) for p in self.boilerplate_pages]
        if self.min_words > self.max_words:
            raise ConfigError(f"quality.min_words: {self.min_words} > max_words {self.max_words}")
        if self.positive_label == self.negative_label:
            raise ConfigError("quality: positive_label and negative_label must differ")
        for name in ("positive_label", "negative_label"):
            if not re.fullmatch(r"\S+", getattr(self, name) or ""):
                raise ConfigError(f"quality.{name}: one word, not {getattr(self, name)!r}")

    def check(self, planned: tuple[str, ...] = ()) -> None:
        from .data.readers import input_files, load_url_map

        for side, parts in self.PAGE_FIELDS.items():
            fields = [name for name, _ in parts]
            if not getattr(self, side) and not any(getattr(self, name) for name in fields):
                raise ConfigError(f"quality: no {side} source ({', '.join((side, *fields))})")
            self._check_sources(side, planned)
            for name in fields:
                for pages in getattr(self, name):
                    try:
                        input_files([pages])
                    except ConfigError as e:
                        raise ConfigError(f"quality.{name}: {e}") from None
        load_url_map(self.url_map)
        super().check(planned)


@dataclass
class DataConfig(SharedConfig):
    """FineWeb's recipe as datatrove steps: web pages in, a clean deduplicated dataset out (hf_pipeline/data/)."""

    stage: ClassVar[str] = "data"

    inputs: list[str] = _help("WARC/WET/HTML/JSONL(url, html) files, globs or folders.", default_factory=list)
    url_map: Optional[str] = _help(
        "JSON file {file name without extension: url or {url: ...}} giving plain HTML files their URL.", default=None
    )
    limit: int = _help("Read at most N documents per task (-1: all); to try a recipe quickly.", default=-1)
    # Scale-out: the same recipe runs on local processes, Slurm or Ray.
    executor: Literal["local", "slurm", "ray"] = _help("datatrove executor.", default="local")
    executor_options: dict = _help(
        "Extra arguments for the executor, e.g. {partition: cpu, time: '10:00:00', cpus_per_task: 2} for Slurm.",
        default_factory=dict,
    )
    tasks: int = _help("Tasks (input shards) per stage; 0: as many as workers.", default=0)
    workers: int = _help("Tasks run at once by the local executor; 0: num_proc.", default=0)
    # 1. URL filter
    url_filter: bool = _help("Drop pages on datatrove's block lists (adult/spam domains, URLs, words).", default=True)
    url_block_domains: list[str] = _help("Extra domains to block.", default_factory=list)
    url_block_urls: list[str] = _help("Extra exact URLs to block.", default_factory=list)
    url_allow_domains: list[str] = _help("Domains never blocked by the URL filter.", default_factory=list)
    # 2. Text extraction
    extractor: Literal["main_text", "trafilatura"] = _help(
        "main_text: resiliparse + article container (hf_pipeline/data/extract.py); trafilatura: FineWeb's choice.",
        default="main_text",
    )
    extractor_timeout: float = _help("Seconds per page before the extractor gives up (counted as timeout).",
                                     default=1.0)
    # 3. Language
    language_filter: bool = _help("Keep pages whose fastText language score passes the threshold.", default=True)
    languages: list[str] = _help("Languages to keep (ISO 639-1).", default_factory=lambda: ["en"])
    language_threshold: float = _help("Minimum fastText score of a kept language.", default=0.65)
    # 4. Quality (FineWeb's thresholds are datatrove's defaults; C4's terminal-punctuation rule is off, as in FineWeb)
    gopher_repetition: bool = _help("Gopher repetition filter (duplicated lines, paragraphs, n-grams).", default=True)
    gopher_quality: bool = _help("Gopher quality filter (word counts, symbols, stop words...).", default=True)
    c4_quality: bool = _help("C4 filters (javascript, policy, lorem ipsum, curly brackets, short lines).",
                             default=True)
    fineweb_quality: bool = _help("FineWeb's filters (line punctuation, short lines, duplicated line chars, "
                                  "newline ratio).", default=True)
    step_args: dict = _help(
        "Keyword arguments per step, e.g. {gopher_quality: {min_doc_words: 20}, c4_quality: {min_num_sentences: 3}}"
        "; keys: url_filter, extraction, language, gopher_repetition, gopher_quality, c4_quality, fineweb_quality.",
        default_factory=dict,
    )
    # 5. Deduplication (per run, as FineWeb deduplicates per dump)
    exact_dedup: bool = _help("Drop documents whose extracted text is identical to another's.", default=True)
    minhash_dedup: bool = _help("Drop near-duplicates found by MinHash LSH.", default=True)
    minhash_ngrams: int = _help("Word n-gram size of the MinHash shingles.", default=5)
    minhash_buckets: int = _help("LSH buckets.", default=14)
    minhash_hashes_per_bucket: int = _help("Hashes per LSH bucket.", default=8)
    # 6. PII
    pii: bool = _help("Replace emails, public IP addresses and phone numbers (placeholders below; empty: the "
                      "defaults in hf_pipeline/data/pii.py).", default=True)
    email_replacement: list[str] = _help("Placeholder(s) for emails, used in turn.", default_factory=list)
    ip_replacement: list[str] = _help("Placeholder(s) for IP addresses, used in turn.", default_factory=list)
    phone_replacement: list[str] = _help("Placeholder(s) for phone numbers, used in turn.", default_factory=list)
    keep_dropped: bool = _help("Also write dropped documents, with their reason, to RUN/data/dropped/<step>/.",
                               default=False)
    # 4b. Model-based classifiers (hf_pipeline/data/quality.py), after the rule filters
    classifiers: list[dict] = _help(
        "Document classifiers, each {name, model (RUN/quality, a fastText file, a transformers folder or a Hub id), "
        "label, filename, min_score (keep at least), max_score (drop above), max_length, batch_size}: the score "
        "goes to the column <name>_score, drops are counted as dropped_<name>.", default_factory=list)

    STEP_KEYS: ClassVar[tuple[str, ...]] = ("url_filter", "extraction", "language", "gopher_repetition",
                                            "gopher_quality", "c4_quality", "fineweb_quality")
    OTHER_KEYS: ClassVar[tuple[str, ...]] = ("read", "exact_dedup", "minhash_dedup", "pii")

    def __post_init__(self):
        super().__post_init__()
        self.classifiers = [as_classifier(c, i, self.output_dir, (*self.STEP_KEYS, *self.OTHER_KEYS))
                            for i, c in enumerate(self.classifiers)]
        names = [c.name for c in self.classifiers]
        if len(set(names)) != len(names):
            raise ConfigError(f"data.classifiers: each name once, not {names}")
        for key in self.step_args:
            if key not in self.STEP_KEYS:
                raise ConfigError(f"data.step_args: unknown step '{key}'{suggest(key, self.STEP_KEYS)}")
            if not isinstance(self.step_args[key], dict):
                raise ConfigError(f"data.step_args.{key}: must be a mapping of keyword arguments")
        # (the numbers' ranges are config.RANGES, checked first; limit's one gap is here)
        if self.limit == 0:
            raise ConfigError("data.limit: must be -1 (all) or >= 1, not 0")
        if not self.languages:
            raise ConfigError("data.languages: name at least one language")
        from datatrove.utils.word_tokenizers import load_tokenizer_assignments

        for language in self.languages:  # the quality and MinHash steps split words the language's way
            if language not in load_tokenizer_assignments():
                raise ConfigError(f"data.languages: unknown language '{language}' (an ISO 639-1 code, such as en)")
        if self.step_args or self.executor_options:  # each keyword an argument of its class, before anything runs
            from .data.steps import check_executor_options, check_step_args

            check_step_args(self.step_args, self.extractor)
            check_executor_options(self.executor, self.executor_options)
        if self.executor == "ray" and importlib.util.find_spec("ray") is None:
            raise ConfigError("data.executor: ray is not installed (pip install ray)")
        if self.executor == "slurm" and "partition" not in self.executor_options:
            raise ConfigError("data.executor_options: the Slurm executor needs a partition ({partition: NAME})")

    def check(self, planned: tuple[str, ...] = ()) -> None:
        from .data.readers import input_files, load_url_map

        if not self.inputs:
            raise ConfigError("data.inputs: no input files given")
        input_files(self.inputs)
        load_url_map(self.url_map)
        planned_dirs = {self.stage_dir(stage) for stage in planned}
        for i, spec in enumerate(self.classifiers):
            model = Path(spec.model).expanduser()
            if model not in planned_dirs and not model.exists() and (
                    spec.model.startswith((".", "/", "~")) or spec.model.count("/") != 1):
                raise ConfigError(f"data.classifiers[{i}].model: '{spec.model}' not found (a path, or a Hub id "
                                  f"org/name)")
        super().check(planned)


@dataclass
class PostTrainingConfig(SharedConfig):
    """Fields the post-training stages (sft, grpo) share: the starting model, training loop, LoRA, problem dial."""

    model: Optional[str] = _help(
        "Starting model: a model folder, a run folder (its latest model stage) or a Hub id (default: the previous "
        "stage of this run).", default=None
    )
    learning_rate: float = _help("Peak learning rate.", default=1e-4)
    lr_scheduler_type: str = _help("transformers scheduler name.", default="cosine")
    warmup_ratio: float = _help("Share of steps spent warming up.", default=0.05)
    weight_decay: float = _help("AdamW weight decay.", default=0.0)
    batch_size: int = _help("Examples per device per micro-step.", default=8)
    gradient_accumulation_steps: int = _help("Micro-steps per optimizer step.", default=1)
    max_steps: int = _help("Optimizer steps; -1 trains for num_epochs.", default=-1)
    num_epochs: float = _help("Passes over the training set when max_steps is -1.", default=1.0)
    max_grad_norm: float = _help("Gradient clipping.", default=1.0)
    bf16: bool = _help("Mixed precision in bfloat16 where the hardware has it (as pretrain.bf16).", default=True)
    logging_steps: int = _help("Log every N steps.", default=10)
    eval_steps: int = _help("Evaluate held-out loss every N steps (0: only at the end).", default=0)
    save_steps: int = _help("Checkpoint every N steps (resume picks up the last one).", default=100)
    resume: bool = _help("Continue a killed run from its last checkpoint.", default=True)
    keep_checkpoints: bool = _help("Keep checkpoints in the finished stage folder.", default=False)
    report_to: list[str] = _help(
        "Experiment trackers the trainer logs to: none, or tensorboard (RUN/tensorboard/<stage>/), trackio, wandb, "
        "mlflow... (transformers' integrations; a tracker's own settings, e.g. WANDB_MODE=offline, apply).",
        default_factory=lambda: ["none"])
    # LoRA (peft)
    use_lora: bool = _help("Train a peft LoRA adapter instead of all weights.", default=False)
    lora_r: int = _help("LoRA rank.", default=16)
    lora_alpha: int = _help("LoRA alpha.", default=32)
    lora_dropout: float = _help("LoRA dropout.", default=0.05)
    lora_target_modules: list[str] = _help("Modules that get adapters ('all-linear' for every linear layer).",
                                           default_factory=lambda: ["all-linear"])
    merge_lora: bool = _help("Also write the adapter merged into the base model (a plain model folder).",
                             default=False)
    # The dial of generated arithmetic word problems (hf_pipeline/problems.py): SFT's worked problems and GRPO's
    # practice problems come from the same generator; a recipe sets both alike (a YAML anchor).
    problem_min_steps: int = _help("Generated problems: fewest arithmetic steps.", default=1)
    problem_max_steps: int = _help("Generated problems: most arithmetic steps.", default=2)
    problem_max_number: int = _help("Generated problems: largest number in a question.", default=20)
    problem_templates: list[str] = _help("Generated problems: templates to draw from (empty: the word problems; "
                                         "names in hf_pipeline.problems.TEMPLATES, e.g. addition, multiplication: "
                                         "column arithmetic worked digit by digit).", default_factory=list)
    problem_instruction: str = _help(
        "Generated problems: the prompt's instruction. system: a system message asking for the work step by step "
        "and the '#### N' line; format: the '#### N' line alone (whether to show work is the model's choice); "
        "suffix: the request appended to the question; none: the bare question.", default="system")

    def __post_init__(self):
        super().__post_init__()
        if not 1 <= self.problem_min_steps <= self.problem_max_steps:
            raise ConfigError(f"{self.stage}.problem_min_steps/problem_max_steps: need 1 <= min <= max, not "
                              f"{self.problem_min_steps}, {self.problem_max_steps}")
        check_problem_dial(self.stage, self.problem_templates, self.problem_instruction)

    def lora_config(self, trainable_token_indices: list[int] | None = None, task_type: str = "CAUSAL_LM"):
        """The ``peft.LoraConfig`` of these fields; ``trainable_token_indices``: tokens whose embeddings train too;
        ``task_type`` SEQ_CLS for a reward model (peft then trains its score head in full)."""
        from peft import LoraConfig

        targets = self.lora_target_modules
        return LoraConfig(
            r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout, task_type=task_type,
            target_modules="all-linear" if targets == ["all-linear"] else targets,
            trainable_token_indices=trainable_token_indices or None,
        )

    def problem_dial(self) -> dict:
        """The generator's arguments (``generate_problems``), the seed aside."""
        return dict(steps=(self.problem_min_steps, self.problem_max_steps), max_number=self.problem_max_number,
                    templates=self.problem_templates or None, instruction=self.problem_instruction)


PROBLEM_INSTRUCTIONS = ("system", "format", "suffix", "none")  # hf_pipeline.problems.make_prompt's styles


def check_problem_dial(prefix: str, templates: list[str], instruction: str) -> None:
    """One line for an unknown problem template or instruction (the post-training stages' and eval's fields)."""
    if templates:
        from .problems import TEMPLATES  # here, not at the top: problems imports rewards, which loads math-verify

        for name in templates:
            if name not in TEMPLATES:
                raise ConfigError(f"{prefix}.problem_templates: {unknown('template', name, TEMPLATES)}")
    if instruction not in PROBLEM_INSTRUCTIONS:
        raise ConfigError(f"{prefix}.problem_instruction: {unknown('instruction', instruction, PROBLEM_INSTRUCTIONS)}")


@dataclass
class SFTStageConfig(PostTrainingConfig):
    """Supervised fine-tuning on conversations with TRL SFTTrainer: the base model becomes an assistant."""

    stage: ClassVar[str] = "sft"

    datasets: list[Source] = _help(
        "Conversation sources (OASST message rows, messages, instruction/input/output), with weights.",
        default_factory=list,
    )
    heldout_fraction: float = _help("Share of conversations held out for the loss before/after.", default=0.05)
    max_length: int = _help("Tokens per conversation (longer ones are dropped or truncated).", default=512)
    drop_long: bool = _help(
        "Drop conversations longer than max_length (counted as skipped_too_long) instead of truncating them: a "
        "truncated reply never shows its <|im_end|>, so it teaches the model not to stop.", default=True
    )
    packing: bool = _help("Pack conversations into full windows.", default=False)
    languages: list[str] = _help(
        "Keep only conversations in these languages (ISO codes, e.g. [en]; empty: all), identified by the data "
        "stage's fastText model; the others are counted as skipped_language.", default_factory=list
    )
    language_threshold: float = _help("Language score a kept conversation needs (FineWeb: 0.65).", default=0.65)
    # Knowledge of self
    assistant_name: str = _help("The assistant's name, filled into the identity conversations.", default="Tiny")
    assistant_author: str = _help("Who built it, filled into the identity conversations.", default="hf-pipeline")
    identity_data: Optional[str] = _help(
        "Identity conversations with {{name}}/{{author}} placeholders (none: no identity data).", default=None
    )
    identity_weight: float = _help("Passes over the identity conversations.", default=1.0)
    worked_problems: int = _help(
        "Generated arithmetic word problems with worked solutions mixed in (0: none): the prompt the grpo stage "
        "sends, then intermediate results and '#### N'. Drawn with seed + 1 from the generator's training split: "
        "another draw than GRPO's practice problems, and never one of its held-out problems.", default=0
    )
    worked_share: float = _help(
        "Share of the worked problems shown with their worked solution; the others answer directly ('#### N' "
        "alone). Below 1 the model learns both forms, and greedy decoding picks the more frequent one: RL can find "
        "which form pays.", default=1.0
    )
    system_message: Optional[str] = _help(
        "Default system message put before every training conversation and used by chat (none: no system "
        "message). {name} and {author} are filled in.", default=None
    )
    # Knowing what it knows (the probe stage's data; hf_pipeline/evals/honesty.py)
    probe_data: Optional[str] = _help("The probe stage's conversations (RUN/probe): its own answers where the model "
                                      "knew, refusals where it did not (none: no probe data).", default=None)
    probe_weight: float = _help("Passes over the probe conversations.", default=1.0)
    honesty_questions: list[Source] = _help(
        "Held-out questions for accuracy and refusal rate per exposure level (e.g. {path: RUN/facts, split: "
        "heldout}; none: not measured).", default_factory=list)
    honesty_reference: Optional[str] = _help("The same model trained without refusal data (M_t): with it, "
                                             "prudence, over-conservativeness and honesty are measured.",
                                             default=None)
    honesty_limit: int = _help("Held-out questions asked (-1: all).", default=-1)
    honesty_max_new_tokens: int = _help("Token limit of an answer to a held-out question.", default=32)
    # Tools (hf_pipeline/tools/): traces that call python and search mid-reply
    tool_traces: dict = _help("Tool-use conversations per task family, e.g. {multiply: 2000, search: 1500} "
                              f"(families: {', '.join(TOOL_FAMILIES)}; empty: no tool training).",
                              default_factory=dict)
    tool_facts: Optional[str] = _help("The facts stage's dataset (RUN/facts): its probe people become search "
                                      "traces, its held-out people the search evaluation.", default=None)
    tool_index: Optional[str] = _help("The search index (RUN/index) whose results the search traces show.",
                                      default=None)
    gsm8k: str = _help("GSM8K (its <<a*b=c>> calculator notes become python calls).", default="openai/gsm8k")
    tools_off_share: float = _help(f"Share of the python traces asked with '{TOOLS_OFF}' and answered directly; "
                                   f"other conversations get '{TOOLS_ON}' or '{TOOLS_OFF}' at random.",
                                   default=0.2)
    tool_eval_tasks: int = _help("Held-out tasks per family for the tool measures after training (0: none).",
                                 default=100)
    sandbox_network: str = _help("The python tool where no network isolation works: 'require' refuses (checked "
                                 "before training), 'best_effort' runs without.", default="require")
    search_k: int = _help("Passages a search returns (traces and chat alike).", default=1)
    search_max_chars: int = _help("Characters kept of each passage a search returns.", default=300)
    # Evaluation
    eval_generations: int = _help("Held-out prompts sampled to measure the stop rate.", default=40)
    max_new_tokens: int = _help("Token limit of evaluation generations.", default=128)
    mmlu: Optional[str] = _help("MMLU dataset id or path for multiple-choice accuracy (none: skip).", default=None)
    mmlu_split: str = _help("MMLU split.", default="validation")
    mmlu_limit: int = _help("Questions scored (-1: all).", default=-1)

    def __post_init__(self):
        super().__post_init__()
        self.datasets = as_sources(self.datasets, self.output_dir)
        self.honesty_questions = as_sources(self.honesty_questions, self.output_dir)
        for family, count in self.tool_traces.items():
            if family not in TOOL_FAMILIES:
                raise ConfigError(f"sft.tool_traces: {unknown('family', family, TOOL_FAMILIES)}")
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise ConfigError(f"sft.tool_traces.{family}: must be an integer >= 0, not {count!r}")
        if self.tool_traces.get("search") and not (self.tool_facts and self.tool_index):
            raise ConfigError("sft.tool_traces.search: needs tool_facts (RUN/facts) and tool_index (RUN/index)")
        for name in ("model", "identity_data", "system_message", "mmlu", "probe_data", "honesty_reference",
                     "tool_facts", "tool_index"):
            value = getattr(self, name)  # `--identity_data null` switches it off
            if isinstance(value, str) and value.strip().lower() in ("", "none", "null"):
                setattr(self, name, None)
        for name in ("identity_data", "probe_data", "honesty_reference", "tool_facts", "tool_index"):
            if getattr(self, name):
                setattr(self, name, run_path(getattr(self, name), self.output_dir))

    def check(self, planned: tuple[str, ...] = ()) -> None:
        from .refs import check_dataset_ref

        self._check_sources("datasets", planned)
        self._check_sources("honesty_questions", planned)
        if self.tool_traces and self.tool_eval_tasks:  # the tools measure runs after training: fail now, not then
            from .tools.python import PythonSandbox

            try:
                PythonSandbox(network=self.sandbox_network, announce=False)
            except ConfigError as e:
                raise ConfigError(f"sft.sandbox_network: {e}") from None
        for name, stage in (("tool_facts", "facts"), ("tool_index", "index")):
            value = getattr(self, name)
            if value and not (Path(value) == self.stage_dir(stage) and stage in planned) and not Path(value).exists():
                raise ConfigError(f"sft.{name}: {value} does not exist (run the {stage} stage first)")
        if not (self.datasets or self.identity_data or self.worked_problems or self.probe_data or self.tool_traces):
            raise ConfigError("sft.datasets: no conversation sources given")
        if self.probe_data and not (Path(self.probe_data) == self.stage_dir("probe") and "probe" in planned):
            check_dataset_ref(self.probe_data, self.mirror, what="sft.probe_data")
        for name in ("identity_data", "mmlu"):
            if getattr(self, name):
                check_dataset_ref(getattr(self, name), self.mirror, what=f"sft.{name}")
        if self.honesty_reference:
            from .refs import resolve_model

            try:
                resolve_model(self.honesty_reference)
            except ConfigError as e:
                raise ConfigError(f"sft.honesty_reference: {e}") from None
        super().check(planned)  # model


# Judging answers (hf_pipeline/evals/qa.py): the refusal sentence is Alignment for Honesty's.
REFUSAL = "I apologize, but I'm not able to provide an answer to the question."
JUDGES = ("match", "exact_match", "f1", "model")
MODEL_JUDGE_PROMPT = ("Question: {question}\nReference answer: {reference}\nProposed answer: {reply}\n"
                      "Does the proposed answer give the reference answer? Reply yes or no.")


@dataclass
class ProbeConfig(SharedConfig):
    """Knowledge probing (Llama 3 section 4.3.6): sample the model on questions with references, judge, and write
    refusals for what it does not know and its own answers for what it does (hf_pipeline/probe.py)."""

    stage: ClassVar[str] = "probe"

    model: Optional[str] = _help("Model to probe: the model SFT will train (default: RUN/pretrain).", default=None)
    questions: list[Source] = _help(
        "Question sources with reference answers: the facts stage's probe split, or any dataset with question and "
        "answer columns (rajpurkar/squad, google-research-datasets/nq_open).",
        default_factory=lambda: [Source(path="RUN/facts", split="probe")])
    question_column: str = _help("Column of the question.", default="question")
    answer_column: Optional[str] = _help("Column of the references: a string, a list, or SQuAD's {text: [...]} "
                                         "(default: answers, else answer).", default=None)
    context_column: Optional[str] = _help("Column of the passage a question was written from (e.g. SQuAD's "
                                          "context): a row with an empty one is skipped (skipped_empty_context). "
                                          "The model is never shown it: the probe is closed-book.", default=None)
    limit: int = _help("Questions probed (-1: all).", default=-1)
    prompt: str = _help("How to ask: chat (a chat turn), base (a few-shot prompt), or auto (chat when the model "
                        "has chat_config.json, as an SFT model does).", default="auto")
    num_shots: int = _help("Base prompt: questions of the set shown first with their answers (not probed).",
                           default=3)
    system_message: Optional[str] = _help("Chat prompt: system message (default: the model's chat_config.json).",
                                          default=None)
    num_samples: int = _help("Answers sampled per question (Alignment for Honesty: 10).", default=10)
    temperature: float = _help("Sampling temperature of the answers (1: the model's own distribution).",
                               default=1.0)
    max_new_tokens: int = _help("Token limit of an answer.", default=32)
    batch_size: int = _help("Rows per generate call.", default=64)
    known_threshold: float = _help("Known when at least this share of the samples is right (0.1: one of ten).",
                                   default=0.1)
    judge: str = _help("match (a reference in the normalised answer), exact_match, f1 (>= f1_threshold) or model.",
                       default="match")
    f1_threshold: float = _help("F1 judge: the F1 a right answer reaches.", default=0.5)
    judge_model: Optional[str] = _help("Model judge: a chat model reference.", default=None)
    judge_prompt: str = _help("Model judge: prompt with {question}, {reference}, {reply}; a reply starting with "
                              "yes is right.", default=MODEL_JUDGE_PROMPT)
    refusal: str = _help("The refusal sentence unknown questions are answered with (detected exactly).",
                         default=REFUSAL)
    refusal_share: Optional[float] = _help("Share of refusals in the written data: the larger side is cut down "
                                           "(Alignment for Honesty: 0.5; none: keep every row).", default=0.5)
    resume: bool = _help("Continue a killed run where it stopped.", default=True)

    def __post_init__(self):
        super().__post_init__()
        self.questions = as_sources(self.questions, self.output_dir)
        if isinstance(self.model, str) and self.model.strip().lower() in ("", "none", "null"):
            self.model = None
        if self.prompt not in ("auto", "chat", "base"):
            raise ConfigError(f"probe.prompt: auto, chat or base, not {self.prompt!r}")
        if self.judge not in JUDGES:
            raise ConfigError(f"probe.judge: {unknown('judge', self.judge, JUDGES)}")
        if self.judge == "model" and not self.judge_model:
            raise ConfigError("probe.judge_model: the model judge needs a model reference")
        if not isinstance(self.refusal, str) or not self.refusal.strip():
            raise ConfigError("probe.refusal: must be a sentence, not empty")

    def check(self, planned: tuple[str, ...] = ()) -> None:
        self._check_sources("questions", planned)
        if not self.questions:
            raise ConfigError("probe.questions: no sources given")
        super().check(planned)  # model


@dataclass
class RLConfig(PostTrainingConfig):
    """Fields of the stages that train with TRL's GRPOTrainer (grpo, rlhf): rollouts and the objective.

    ``batch_size`` counts completions (not prompts) per device and micro-step, as in TRL: one optimizer step sees
    ``batch_size * gradient_accumulation_steps / num_generations`` prompts, so that product must be a multiple of
    ``num_generations``.
    """

    num_generations: int = _help("Group size: completions sampled per prompt.", default=8)
    beta: float = _help("KL coefficient against the starting model (0: no reference model).", default=0.0)
    temperature: float = _help("Sampling temperature of the rollouts.", default=1.0)
    max_completion_length: int = _help("Tokens per completion (rollouts and evaluation).", default=128)
    loss_type: str = _help("GRPO loss: grpo, bnpo, dr_grpo, dapo...", default="dapo")
    scale_rewards: str = _help("Advantage scaling: group (divide by the group's std), batch or none (Dr. GRPO).",
                               default="group")
    num_iterations: int = _help("Optimisation passes over each batch of rollouts (mu in the GRPO paper).", default=1)
    freeze_embeddings: bool = _help(
        "Keep the input embeddings and the LM head fixed (full fine-tuning only). Adam gives every row of the LM "
        "head a full-size step, even rows of tokens the policy never samples, and at learning rates that move "
        "the rest of a small model these rows rise into its replies as junk tokens.", default=False
    )
    use_vllm: bool = _help("Generate rollouts with vLLM (colocated; GPU and `pip install vllm` needed).",
                           default=False)

    def __post_init__(self):
        super().__post_init__()
        completions = self.batch_size * self.gradient_accumulation_steps
        if completions % self.num_generations:
            raise ConfigError(
                f"{self.stage}.batch_size: batch_size x gradient_accumulation_steps ({completions} completions) must "
                f"be a multiple of num_generations ({self.num_generations})"
            )
        if self.scale_rewards not in ("group", "batch", "none"):
            raise ConfigError(f"{self.stage}.scale_rewards: group, batch or none, not {self.scale_rewards!r}")


@dataclass
class GRPOStageConfig(RLConfig):
    """RL on verifiable problems with TRL GRPOTrainer: reward functions check the final answer."""

    stage: ClassVar[str] = "grpo"

    problems: str = _help(
        "'generated' (procedural arithmetic word problems) or a dataset id/path with question and answer "
        "(e.g. openai/gsm8k).", default="generated"
    )
    problems_name: Optional[str] = _help("Dataset config name (default: main for openai/gsm8k, none otherwise).",
                                         default=None)
    problems_split: str = _help("Dataset split the training and held-out problems are drawn from.", default="train")
    num_train_problems: int = _help("Training problems.", default=1000)
    num_test_problems: int = _help("Held-out problems for pass@1 / pass@k.", default=100)
    reward_weights: dict = _help(
        "Reward functions and their weights, e.g. {correctness: 1.0, format: 0.2, length: 0.0}.",
        default_factory=lambda: {"correctness": 1.0, "format": 0.2},
    )
    length_penalty: dict = _help(
        "Arguments of the length reward (rewards.make_length_penalty), e.g. {target: 200, unit: tokens}.",
        default_factory=dict,
    )
    # Evaluation
    pass_k: int = _help("k of pass@k.", default=8)
    eval_temperature: float = _help("Sampling temperature for pass@k.", default=1.0)
    eval_batch_size: int = _help("Prompts per generate call when measuring pass@1 / pass@k.", default=64)

    def __post_init__(self):
        super().__post_init__()
        self._check_rewards()

    def _check_rewards(self) -> None:
        """Reward names and weights, and the length penalty's arguments: wrong ones fail at build, not at the stage."""
        import inspect

        from .rewards import REWARD_FUNCTIONS, make_length_penalty  # here: rewards loads math-verify

        if not self.reward_weights:
            raise ConfigError(f"grpo.reward_weights: name at least one reward function ({', '.join(REWARD_FUNCTIONS)})")
        for name, weight in self.reward_weights.items():
            if name not in REWARD_FUNCTIONS:
                raise ConfigError(f"grpo.reward_weights: {unknown('reward function', name, REWARD_FUNCTIONS)}")
            try:
                float(weight)
            except (TypeError, ValueError):
                raise ConfigError(f"grpo.reward_weights.{name}: expected a number, got {weight!r}") from None
        arguments = inspect.signature(make_length_penalty).parameters
        for key in self.length_penalty:
            if key not in arguments:
                raise ConfigError(f"grpo.length_penalty: {unknown('argument', key, arguments)}")
        try:
            make_length_penalty(**self.length_penalty)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"grpo.length_penalty: {e}") from None

    def check(self, planned: tuple[str, ...] = ()) -> None:
        from .refs import check_dataset_ref

        if self.problems != "generated":
            check_dataset_ref(self.problems, self.mirror, what="grpo.problems")
        super().check(planned)  # model


def check_judge(where: str, judge: str, exists: bool = False) -> None:
    """A judge reference is a name of ``preferences.JUDGES``, ``module:function``, or a reward model (a folder, an
    org/name Hub id): a bare word that is no judge's name is one line with the names; with ``exists`` (the stage's
    ``check``, before anything runs) a folder that is not there is one line too."""
    from .preferences import JUDGES
    from .refs import is_hub_id

    if judge in JUDGES or ":" in judge:
        return
    if "/" not in judge and not Path(judge).exists():
        raise ConfigError(f"{where}: {unknown('judge', judge, JUDGES)}, and no module:function or model folder")
    if exists and not Path(judge).exists() and not is_hub_id(judge):
        raise ConfigError(f"{where}: {judge} does not exist (a reward model folder, a Hub id, or one of "
                          f"{', '.join(JUDGES)})")


@dataclass
class RankConfig(SharedConfig):
    """Rollouts of the SFT model ranked by a person (terminal or web page) or a judge, as preference pairs."""

    stage: ClassVar[str] = "rank"

    model: Optional[str] = _help("Model whose rollouts are ranked (default: RUN/sft).", default=None)
    prompts: str = _help("'generated' (short requests about topics: 'Write a sentence about cats.'; held-out topics "
                         "apart) or a dataset id/path with a prompt column.", default="generated")
    prompt_column: str = _help("Column of the prompts in a prompts dataset.", default="prompt")
    num_prompts: int = _help("Prompts rolled out and ranked.", default=800)
    heldout_fraction: float = _help("Share of the prompts (by topic) whose pairs are held out.", default=0.25)
    k: int = _help("Rollouts per prompt (InstructGPT ranked 4 to 9).", default=4)
    temperature: float = _help("Sampling temperature of the rollouts.", default=1.0)
    top_p: Optional[float] = _help("Nucleus sampling of the rollouts (none: off).", default=None)
    max_new_tokens: int = _help("Token limit of a rollout (one that reaches it is unfinished).", default=48)
    batch_size: int = _help("Rollouts per generate call.", default=64)
    judge: Optional[str] = _help("Scripted labeller: gold (the tiny recipe's preference), module:function, or a "
                                 "reward model folder; none: a person ranks (ui).", default=None)
    ui: Literal["terminal", "web"] = _help("Where a person ranks: terminal, or web (a local page).",
                                           default="terminal")
    host: str = _help("Web ranking page: address to listen on.", default="127.0.0.1")
    port: int = _help("Web ranking page: port (0: any free one).", default=8765)
    annotator: str = _help("Name recorded with a person's rankings.", default="human")
    rankings: Optional[str] = _help("A rankings file made elsewhere ({id, ranks} per line, ranks[i] the rank of "
                                    "rollout i, 1 = best) to import instead of ranking.", default=None)
    margin: bool = _help("Give each pair its rank distance as margin (Llama 2's graded margin); else 0.",
                         default=True)
    skip_unranked: bool = _help("Make pairs of what is ranked, leaving unranked prompts out.", default=False)
    resume: bool = _help("Continue an interrupted ranking where it stopped (same rollouts).", default=True)

    def __post_init__(self):
        super().__post_init__()
        self._references("model", "judge", "rankings")
        if self.judge:
            check_judge("rank.judge", self.judge)
        if self.rankings and not Path(self.rankings).is_file():
            raise ConfigError(f"rank.rankings: {self.rankings} is not a file")


@dataclass
class PreferenceData:
    """Where the preference stages (reward, rlhf, dpo) read pairs and prompts."""

    preferences: Optional[str] = _help(
        "Preference pairs: a rank stage folder (its train / test split), Anthropic/hh-rlhf, OpenAssistant/oasst1, "
        "or a dataset with prompt / chosen / rejected (default: RUN/rank).", default=None)
    preferences_name: Optional[str] = _help("Dataset config (data_dir) of the preferences, e.g. harmless-base.",
                                            default=None)
    preferences_split: Optional[str] = _help("Split of a preferences dataset without train / test splits.",
                                             default=None)
    preference_heldout: float = _help("Share of the prompts held out when the preferences have no test split.",
                                      default=0.1)


@dataclass
class JudgedConfig:
    """How the rlhf and dpo stages judge a policy on held-out prompts (hf_pipeline.evals.preference)."""

    judge: str = _help("Judge of the held-out replies, never trained on: gold (the tiny recipe's preference), "
                       "module:function, or a reward model folder (e.g. one trained on other pairs).", default="gold")
    judge_prompts: int = _help("Held-out prompts judged before and after training (-1: all).", default=200)
    judge_samples: int = _help("Replies sampled per held-out prompt.", default=2)

    def check(self, planned: tuple[str, ...] = ()) -> None:
        check_judge(f"{self.stage}.judge", self.judge, exists=True)
        super().check(planned)


@dataclass
class RewardStageConfig(PostTrainingConfig, PreferenceData):
    """A reward model (TRL RewardTrainer): a score head on the SFT model learns which reply of a pair is preferred."""

    stage: ClassVar[str] = "reward"

    eval_preferences: list[Source] = _help(
        "More held-out pairs to report accuracy on, e.g. [{path: Anthropic/hh-rlhf, name: harmless-base, split: "
        "test}]: accuracy_<name>.", default_factory=list)
    eval_limit: int = _help("Pairs scored per eval_preferences source (-1: all).", default=500)
    max_length: int = _help("Tokens per prompt + reply (longer pairs are dropped by TRL).", default=512)
    center_rewards_coefficient: Optional[float] = _help(
        "Pull the rewards' mean to 0 (Eisenstein et al.; 0.01 recommended; none: off).", default=0.01)
    use_margin: bool = _help("Use the pairs' margin column in the loss (Llama 2).", default=True)
    eval_batch_size: int = _help("Pairs per forward pass when scoring.", default=32)

    def __post_init__(self):
        super().__post_init__()
        self.eval_preferences = as_sources(self.eval_preferences, self.output_dir)
        self._references("model", "preferences")


@dataclass
class RLHFStageConfig(JudgedConfig, RLConfig, PreferenceData):  # JudgedConfig.check first
    """RL against the reward model (TRL GRPOTrainer), KL to the SFT model, guarded by an independent judge."""

    stage: ClassVar[str] = "rlhf"

    reward_model: Optional[str] = _help("The proxy reward model (default: RUN/reward).", default=None)
    num_generations: int = _help("Group size: completions sampled per prompt.", default=4)
    beta: float = _help("KL coefficient against the SFT model (0: none; over-optimisation comes sooner).",
                        default=0.05)
    max_completion_length: int = _help("Tokens per completion (a completion cut off there is never scored as "
                                       "finished: it gets unfinished_penalty, and no gradient).", default=48)
    unfinished_penalty: float = _help("Reward added to a completion that did not end its turn (0: none).",
                                      default=-1.0)
    mask_truncated_completions: bool = _help("Leave completions cut off at the token limit out of the loss (DAPO).",
                                             default=True)
    guard: bool = _help("Stop when the judge falls while the proxy rises, and keep the best-judged weights.",
                        default=True)
    guard_steps: int = _help("Judge the policy on held-out prompts every N steps.", default=10)
    guard_prompts: int = _help("Held-out prompts the guard judges each time.", default=64)
    patience: int = _help("Guard checks in a row with the judge below its best and the proxy above its value "
                          "there, before stopping.", default=3)

    def __post_init__(self):
        super().__post_init__()
        self._references("model", "preferences", "reward_model", "judge")
        check_judge("rlhf.judge", self.judge)


@dataclass
class DPOStageConfig(JudgedConfig, PostTrainingConfig, PreferenceData):  # JudgedConfig.check first
    """DPO (TRL DPOTrainer) on the preference pairs: the offline alternative to a reward model and RL."""

    stage: ClassVar[str] = "dpo"

    beta: float = _help("DPO beta: how far from the reference model the policy may move.", default=0.1)
    loss_type: list[str] = _help("DPO loss(es): sigmoid, ipo, hinge, robust, sft (RPO-style anchor)...",
                                 default_factory=lambda: ["sigmoid"])
    max_length: int = _help("Tokens per prompt + reply.", default=512)
    reward_model: Optional[str] = _help("A reward model whose score is reported beside the judge's (none: skip).",
                                        default=None)
    max_new_tokens: int = _help("Token limit of the judged replies.", default=48)
    temperature: float = _help("Sampling temperature of the judged replies.", default=1.0)

    def __post_init__(self):
        super().__post_init__()
        self._references("model", "preferences", "reward_model", "judge")
        check_judge("dpo.judge", self.judge)


# The config class of each stage, in pipeline order: the stage table names them (hf_pipeline/stages.py).
STAGE_CONFIGS: dict[str, type[SharedConfig]] = {stage.name: globals()[stage.config] for stage in STAGES}
# Keys a recipe may have besides the shared fields and one section per stage.
RECIPE_KEYS = {"stages", "description"}


# ----------------------------------------------------------------------------------------------------------------
# Recipes and parsing


def load_recipe(path: str | os.PathLike) -> dict:
    """Read a recipe YAML and check its top-level keys."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: recipe file not found")
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not UTF-8 text (line {line}, byte {e.object[e.start:e.start + 1]!r})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(recipe, dict):
        raise ConfigError(f"{path}: a recipe must be a YAML mapping, not {type(recipe).__name__}")
    shared = {f.name for f in dataclasses.fields(SharedConfig)}
    allowed = shared | RECIPE_KEYS | set(STAGE_CONFIGS)
    for key, value in recipe.items():
        if key not in allowed:
            raise ConfigError(f"{path}: unknown key '{key}'{suggest(key, allowed)}")
        if key in STAGE_CONFIGS and not isinstance(value, (dict, type(None))):
            raise ConfigError(f"{path}: section '{key}' must be a mapping")
    for stage in recipe.get("stages") or []:
        if stage not in STAGE_CONFIGS:
            raise ConfigError(f"{path}: stages: unknown stage '{stage}'{suggest(stage, STAGE_CONFIGS)}")
    return recipe


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the commands: no abbreviations (``--dept 3`` is an error, not ``--depth``), and a bad argument
    is a ConfigError (one line, exit 2) instead of usage text."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message):
        raise ConfigError(f"{self.prog}: {message}")


def make_parser(stage: str):
    """The HfArgumentParser of one stage (also used by the CLI to print --help)."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(STAGE_CONFIGS[stage], prog=f"hf-pipeline {stage}", allow_abbrev=False)
    parser.add_argument("--config", default=None, help="Recipe YAML; its shared fields and its section apply.")

    def error(message):  # argparse would print usage and exit; we want one line naming the problem
        raise ConfigError(f"hf-pipeline {stage}: {message}")

    parser.error = error
    for action in parser._actions:  # mapping fields take JSON on the command line (YAML mappings in recipes)
        if action.type is dict:
            action.type = json_mapping
        elif action.type is Source:
            action.type = source_arg
    return parser


def source_arg(text: str) -> Source:
    """A source on the command line: a path or id, or a JSON object of Source's fields
    (``--questions '{"path": "runs/tiny/facts", "split": "heldout"}'``)."""
    if not text.lstrip().startswith("{"):
        return Source(path=text)
    try:
        return from_mapping(Source, json_mapping(text))
    except (argparse.ArgumentTypeError, ConfigError) as e:
        raise argparse.ArgumentTypeError(f"a source: {e}") from None


def json_mapping(text: str) -> dict:
    """A JSON object given on the command line, e.g. ``--step_args '{"gopher_quality": {"min_doc_words": 20}}'``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def build_config(stage: str, args: list[str] | None = None, recipe: dict | None = None, recipe_path: str = "recipe"):
    """Build a stage config from a recipe (shared fields + the stage's section) and command-line args."""
    if stage not in STAGE_CONFIGS:
        raise ConfigError(f"unknown stage '{stage}'{suggest(stage, STAGE_CONFIGS)}")
    args = list(args or [])
    if "--config" in args:
        i = args.index("--config")
        if i + 1 >= len(args):
            raise ConfigError(f"hf-pipeline {stage}: --config needs a file")
        recipe_path = args[i + 1]
        recipe = load_recipe(recipe_path)
        del args[i : i + 2]
    recipe = recipe or {}
    cls = STAGE_CONFIGS[stage]
    parser = make_parser(stage)
    shared = {f.name for f in dataclasses.fields(SharedConfig)}
    values = {k: v for k, v in recipe.items() if k in shared}
    section = recipe.get(stage) or {}
    values.update(section)
    actions = {}
    for action in parser._actions:  # the first one: bool fields also get a --no_FIELD action with the same dest
        actions.setdefault(action.dest, action)
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        where = f"{recipe_path}: {stage + '.' if key in section else ''}{key}"
        if key not in actions or key == "config":
            raise ConfigError(f"{where}: unknown key{suggest(key, [f.name for f in dataclasses.fields(cls)])}")
        actions[key].default = _convert(actions[key], value, hints.get(key), where)
        actions[key].required = False
    parsed = parser.parse_args_into_dataclasses(args=args, return_remaining_strings=True)
    config, remaining = parsed[0], parsed[-1]
    if remaining:
        raise ConfigError(f"hf-pipeline {stage}: unknown option {remaining[0]}")
    return config


def _convert(action, value, hint, where: str):
    """Convert a YAML value with the argparse action's own type, so YAML and CLI agree on what is valid."""
    if value is None:
        if hint is not None and type(None) in typing.get_args(hint):
            return None
        raise ConfigError(f"{where}: must not be empty")
    convert = action.type or (lambda v: v)
    convert = Source if convert is source_arg else convert
    if convert is json_mapping:
        many = action.nargs in ("+", "*")
        items = value if many and isinstance(value, list) else [value]
        for item in items:
            if not isinstance(item, dict):
                raise ConfigError(f"{where}: expected {'a list of mappings' if many else 'a mapping'}, got {value!r}")
        return items if many else value

    def one(v):
        if dataclasses.is_dataclass(convert) and isinstance(v, dict):
            try:
                return from_mapping(convert, v)
            except TypeError as e:
                raise ConfigError(f"{where}: {e}") from None
            except ValueError as e:
                raise ConfigError(f"{where}: {e}") from None
        if isinstance(v, (dict, list)):
            raise ConfigError(f"{where}: expected a single value, got {v!r}")
        try:
            out = convert(v) if (isinstance(v, str) or dataclasses.is_dataclass(convert)) else convert(str(v))
        except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
            kind = getattr(convert, "__name__", "value").replace("string_to_bool", "bool (true/false)")
            raise ConfigError(f"{where}: expected {kind}, got {v!r} ({e})") from None
        if action.choices is not None and out not in action.choices:
            raise ConfigError(f"{where}: {v!r} is not one of {list(action.choices)}")
        return out

    if action.nargs in ("+", "*"):
        return [one(v) for v in (value if isinstance(value, list) else [value])]
    if isinstance(value, bool) and action.type is not None and action.type.__name__ == "string_to_bool":
        return value
    if isinstance(value, float) and convert is int:
        raise ConfigError(f"{where}: expected int, got {value!r}")
    return one(value)


def config_to_dict(config) -> dict:
    """A plain dict of a stage config, for config.yaml and model cards."""
    return {"stage": config.stage, **dataclasses.asdict(config)}


def save_config(config, path: str | os.PathLike) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
