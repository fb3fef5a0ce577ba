"""References to artifacts: a stage folder, a run folder, a local dataset path, or a Hub id.

Dataset ids are looked up first in the local mirror (``<mirror>/<org>/<name>``), then on the Hub. Model and tokenizer
references resolve to something ``from_pretrained`` accepts: a folder, or a Hub id left as it is.
"""

from __future__ import annotations

from pathlib import Path

from .artifacts import is_complete
from .config import ConfigError

# Stages whose folder holds a model, latest first: a run folder given as a model means its most trained model.
MODEL_STAGES = ("rlhf", "grpo", "sft", "pretrain")
MODEL_FILES = ("config.json", "adapter_config.json")  # a model folder, or a peft adapter folder
GLOB_CHARS = set("*?[")


def is_hub_id(ref: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(ref)
    except HFValidationError:
        return False
    return not ref.startswith((".", "/", "~"))


def resolve_model(ref: str) -> str:
    """A model reference -> a folder or a Hub id. A run folder resolves to its latest finished model stage."""
    path = Path(ref).expanduser()
    if path.is_dir():
        if any((path / f).is_file() for f in MODEL_FILES):
            return str(path)
        for stage in MODEL_STAGES:  # a stage folder holds a model (config.json) or a peft adapter (adapter_config.json)
            if is_complete(path / stage) and any((path / stage / f).is_file() for f in MODEL_FILES):
                return str(path / stage)
        raise ConfigError(f"{ref}: folder holds no model (no config.json, no finished {'/'.join(MODEL_STAGES)} stage)")
    if is_hub_id(ref) and not path.exists():
        return ref
    raise ConfigError(f"{ref}: no such model folder, and not a Hub id")


def resolve_tokenizer(ref: str) -> str:
    """A tokenizer reference -> a folder or a Hub id. A run folder resolves to its tokenizer stage."""
    path = Path(ref).expanduser()
    if path.is_dir():
        if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file():
            return str(path)
        if is_complete(path / "tokenizer"):
            return str(path / "tokenizer")
        raise ConfigError(f"{ref}: folder holds no tokenizer (no tokenizer.json)")
    if is_hub_id(ref) and not path.exists():
        return ref
    raise ConfigError(f"{ref}: no such tokenizer folder, and not a Hub id")


def local_files(ref: str) -> list[Path]:
    """The files a local path or glob names (empty if it names none)."""
    if GLOB_CHARS & set(ref):
        base = Path(ref).expanduser()
        anchor = Path(base.anchor) if base.is_absolute() else Path(".")
        pattern = str(base.relative_to(anchor)) if base.is_absolute() else ref
        return sorted(p for p in anchor.glob(pattern) if p.is_file())
    path = Path(ref).expanduser()
    return [path] if path.is_file() else []


def mirror_path(ref: str, mirror: str | None) -> Path | None:
    """The mirror folder of a Hub dataset id, if the mirror holds it."""
    if mirror and is_hub_id(ref):
        candidate = Path(mirror).expanduser() / ref
        if candidate.is_dir():
            return candidate
    return None


def check_dataset_ref(ref: str, mirror: str | None, what: str = "dataset") -> str:
    """Fail at start, with one line, on a dataset reference that cannot be found. Returns its kind."""
    if local_files(ref):
        return "files"
    if Path(ref).expanduser().is_dir():
        return "folder"
    if mirror_path(ref, mirror):
        return "mirror"
    if GLOB_CHARS & set(ref):
        raise ConfigError(f"{what}: '{ref}' matches no file")
    if not is_hub_id(ref) or Path(ref).suffix in {".txt", ".json", ".jsonl", ".parquet", ".csv", ".gz"}:
        raise ConfigError(f"{what}: '{ref}' not found")
    from huggingface_hub import HfApi

    try:
        exists = HfApi().repo_exists(ref, repo_type="dataset")
    except Exception as e:  # offline, DNS failure, HTTP error: say which reference it was
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(
            f"{what}: '{ref}' is no local path, not in the mirror ({mirror or 'none set'}), and the Hub is "
            f"unreachable ({reason[:120]})"
        ) from None
    if not exists:
        raise ConfigError(f"{what}: unknown dataset '{ref}' (not local, not in mirror {mirror or '-'}, not on the Hub)")
    return "hub"
