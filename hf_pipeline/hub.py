"""Sharing: push a stage folder to the Hub with a generated model card, pull a repo back by id.

``push`` creates the repo if needed, writes ``README.md`` (a ``ModelCard``: the stage, its recipe config, its metrics
and data sources) and uploads the folder in one commit. ``pull`` is ``snapshot_download``. Anywhere an artifact is
expected (``tokenizer:``, ``generate MODEL``...), a Hub id works too, through ``from_pretrained``.
The endpoint is huggingface_hub's: ``HF_ENDPOINT`` points it at another Hub-compatible server.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import yaml

from .artifacts import CONFIG_FILE, INCOMPLETE_SUFFIX, read_metrics
from .config import ConfigError

logger = logging.getLogger("hf_pipeline")

# Never uploaded: training checkpoints and temporary files.
IGNORE_PATTERNS = ["checkpoints/*", "checkpoint-*/*", "*.tmp", "*.incomplete/*"]


def repo_type_of(folder: Path) -> str:
    """A folder holding a dataset (``save_to_disk`` or parquet shards) goes to a dataset repo, anything else a model repo."""
    if (folder / "dataset_info.json").is_file() or (folder / "dataset_dict.json").is_file():
        return "dataset"
    if not (folder / "config.json").is_file() and any(folder.rglob("*.parquet")):
        return "dataset"
    return "model"


def model_card(folder: Path, repo_id: str, repo_type: str) -> str:
    """A model card for a stage folder: what it is, how it was made, what it scored, how to load it."""
    from huggingface_hub import DatasetCard, DatasetCardData, ModelCard, ModelCardData

    config = yaml.safe_load((folder / CONFIG_FILE).read_text()) if (folder / CONFIG_FILE).is_file() else {}
    stage = config.get("stage", folder.name)
    metrics = read_metrics(folder)
    sources = [s["path"] if isinstance(s, dict) else str(s) for s in config.get("corpus") or []]
    hub_sources = [s for s in sources if "/" in s and not Path(s).exists() and not s.startswith(".")]
    tags = ["hf-pipeline", f"hf-pipeline-{stage}"]
    if repo_type == "dataset":
        data = DatasetCardData(tags=tags)
        card_cls = DatasetCard
    else:
        data = ModelCardData(library_name="transformers", tags=tags, datasets=hub_sources or None)
        if (folder / "config.json").is_file():
            data.pipeline_tag = "text-generation"
        card_cls = ModelCard
    lines = [
        "---", data.to_yaml(), "---", "",
        f"# {repo_id}", "",
        f"The `{stage}` stage of an hf-pipeline run (the ChatGPT training pipeline on the Hugging Face stack).", "",
    ]
    if metrics:
        lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in sorted(metrics.items())]
        lines.append("")
    if sources:
        lines += ["## Data", ""] + [f"- `{s}`" for s in sources] + [""]
    if config:
        lines += ["## Configuration", "", "```yaml", yaml.safe_dump(config, sort_keys=False).strip(), "```", ""]
    lines += ["## Usage", "", "```python"]
    if (folder / "config.json").is_file():
        lines += [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")',
            f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")',
        ]
    elif repo_type == "dataset":
        lines += ["from datasets import load_dataset", f'ds = load_dataset("{repo_id}")']
    else:
        lines += ["from transformers import AutoTokenizer", f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")']
    lines += ["```", ""]
    return str(card_cls("\n".join(lines)))


def push(folder: str | os.PathLike, repo_id: str, private: bool = False, token: str | None = None,
         revision: str | None = None, commit_message: str | None = None) -> str:
    """Upload a finished stage folder with a model card. Returns the commit URL."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such folder")
    if folder.name.endswith(INCOMPLETE_SUFFIX):
        raise ConfigError(f"{folder}: the stage did not finish; refusing to push an incomplete artifact")
    repo_type = repo_type_of(folder)
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    card = model_card(folder, repo_id, repo_type)
    readme = folder / "README.md"
    had_readme = readme.exists()
    if not had_readme:
        readme.write_text(card)
    try:
        info = api.upload_folder(
            folder_path=str(folder), repo_id=repo_id, repo_type=repo_type, revision=revision,
            commit_message=commit_message or f"Upload {folder.name} from hf-pipeline",
            ignore_patterns=IGNORE_PATTERNS,
        )
    finally:
        if not had_readme:
            readme.unlink()
    logger.info("push: uploaded %s to %s repo %s (%s)", folder, repo_type, repo_id, info.commit_url)
    return info.commit_url


def pull(repo_id: str, to: str | os.PathLike | None = None, repo_type: str = "model", revision: str | None = None,
         token: str | None = None) -> Path:
    """Download a repo (``snapshot_download``) into ``to`` (or the HF cache). Returns the local folder."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        path = snapshot_download(repo_id, repo_type=repo_type, revision=revision, local_dir=to, token=token)
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise ConfigError(f"{repo_id}: {str(e).splitlines()[0]}") from None
    logger.info("pull: downloaded %s repo %s to %s", repo_type, repo_id, path)
    return Path(path)
