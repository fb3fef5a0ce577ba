"""Sharing: push a stage folder to the Hub with a generated model card, pull a repo back by id.

``push`` creates the repo if needed and uploads, in one commit, what a user of the artifact needs: the folder's files
less checkpoints and pickles (``training_args.bin``, ``*.pkl``, ``*.pt``...; weights are safetensors), with the text
files that record the run (``config.yaml``, ``metrics.json``, ``adapter_config.json``...) and the generated
``README.md`` (a ``ModelCard``: the stage, its recipe config, its metrics and data sources) uploaded as scrubbed copies:
the run folder's absolute path becomes ``RUN``, the working directory ``.``, the home directory ``~``, and any other
existing local path its name. The local folder is never modified. ``pull`` is ``snapshot_download``. Anywhere an
artifact is expected (``tokenizer:``, ``generate MODEL``...), a Hub id works too, through ``from_pretrained``.
The endpoint is huggingface_hub's: ``HF_ENDPOINT`` points it at another Hub-compatible server.

Expected failures (an invalid repo id, a missing repo or revision, a refused token, an unreachable Hub, ``--to`` a
file) are ``ConfigError``s of one line naming the repo and the endpoint; anything else keeps its traceback.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import re
import zipfile
from pathlib import Path

import yaml

from .artifacts import CONFIG_FILE, INCOMPLETE_SUFFIX, read_metrics
from .errors import ConfigError

logger = logging.getLogger("hf_pipeline")

# Never uploaded: training checkpoints, temporary files, and the data stage's dropped documents (keep_dropped: for
# inspection on this machine; they hold its file paths).
IGNORE_PATTERNS = ["checkpoints/*", "checkpoint-*/*", "*.tmp", "*.incomplete/*", "dropped/*"]
# Never uploaded: pickles (loading one runs arbitrary code) - the Trainer's arguments, optimizer and rng states.
# A ``*.bin`` file is also skipped when its content is a pickle or a ``torch.save`` archive.
PICKLE_PATTERNS = ["training_args.bin", "*.pkl", "*.pickle", "*.pt", "*.pth"]
# Uploaded as scrubbed copies (no absolute local path): the text files that record how the run was made.
SCRUBBED_FILES = {CONFIG_FILE, "metrics.json", "chat_config.json", "adapter_config.json", "samples.json",
                  "log_history.json", "stats.json", "README.md"}
# What huggingface_hub's upload_folder never uploads either.
VCS_PATTERNS = [".git", ".git/*", "*/.git", "*/.git/*", ".cache/huggingface", ".cache/huggingface/*",
                "*/.cache/huggingface", "*/.cache/huggingface/*"]

_NAME_CHARS = r"[\w.@+-]"  # a path component, as paths appear in configs and logs (no spaces, commas...)
_START = r"(?:(?<=file://)|(?<![\w.~/-]))"  # a path starts here (not inside a word, an URL or a relative path)
_ABS_PATH = re.compile(rf"{_START}/{_NAME_CHARS}+(?:/{_NAME_CHARS}+)*/?")
_END = r"(?![\w@+-]|\.[\w.@+-])"  # a path ends here (a full stop may follow it)


# ---------------------------------------------------------------------------------------------------------------------
# Scrubbing local paths


class PathScrubber:
    """Rewrites the absolute local paths in a string (or in the strings of parsed JSON/YAML): the run folder -> ``RUN``,
    the working directory -> ``.``, the home directory -> ``~``, any other local path (one that exists here, or whose
    top folder does: ``/tmp/gone``) -> its name.

    ``names`` collects the names that stand for such other paths (the model card says so).
    """

    def __init__(self, run_dir: str | os.PathLike):
        places = [(Path(run_dir), "RUN"), (Path.cwd(), ".")]
        with contextlib.suppress(RuntimeError, KeyError):  # no home directory known: nothing to replace
            places.append((Path.home(), "~"))
        prefixes: dict[str, str] = {}
        for path, short in places:
            for variant in (os.path.abspath(path), str(Path(path).resolve())):
                variant = variant.rstrip("/")
                if variant and variant not in prefixes:  # "/" itself is never a prefix
                    prefixes[variant] = short
        self.prefixes = prefixes
        # Longest first, so that a run folder inside the home directory becomes RUN, not ~/runs/x.
        alternatives = "|".join(re.escape(p) for p in sorted(prefixes, key=len, reverse=True))
        self._known = re.compile(rf"{_START}({alternatives}){_END}") if alternatives else None
        self.names: set[str] = set()
        self.used: set[str] = set()  # which of RUN, ., ~ stand for a path somewhere

    def _short(self, match: re.Match) -> str:
        short = self.prefixes[match.group(1)]
        self.used.add(short)
        return short

    def _other(self, match: re.Match) -> str:
        found = match.group(0)
        path = found.rstrip("./") or found  # "... in /data/x." ends a sentence
        top = "/" + path.strip("/").split("/")[0]
        if os.path.lexists(path) or (top != path and os.path.isdir(top)):  # a deleted file under /home, /tmp...
            name = os.path.basename(path)
            self.names.add(name)
            return name + found[len(path):].lstrip("/")
        return found  # not a path on this machine (an URL path, a word after a slash...)

    def text(self, text: str) -> str:
        if self._known is not None:
            text = self._known.sub(self._short, text)
        return _ABS_PATH.sub(self._other, text)

    def data(self, data):
        """The same structure with every string (keys included) scrubbed."""
        if isinstance(data, str):
            return self.text(data)
        if isinstance(data, dict):
            return {self.data(k): self.data(v) for k, v in data.items()}
        if isinstance(data, (list, tuple)):
            return [self.data(v) for v in data]
        return data

    def file(self, path: Path) -> bytes:
        """A scrubbed copy of a JSON, YAML or text file's content; the original bytes when nothing changes."""
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw
        try:
            if path.suffix == ".json":
                data = json.loads(text)
                clean = self.data(data)
                if clean == data:
                    return raw
                return (json.dumps(clean, indent=2) + "\n").encode()
            if path.suffix in (".yaml", ".yml"):
                data = yaml.safe_load(text)
                clean = self.data(data)
                if clean == data:
                    return raw
                return yaml.safe_dump(clean, sort_keys=False).encode()
        except (ValueError, yaml.YAMLError):
            pass  # not parseable: scrub it as text
        clean = self.text(text)
        return raw if clean == text else clean.encode()


def is_pickle(path: Path) -> bool:
    """A file never uploaded: by name (``training_args.bin``, ``*.pt``...), or a ``*.bin`` holding a pickle."""
    if any(fnmatch.fnmatch(path.name, pattern) for pattern in PICKLE_PATTERNS):
        return True
    if path.suffix != ".bin":
        return False
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return True  # a raw pickle (protocol 2+)
    if head == b"PK\x03\x04":  # torch.save writes a zip holding data.pkl
        with contextlib.suppress(zipfile.BadZipFile, OSError), zipfile.ZipFile(path) as archive:
            return any(name.endswith(".pkl") for name in archive.namelist())
    return False


# ---------------------------------------------------------------------------------------------------------------------
# The model card


def repo_type_of(folder: Path) -> str:
    """A folder holding a dataset (``save_to_disk`` or parquet shards) goes to a dataset repo, anything else a model repo."""
    if (folder / "dataset_info.json").is_file() or (folder / "dataset_dict.json").is_file():
        return "dataset"
    if not (folder / "config.json").is_file() and any(folder.rglob("*.parquet")):
        return "dataset"
    return "model"


def model_card(folder: Path, repo_id: str, repo_type: str, scrubber: PathScrubber | None = None) -> str:
    """A model card for a stage folder: what it is, how it was made, what it scored, how to load it.

    With a ``scrubber``, no absolute local path appears in it (see ``PathScrubber``).
    """
    from huggingface_hub import DatasetCard, DatasetCardData, ModelCard, ModelCardData

    config = yaml.safe_load((folder / CONFIG_FILE).read_text()) if (folder / CONFIG_FILE).is_file() else {}
    stage = config.get("stage", folder.name)
    metrics = read_metrics(folder)
    sources = [s["path"] if isinstance(s, dict) else str(s) for s in config.get("corpus") or []]
    hub_sources = [s for s in sources if "/" in s and not Path(s).exists() and not s.startswith(".")]
    if scrubber is not None:  # after hub_sources: a scrubbed local path must not pass for a Hub id
        config, metrics, sources = scrubber.data(config), scrubber.data(metrics), scrubber.data(sources)
    tags = ["hf-pipeline", f"hf-pipeline-{stage}"]
    if repo_type == "dataset":
        data = DatasetCardData(tags=tags)
        card_cls = DatasetCard
    else:
        fasttext = (folder / "classifier.json").is_file()  # the quality stage's fastText classifier
        data = ModelCardData(library_name="fasttext" if fasttext else "transformers", tags=tags,
                             datasets=hub_sources or None)
        if fasttext:
            data.pipeline_tag = "text-classification"
        elif (folder / "config.json").is_file():
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
    elif (folder / "classifier.json").is_file():
        label = json.loads((folder / "classifier.json").read_text()).get("positive_label")
        lines += [
            "import fasttext",
            "from huggingface_hub import hf_hub_download",
            f'model = fasttext.load_model(hf_hub_download("{repo_id}", "model.bin"))',
            f'labels, probs = model.predict(" ".join(text.split()), k=-1)  # the score: __label__{label}',
            "```", "", "In an hf-pipeline recipe:", "", "```yaml",
            f"data: {{classifiers: [{{name: quality, model: {repo_id}, min_score: 0.5}}]}}",
        ]
    else:
        lines += ["from transformers import AutoTokenizer", f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")']
    lines += ["```", ""]
    text = "\n".join(lines)
    if scrubber is not None:
        text = scrubber.text(text)
        meaning = {"RUN": "`RUN` is the run folder", ".": "`.` the directory it was run from",
                   "~": "`~` the home directory"}
        notes = [meaning[short] for short in ("RUN", ".", "~") if short in scrubber.used]
        if notes:
            notes = [f"Local paths of the machine that made it are shortened: {', '.join(notes)}."]
        if scrubber.names:
            names = ", ".join(f"`{name}`" for name in sorted(scrubber.names))
            notes.append(f"Other local files and folders it used are named without their paths: {names}.")
        if notes:
            text += "\n" + "\n".join(["## Paths", "", " ".join(notes)]) + "\n"
    return str(card_cls(text))


# ---------------------------------------------------------------------------------------------------------------------
# Errors


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _connection_errors() -> tuple[type[BaseException], ...]:
    """What the HTTP client raises when the Hub cannot be reached: huggingface_hub >= 1 raises httpx's errors (httpx2's
    here: neither is an ``OSError``; a closed port is ``ConnectError: [Errno 111] Connection refused``), 0.x requests'."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)),
                          ("requests.exceptions", ("ConnectionError", "Timeout"))):
        with contextlib.suppress(ImportError):
            mod = __import__(module, fromlist=list(names))
            found += [getattr(mod, name) for name in names if hasattr(mod, name)]
    return tuple(found)


def _chain(error: BaseException):
    """The error, then its causes (``raise ... from``) and contexts, each once."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _why_unreachable(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, TimeoutError) or "timeout" in type(error).__name__.lower() or "timed out" in text.lower():
        return "timed out"
    if match := re.search(r"\[Errno -?\d+\] (.+)", text):
        return match.group(1).rstrip(".").lower()
    return text


def _hub_error(action: str, error: BaseException, repo_id: str, repo_type: str, revision: str | None,
               endpoint: str) -> str | None:
    """One line for an expected Hub failure, or None (a bug: keep the traceback)."""
    from huggingface_hub import get_token
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    repo = f"{repo_type} repo '{repo_id}'"
    unreachable = _connection_errors()
    for e in _chain(error):
        if isinstance(e, OfflineModeIsEnabled):
            return f"{action}: HF_HUB_OFFLINE is set, so the Hub at {endpoint} is not asked for {repo} (unset it)"
        if isinstance(e, GatedRepoError):
            return f"{action}: {repo} on {endpoint} is gated: accept its terms on the Hub, then set HF_TOKEN"
        if isinstance(e, RepositoryNotFoundError):
            other = "dataset" if repo_type == "model" else "model"
            hint = f"a {other}? --repo-type {other}" if action == "pull" else "do you have write access to it?"
            if get_token() is None:
                hint += "; private? set HF_TOKEN"
            return f"{action}: no {repo} on {endpoint} ({hint})"
        if isinstance(e, RevisionNotFoundError):
            return f"{action}: no revision '{revision or 'main'}' in {repo} on {endpoint}"
        if isinstance(e, HfHubHTTPError):
            status = e.response.status_code if e.response is not None else None
            said = (e.server_message or "").strip().splitlines()
            said = f": {said[0]}" if said else ""
            if status in (401, 403):
                return f"{action}: not authorised: HF_TOKEN? ({endpoint} answered {status} for {repo}{said})"
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            return f"{action}: the Hub at {endpoint} answered {status} for {repo}{said or ': ' + first}"
        if isinstance(e, unreachable):
            return f"{action}: the Hub at {endpoint} is unreachable ({_why_unreachable(e)})"
    return None


@contextlib.contextmanager
def _hub_errors(action: str, repo_id: str, repo_type: str, revision: str | None):
    """Expected failures of the Hub calls inside -> one-line ``ConfigError``s; the HTTP client's per-request INFO
    log lines are held back meanwhile (a failure is said once, by the error)."""
    endpoint = _endpoint()
    loggers = [logging.getLogger(name) for name in ("httpx", "httpx2", "httpcore")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    except Exception as error:
        message = _hub_error(action, error, repo_id, repo_type, revision, endpoint)
        if message is None:
            if isinstance(error, OSError) and error.filename and error.strerror:  # the local disk, not the Hub
                raise ConfigError(f"{action}: {error.filename}: {error.strerror}") from None
            raise
        raise ConfigError(message) from None
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _check_repo_id(action: str, repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ConfigError(
            f"{action}: invalid repo id '{repo_id}' (expected 'name' or 'namespace/name': letters, digits, '-', '_', "
            "'.', no '--' or '..', not starting or ending with '-' or '.', at most 96 characters)"
        ) from None


# ---------------------------------------------------------------------------------------------------------------------
# push / pull


def upload_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """The files of ``folder`` that are uploaded, and the pickles that are not (checkpoints are neither)."""
    keep, pickles = [], []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if not path.is_file() or any(fnmatch.fnmatch(rel, p) for p in IGNORE_PATTERNS + VCS_PATTERNS):
            continue
        (pickles if is_pickle(path) else keep).append(path)
    return keep, pickles


def push(folder: str | os.PathLike, repo_id: str, private: bool = False, token: str | None = None,
         revision: str | None = None, commit_message: str | None = None) -> str:
    """Upload a finished stage folder with a model card, without pickles or local paths. Returns the commit URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    _check_repo_id("push", repo_id)
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"push: {folder}: no such folder")
    if folder.name.endswith(INCOMPLETE_SUFFIX):
        raise ConfigError(f"push: {folder}: the stage did not finish; refusing to push an incomplete artifact")
    repo_type = repo_type_of(folder)
    scrubber = PathScrubber(folder.absolute().parent)  # a stage folder is RUN/<stage>
    files, pickles = upload_files(folder)
    weights = [p for p in pickles if fnmatch.fnmatch(p.name, "pytorch_model*.bin") or p.name == "adapter_model.bin"]
    if weights and not any(p.suffix == ".safetensors" for p in files):
        raise ConfigError(f"push: {weights[0]}: the weights are a pickle, which is never uploaded; save them as "
                          "safetensors (save_pretrained(..., safe_serialization=True)) to push them")
    for path in pickles:
        logger.info("push: not uploading %s (a pickle)", path.relative_to(folder))
    operations = []
    for path in files:
        rel = path.relative_to(folder).as_posix()
        content = scrubber.file(path) if path.name in SCRUBBED_FILES else str(path)
        operations.append(CommitOperationAdd(path_in_repo=rel, path_or_fileobj=content))
    if not (folder / "README.md").is_file():
        card = model_card(folder, repo_id, repo_type, scrubber)
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode()))
    api = HfApi(token=token)
    with _hub_errors("push", repo_id, repo_type, revision):
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        info = api.create_commit(
            repo_id=repo_id, repo_type=repo_type, revision=revision, operations=operations,
            commit_message=commit_message or f"Upload {folder.name} from hf-pipeline",
        )
    logger.info("push: uploaded %s to %s repo %s (%s)", folder, repo_type, repo_id, info.commit_url)
    return info.commit_url


def pull(repo_id: str, to: str | os.PathLike | None = None, repo_type: str = "model", revision: str | None = None,
         token: str | None = None, allow_patterns: list[str] | None = None) -> Path:
    """Download a repo (``snapshot_download``; only the files matching ``allow_patterns`` when given) into ``to`` (or
    the HF cache). Returns the local folder."""
    from huggingface_hub import snapshot_download

    _check_repo_id("pull", repo_id)
    if to is not None and Path(to).exists() and not Path(to).is_dir():
        raise ConfigError(f"pull: --to {to} is a file, not a folder")
    with _hub_errors("pull", repo_id, repo_type, revision):
        path = snapshot_download(repo_id, repo_type=repo_type, revision=revision, local_dir=to, token=token,
                                 allow_patterns=allow_patterns)
    logger.info("pull: downloaded %s repo %s to %s", repo_type, repo_id, path)
    return Path(path)


# ---------------------------------------------------------------------------------------------------------------------
# A whole run

RUN_INDEX = "run.json"  # in the run's repo: each stage's repo, type and commit


def is_run_folder(folder: Path) -> bool:
    """A run folder holds stage folders (``<stage>/config.yaml``, finished or not) and is not a stage folder itself."""
    from .stages import stage_names

    return not (folder / CONFIG_FILE).is_file() and any(
        (folder / name / CONFIG_FILE).is_file() for s in stage_names() for name in (s, f"{s}{INCOMPLETE_SUFFIX}"))


def stage_repo_id(repo_id: str, stage: str) -> str:
    """The repo a run's stage goes to: ``ORG/NAME-<stage>`` (``me/tiny`` -> ``me/tiny-sft``)."""
    return f"{repo_id}-{stage}"


def push_run(run_dir: str | os.PathLike, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Push every finished stage of a run to its own repo (``ORG/NAME-<stage>``: a model, tokenizer or reward model
    repo, or a dataset repo for data, facts and rank), each with its model card, then the run's own repo
    ``ORG/NAME``: ``run.json`` (each stage's repo and commit), the report (``README.md`` from ``report.md``, and
    ``report.html``). Unfinished stages (``.incomplete``) are named and skipped. Returns the run repo's commit URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    from .stages import stage_names

    _check_repo_id("push", repo_id)
    run_dir = Path(run_dir)
    finished = [s for s in stage_names() if (run_dir / s).is_dir()]
    skipped = [s for s in stage_names() if (run_dir / f"{s}{INCOMPLETE_SUFFIX}").is_dir()]
    if not finished:
        raise ConfigError(f"push: {run_dir}: no finished stage to push")
    for stage in skipped:
        logger.info("push: skipping %s: the stage did not finish", stage)
    index = {"run": run_dir.name, "stages": {}, "skipped": skipped}
    for stage in finished:
        stage_repo = stage_repo_id(repo_id, stage)
        url = push(run_dir / stage, stage_repo, private, token,
                   commit_message=f"Upload the {stage} stage of run {run_dir.name} ({repo_id})")
        index["stages"][stage] = {"repo_id": stage_repo, "repo_type": repo_type_of(run_dir / stage),
                                  "commit_url": url}
    scrubber = PathScrubber(run_dir.absolute())
    lines = [f"# {repo_id}", "", f"An hf-pipeline run (`{run_dir.name}`): one repo per stage, in pipeline order.", "",
             "| stage | repo | type |", "|---|---|---|"]
    for stage, i in index["stages"].items():
        kind = "datasets/" if i["repo_type"] == "dataset" else ""
        lines.append(f"| {stage} | [{i['repo_id']}](https://huggingface.co/{kind}{i['repo_id']}) | {i['repo_type']} |")
    lines += ["", f"`hf-pipeline pull {repo_id} --to DIR` brings the whole run back (`DIR/<stage>/`).", ""]
    report = run_dir / "report.md"
    if report.is_file():  # its plots (![..](sft/honesty.png)) now live in the stages' repos
        text = report.read_text(encoding="utf-8")
        for stage, info in index["stages"].items():
            kind = "datasets/" if info["repo_type"] == "dataset" else ""
            text = text.replace(f"]({stage}/", f"]({_endpoint()}/{kind}{info['repo_id']}/resolve/main/")
        lines += [scrubber.text(text)]
    operations = [CommitOperationAdd(path_in_repo=RUN_INDEX, path_or_fileobj=json.dumps(index, indent=2).encode()),
                  CommitOperationAdd(path_in_repo="README.md", path_or_fileobj="\n".join(lines).encode())]
    if (run_dir / "report.html").is_file():
        operations.append(CommitOperationAdd(path_in_repo="report.html",
                                             path_or_fileobj=scrubber.text((run_dir / "report.html").read_text(
                                                 encoding="utf-8")).encode()))
    api = HfApi(token=token)
    with _hub_errors("push", repo_id, "model", None):
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.create_commit(repo_id=repo_id, operations=operations,
                                 commit_message=f"Run {run_dir.name}: {len(finished)} stages")
    logger.info("push: run %s -> %s (%d stages%s)", run_dir, repo_id, len(finished),
                f"; not finished: {', '.join(skipped)}" if skipped else "")
    return info.commit_url


def pull_stages(folder: Path, token: str | None = None) -> Path:
    """A pulled run repo (``run.json``) made whole: each stage's repo into ``folder/<stage>``."""
    index = json.loads((folder / RUN_INDEX).read_text())
    for stage, info in index["stages"].items():
        pull(info["repo_id"], folder / stage, info["repo_type"], None, token)
    logger.info("pull: run %s (%s)", folder, ", ".join(index["stages"]))
    return folder
