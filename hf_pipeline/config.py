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
import difflib
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

import yaml

MIRROR_ENV = "HF_PIPELINE_MIRROR"


class ConfigError(ValueError):
    """A bad recipe, flag or input reference. Its message is one line that names the file, key or path."""


def _help(text: str, **kwargs) -> Any:
    return field(metadata={"help": text}, **kwargs)


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

    def stage_dir(self, stage: str | None = None) -> Path:
        return Path(self.output_dir) / (stage or self.stage)


@dataclass
class TextSource:
    """One source of a text corpus: a local file, glob, folder, or a Hub dataset id (tried in the mirror first).

    ``weight`` is the number of passes over the source in one epoch of the mixture: 3.0 repeats it three times
    (the way curated sources are upweighted in real pretraining mixtures), 0.5 keeps a random half.
    """

    path: str
    name: Optional[str] = None
    split: str = "train"
    text_column: str = "text"
    sample_by: Literal["line", "paragraph", "document"] = "paragraph"
    weight: float = 1.0

    def __post_init__(self):
        if self.sample_by not in ("line", "paragraph", "document"):
            raise ValueError(f"sample_by must be line, paragraph or document, not {self.sample_by!r}")
        self.weight = float(self.weight)
        if self.weight <= 0:
            raise ValueError(f"weight must be > 0, not {self.weight}")


def _as_sources(items) -> list[TextSource]:
    if isinstance(items, (str, dict, TextSource)):
        items = [items]
    out = []
    for item in items or []:
        if isinstance(item, TextSource):
            out.append(item)
        elif isinstance(item, str):
            out.append(TextSource(path=item))
        elif isinstance(item, dict):
            out.append(TextSource(**item))
        else:
            raise ConfigError(f"corpus entry {item!r} is neither a path nor a mapping")
    return out


# ----------------------------------------------------------------------------------------------------------------
# Stage configs


@dataclass
class TokenizerConfig(SharedConfig):
    """Byte-level BPE trained from scratch, saved as a PreTrainedTokenizerFast with the chat template."""

    stage: ClassVar[str] = "tokenizer"

    corpus: list[TextSource] = _help("Text sources to train on (paths, globs, Hub ids).", default_factory=list)
    vocab_size: int = _help("Vocabulary size, special tokens included.", default=8192)
    min_frequency: int = _help("Minimum pair count for a merge.", default=2)
    max_train_chars: Optional[int] = _help("Stop feeding the trainer after this many characters.", default=None)
    heldout_fraction: float = _help("Share of documents held out to measure compression.", default=0.01)
    compare_with: Optional[str] = _help(
        "Reference tokenizer for the compression report: a tokenizer folder, a folder with GPT-2 style "
        "vocab.json/merges.txt, or a Hub id.",
        default=None,
    )

    def __post_init__(self):
        super().__post_init__()
        self.corpus = _as_sources(self.corpus)


@dataclass
class PretrainConfig(SharedConfig):
    """A Llama-style causal LM trained from scratch on packed token windows with transformers.Trainer."""

    stage: ClassVar[str] = "pretrain"

    tokenizer: Optional[str] = _help("Tokenizer folder or Hub id (default: RUN/tokenizer).", default=None)
    corpus: list[TextSource] = _help("Text sources to train on (paths, globs, Hub ids).", default_factory=list)
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
    bf16: bool = _help("Mixed precision in bfloat16 (AMX on CPU, tensor cores on GPU).", default=True)
    torch_compile: bool = _help("Compile the model with torch.compile.", default=False)
    # Bookkeeping
    eval_steps: int = _help("Evaluate held-out loss and bits per byte every N steps.", default=100)
    save_steps: int = _help("Checkpoint every N steps (resume picks up the last one).", default=100)
    logging_steps: int = _help("Log training loss every N steps.", default=10)
    resume: bool = _help("Continue a killed run from its last checkpoint, with the same data order.", default=True)
    keep_checkpoints: bool = _help("Keep checkpoints in the finished stage folder.", default=False)

    def __post_init__(self):
        super().__post_init__()
        self.corpus = _as_sources(self.corpus)


STAGE_CONFIGS: dict[str, type[SharedConfig]] = {
    "tokenizer": TokenizerConfig,
    "pretrain": PretrainConfig,
}
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
        recipe = yaml.safe_load(path.read_text()) or {}
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
            raise ConfigError(f"{path}: unknown key '{key}'{_suggest(key, allowed)}")
        if key in STAGE_CONFIGS and not isinstance(value, (dict, type(None))):
            raise ConfigError(f"{path}: section '{key}' must be a mapping")
    for stage in recipe.get("stages") or []:
        if stage not in STAGE_CONFIGS:
            raise ConfigError(f"{path}: stages: unknown stage '{stage}'{_suggest(stage, STAGE_CONFIGS)}")
    return recipe


def _suggest(key: str, choices) -> str:
    close = difflib.get_close_matches(str(key), list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def make_parser(stage: str):
    """The HfArgumentParser of one stage (also used by the CLI to print --help)."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(STAGE_CONFIGS[stage], prog=f"hf-pipeline {stage}")
    parser.add_argument("--config", default=None, help="Recipe YAML; its shared fields and its section apply.")

    def error(message):  # argparse would print usage and exit; we want one line naming the problem
        raise ConfigError(f"hf-pipeline {stage}: {message}")

    parser.error = error
    return parser


def build_config(stage: str, args: list[str] | None = None, recipe: dict | None = None, recipe_path: str = "recipe"):
    """Build a stage config from a recipe (shared fields + the stage's section) and command-line args."""
    if stage not in STAGE_CONFIGS:
        raise ConfigError(f"unknown stage '{stage}'{_suggest(stage, STAGE_CONFIGS)}")
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
            raise ConfigError(f"{where}: unknown key{_suggest(key, [f.name for f in dataclasses.fields(cls)])}")
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

    def one(v):
        if dataclasses.is_dataclass(convert) and isinstance(v, dict):
            try:
                return convert(**v)
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
