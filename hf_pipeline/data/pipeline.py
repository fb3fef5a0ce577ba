"""The data stage: FineWeb's recipe from web pages to a clean, deduplicated, PII-scrubbed ``datasets`` dataset.

    hf-pipeline data --config recipes/tiny.yaml --output_dir runs/tiny      ->  runs/tiny/data/

Each step is a datatrove pipeline step (datatrove's own where it has one, ours in this package where it does not),
in FineWeb's order, each switchable in the recipe:

    read WARC/WET/HTML/JSONL   WebReader                              (readers.py)
    1 URL filter               WebURLFilter = datatrove URLFilter     (filters.py)  block lists + user lists
    2 text extraction          MainTextExtractor | Trafilatura        (extract.py)  bounded by a timeout
    3 language filter          OfflineLanguageFilter                  (lid.py)      fastText lid.176, score >= 0.65
    4 quality filters          GopherRepetition, GopherQuality, C4 (terminal-punctuation rule off), FineWebQuality
    5 deduplication            datatrove ExactDedup* then MinhashDedup* (5-grams, 14 buckets x 8 hashes)
    6 PII                      PIIScrubber                            (pii.py)      emails, public IPs, phones

The steps run as datatrove *stages* (each a set of tasks on an executor: local processes, Slurm or Ray), because
deduplication needs every document's signature before any document can be dropped:

    filter        read -> steps 1-4 -> work/filtered/{rank}.jsonl.gz (+ exact-dedup signatures)
    exact_find    1 task: finds exact duplicates across all signatures
    exact_filter  work/filtered -> drop exact duplicates -> work/deduped (+ MinHash signatures)
    minhash_buckets, minhash_cluster
    final         work/deduped -> drop near-duplicates -> PII -> RUN/data/data/000_train-{rank}.parquet
    finalize      1 task: stats.json, metrics.json, then RUN/data.incomplete is renamed RUN/data

Datatrove marks each finished task, so re-running a killed run skips what is done and redoes a half-done task from
its start (its output file is rewritten, never appended to). Only a killed run of the same recipe resumes (its
stamp RUN/data.work/config.json and RUN/data.incomplete both there); ``overwrite``, a changed recipe or any other
leftover starts over, and the old RUN/data stays until the new one replaces it. The stats add up the per-task stats
of every task, whichever run or worker did it (stats.py). Worker processes end with the hf-pipeline process, so a
killed or interrupted run leaves nothing running. Working files and logs live in RUN/data.work/; the published
folder holds the dataset (``load_dataset(RUN/data)``), stats.json, metrics.json and config.yaml.

Executors (``executor``, with ``executor_options`` passed to datatrove's executor class):

    local   the stages one after the other, ``workers`` tasks at a time in processes of this machine
    ray     the same order on a Ray cluster: the one this process is connected to (``ray.init`` first), else the one
            at RAY_ADDRESS, else a local runtime started for the run and shut down after it. Each task runs in a
            Ray worker (``cpus_per_task``, ``mem_per_cpu_gb``: its reservation); same dataset and stats as local.
            RUN must be on a file system every node sees.
    slurm   submits the whole chain and returns at once (``sbatch`` on PATH; RUN on a shared file system). Each
            stage is one job array, one array task per datatrove task, ``--dependency=afterok:<previous stage's
            job>``, then a small datatrove job merging its stats (afterok on the stage's job):
                filter -> exact_find -> exact_filter -> minhash_buckets -> minhash_cluster -> final -> finalize
            Per stage, in RUN/data.work/logs/STAGE/: launch_script.slurm (the sbatch script: #SBATCH partition, time,
            cpus-per-task, mem-per-cpu, array=0-(tasks-1), output in slurm_logs/%A_%a.out; it runs ``srun -l -n 1
            launch_pickled_pipeline .../executor.pik``), executor.pik (the pickled stage), ranks_to_run.json,
            slurm_logs/, logs/ and stats/ of its tasks. Jobs run with the submitting shell's environment
            (``--export=ALL``: activate the venv before submitting, or pass ``venv_path``/``env_command``). RUN/data
            appears when the last job, ``finalize``, renames RUN/data.incomplete (an old RUN/data stays until then);
            a failed task stops the chain (afterok): submit again to resume, finished tasks are skipped.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
from pathlib import Path

from datatrove.executor import LocalPipelineExecutor, RayPipelineExecutor
from datatrove.pipeline.dedup import MinhashDedupFilter
from datatrove.pipeline.readers import JsonlReader

from ..artifacts import finish_stage, incomplete_dir, is_complete, write_json
from ..config import DataConfig, config_to_dict, save_config
from .readers import input_files, load_url_map
from .stats import collect_stats, summary_metrics

logger = logging.getLogger("hf_pipeline")

WORK_SUFFIX = ".work"
OUTPUT_SCHEMA_FIELDS = [
    ("text", "string"), ("id", "string"), ("url", "string"), ("date", "string"), ("language", "string"),
    ("language_score", "float64"), ("source_file", "string"), ("source_offset", "int64"),
]


# ----------------------------------------------------------------------------------------------------------------
# Inputs


# ----------------------------------------------------------------------------------------------------------------
# Steps


def document_text(doc) -> bytes:
    """What exact dedup hashes: the extracted text, as UTF-8 bytes."""
    return doc.text.encode("utf-8")


def output_row(doc) -> dict:
    """The published columns (one flat row per document), with every classifier's ``<name>_score``."""
    md = doc.metadata
    offset = md.get("source_offset", md.get("source_line"))
    return {
        "text": doc.text, "id": str(doc.id), "url": md.get("url"), "date": md.get("date"),
        "language": md.get("language"), "language_score": md.get("language_score"),
        "source_file": md.get("source_file"), "source_offset": int(offset) if offset is not None else None,
        **{key: value for key, value in md.items() if key.endswith("_score") and key != "language_score"},
    }


def _step_args(config: DataConfig, key: str) -> dict:
    return dict(config.step_args.get(key) or {})


def _dropped_writer(config: DataConfig, out: Path, key: str):
    if not config.keep_dropped:
        return None
    from datatrove.pipeline.writers import JsonlWriter

    return JsonlWriter(str(out / "dropped" / key), output_filename="${rank}.jsonl.gz")


def filter_steps(config: DataConfig, out: Path, words) -> list[tuple[str, object]]:
    """Steps 1-4 as (stats key, datatrove step), in FineWeb's order; switched-off steps are left out.
    ``words``: the word tokenizer (or language code) of the quality filters."""
    from .extract import MainTextExtractor
    from .filters import (
        EarlyStopC4QualityFilter, FastFineWebQualityFilter, FastGopherQualityFilter, FastGopherRepetitionFilter,
        WebURLFilter,
    )
    from .lid import OfflineLanguageFilter

    steps = []
    if config.url_filter:
        steps.append(("url_filter", WebURLFilter(
            block_domains=config.url_block_domains, block_urls=config.url_block_urls,
            allow_domains=config.url_allow_domains, exclusion_writer=_dropped_writer(config, out, "url_filter"),
            **_step_args(config, "url_filter"))))
    if config.extractor == "main_text":
        extractor = MainTextExtractor(timeout=config.extractor_timeout, **_step_args(config, "extraction"))
    else:
        from datatrove.pipeline.extractors import Trafilatura

        extractor = Trafilatura(favour_precision=True, timeout=config.extractor_timeout,
                                **_step_args(config, "extraction"))
    steps.append(("extraction", extractor))
    if config.language_filter:
        steps.append(("language", OfflineLanguageFilter(
            languages=tuple(config.languages), language_threshold=config.language_threshold,
            exclusion_writer=_dropped_writer(config, out, "language"), **_step_args(config, "language"))))
    quality = [
        ("gopher_repetition", config.gopher_repetition, FastGopherRepetitionFilter, {}),
        ("gopher_quality", config.gopher_quality, FastGopherQualityFilter, {}),
        ("c4_quality", config.c4_quality, EarlyStopC4QualityFilter, {"filter_no_terminal_punct": False}),  # FineWeb
        ("fineweb_quality", config.fineweb_quality, FastFineWebQualityFilter, {}),
    ]
    for key, enabled, cls, fineweb_settings in quality:
        if enabled:
            kwargs = {"language": words, **fineweb_settings, **_step_args(config, key)}
            steps.append((key, cls(exclusion_writer=_dropped_writer(config, out, key), **kwargs)))
    return steps


def resolve_classifiers(config: DataConfig) -> list[tuple[str, str | None]]:
    """Each classifier's local model path (a Hub id downloaded) and label, each model loaded once here: a bad path,
    repo or label is one line before anything is written or any task starts."""
    from .quality import load_classifier

    resolved = []
    for i, spec in enumerate(config.classifiers):
        classifier = load_classifier(spec.model, spec.label, spec.filename, spec.max_length,
                                     what=f"data.classifiers[{i}] ({spec.name})")
        resolved.append((str(classifier.path), classifier.label))
    return resolved


def classifier_steps(config: DataConfig, out: Path, resolved=None) -> list[tuple[str, object]]:
    """Step 4b: the recipe's document classifiers (quality, safety), after the rule filters, before dedup."""
    from .quality import ClassifierFilter

    resolved = resolve_classifiers(config) if resolved is None else resolved
    return [(spec.name, ClassifierFilter(
        path, spec.name, label=label, min_score=spec.min_score, max_score=spec.max_score, max_length=spec.max_length,
        batch_size=spec.batch_size, exclusion_writer=_dropped_writer(config, out, spec.name)))
        for spec, (path, label) in zip(config.classifiers, resolved)]


def output_schema(config: DataConfig):
    """The published columns: OUTPUT_SCHEMA_FIELDS and one ``<name>_score`` per classifier."""
    import pyarrow as pa

    fields = [*OUTPUT_SCHEMA_FIELDS, *((f"{spec.name}_score", "float64") for spec in config.classifiers)]
    return pa.schema([(name, getattr(pa, kind)()) for name, kind in fields])


class RankShardReader(JsonlReader):
    """Reads back ``{rank:05d}.jsonl.gz`` that this rank wrote in an earlier stage (same documents, same order).

    Dedup filters identify documents by their index within a rank's stream, so each rank must read exactly the
    file its rank wrote; a rank that kept no document wrote no file and reads nothing.
    """

    name = "📖 Read back"

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        name = f"{rank:05d}.jsonl.gz"
        if self.data_folder.exists(name):
            yield from self.read_files_shard([name])


class NearDuplicateFilter(MinhashDedupFilter):
    """datatrove's MinHash stage 4, also counting the characters it passes on (for stats.json)."""

    def run(self, data, rank: int = 0, world_size: int = 1):
        for doc in super().run(data, rank, world_size):
            self.update_doc_stats(doc)
            yield doc


def output_adapter(writer, doc) -> dict:
    return output_row(doc)


def _shard_writer(folder: Path):
    from datatrove.pipeline.writers import JsonlWriter

    return JsonlWriter(str(folder), output_filename="${rank}.jsonl.gz")


def build_stages(config: DataConfig, root: str, files: list[str], out: Path, work: Path,
                 classifiers: list | None = None) -> list[dict]:
    """The datatrove stages of this recipe: ``{name, pipeline, tasks, report}`` where ``report`` names the steps
    whose stats go into stats.json (None for writers and signature steps). ``classifiers``: resolved models
    (``resolve_classifiers``; None: resolved here)."""
    from datatrove.pipeline.dedup import (
        ExactDedupFilter, ExactDedupSignature, ExactFindDedups, MinhashConfig, MinhashDedupBuckets,
        MinhashDedupCluster, MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig
    from datatrove.pipeline.writers import ParquetWriter

    from .filters import word_tokenizer_for
    from .pii import PIIScrubber
    from .readers import WebReader

    tasks = config.tasks or config.workers or config.num_proc
    paths_file = work / "input_files.txt"
    paths_file.write_text("".join(f + "\n" for f in files))
    reader = WebReader(root, paths_file=str(paths_file), limit=config.limit, file_progress=True,
                       url_by_file=load_url_map(config.url_map))
    exact_cfg = ExactDedupConfig(content_getter=document_text)
    minhash_cfg = MinhashConfig(n_grams=config.minhash_ngrams, num_buckets=config.minhash_buckets,
                                hashes_per_bucket=config.minhash_hashes_per_bucket)

    words = word_tokenizer_for(config.languages[0])  # one tokenizer shared by the quality and MinHash steps
    stages = []
    current = [("read", reader), *filter_steps(config, out, words), *classifier_steps(config, out, classifiers)]

    def close_stage(name, signature_step):
        """End the current stage with its documents written per rank (+ signatures); the next one reads them."""
        nonlocal current
        folder = work / name
        current += [(None, _shard_writer(folder)), (None, signature_step)]
        stages.append({"name": name, "pipeline": current, "tasks": tasks})
        current = [(None, RankShardReader(str(folder)))]

    if config.exact_dedup:
        close_stage("filter", ExactDedupSignature(str(work / "exact_signatures"), config=exact_cfg))
        stages.append({"name": "exact_find", "tasks": 1, "pipeline": [
            (None, ExactFindDedups(str(work / "exact_signatures"), str(work / "exact_duplicates"), config=exact_cfg))]})
        current.append(("exact_dedup", ExactDedupFilter(str(work / "exact_duplicates"), config=exact_cfg,
                                                        exclusion_writer=_dropped_writer(config, out, "exact_dedup"))))
    if config.minhash_dedup:
        close_stage("exact_filter" if config.exact_dedup else "filter",
                    MinhashDedupSignature(str(work / "minhash_signatures"), config=minhash_cfg,
                                          language=words))
        stages.append({"name": "minhash_buckets", "tasks": config.minhash_buckets, "pipeline": [
            (None, MinhashDedupBuckets(str(work / "minhash_signatures"), str(work / "minhash_buckets"),
                                       config=minhash_cfg))]})
        stages.append({"name": "minhash_cluster", "tasks": 1, "pipeline": [
            (None, MinhashDedupCluster(str(work / "minhash_buckets"), str(work / "minhash_clusters"),
                                       config=minhash_cfg))]})
        current.append(("minhash_dedup", NearDuplicateFilter(
            str(work / "minhash_clusters"), exclusion_writer=_dropped_writer(config, out, "minhash_dedup"))))
    if config.pii:
        placeholders = {f"{kind}_replacement": tuple(getattr(config, f"{kind}_replacement"))
                        for kind in ("email", "ip", "phone") if getattr(config, f"{kind}_replacement")}
        current.append(("pii", PIIScrubber(**placeholders)))
    current.append((None, ParquetWriter(str(out / "data"), output_filename="train-${rank}.parquet",
                                        adapter=output_adapter, schema=output_schema(config))))
    stages.append({"name": "final", "pipeline": current, "tasks": tasks})
    for stage in stages:
        stage["report"] = [key for key, _ in stage["pipeline"]]
        stage["pipeline"] = [step for _, step in stage["pipeline"]]
    return stages


# ----------------------------------------------------------------------------------------------------------------
# Executors


def _start_time(pid: int) -> str | None:
    """A process's start time (``/proc/PID/stat`` field 22): with the pid, it names the process (pids are reused);
    None when it is gone or a zombie (or where there is no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] in "ZX" else fields[19]


_WATCHING: int | None = None  # the pid whose watch thread runs (a forked child inherits the value, not the thread)
_HOOKED: int | None = None  # the pid whose children get one


def _exit_with(process: tuple[int, str | None]) -> None:
    """In a helper process: end it as soon as ``process`` (pid, start time) is gone, however that ended (SIGKILL
    included), so that nothing goes on writing a task a re-run will redo, or waits forever for work."""
    import threading
    import time

    global _WATCHING
    if process[1] is None or _WATCHING == os.getpid():
        return
    _WATCHING = os.getpid()

    def watch():
        while _start_time(process[0]) == process[1]:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="hf-pipeline-exit-with", daemon=True).start()


def _children_exit_with_me() -> None:
    """Processes forked from this one from now on end when it ends: datatrove's Manager, and the extractor's
    sandbox, which holds both ends of its pipe and would otherwise wait for the next page forever."""
    import multiprocessing.util

    from multiprocess import util

    global _HOOKED
    if _HOOKED == os.getpid():
        return
    _HOOKED = os.getpid()
    me = (os.getpid(), _start_time(os.getpid()))
    for registry in (util, multiprocessing.util):  # datatrove forks with both
        registry.register_after_fork(_exit_with, lambda _: _exit_with(me))


class LocalExecutor(LocalPipelineExecutor):
    """datatrove's local executor whose processes (workers, its Manager, the extractor's sandboxes) end with the
    hf-pipeline process: a killed or interrupted run leaves no orphan behind, writing or waiting."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.main = (os.getpid(), _start_time(os.getpid()))
        _children_exit_with_me()

    def _launch_run_for_rank(self, rank: int, ranks_q, completed=None, completed_lock=None):
        if os.getpid() != self.main[0]:  # a pool worker (its parent is the forkserver, not this process)
            _exit_with(self.main)
            _children_exit_with_me()
        return super()._launch_run_for_rank(rank, ranks_q, completed, completed_lock)


class RayExecutor(RayPipelineExecutor):
    """datatrove's Ray executor whose task processes (forked by a Ray worker) end with that worker, and whose
    extractor sandboxes end with the task process: a killed Ray worker leaves no orphan behind."""

    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1):
        _exit_with((os.getppid(), _start_time(os.getppid())))
        _children_exit_with_me()
        return super()._run_for_rank(rank, local_rank, node_rank)


@contextlib.contextmanager
def _ray_session():
    """The Ray runtime the stages run on: the one this process is connected to (``ray.init`` before ``run``), else
    the cluster at RAY_ADDRESS, else a local one started here and shut down at the end."""
    import ray

    if ray.is_initialized():
        yield
        return
    ray.init(include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()


def make_executor(config: DataConfig, stage: dict, logging_dir: Path, depends=None):
    """The datatrove executor for one stage; ``executor_options`` go to its constructor (Slurm: partition, time...)."""
    options = dict(config.executor_options)
    common = dict(pipeline=stage["pipeline"], tasks=stage["tasks"], logging_dir=str(logging_dir), depends=depends)
    if config.executor == "local":
        workers = min(config.workers or config.num_proc, stage["tasks"])
        return LocalExecutor(workers=workers, **common, **options)  # depends is None: run() runs in order
    if config.executor == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        options.setdefault("time", "04:00:00")
        return SlurmPipelineExecutor(job_name=f"hf-pipeline-data-{stage['name']}", **common, **options)
    return RayExecutor(workers=config.workers or -1, **common, **options)


def published_rows(folder: Path) -> int:
    """Rows in the parquet shards under ``folder`` (from their footers: nothing is read)."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(path).metadata.num_rows for path in sorted(Path(folder).rglob("*.parquet")))


def finalize(data, rank: int = 0, world_size: int = 1, *, config_dict: dict, stages: list[dict], out: str,
             work: str, final: str, expected_files: int | None = None):
    """The last stage (one task): stats.json and metrics.json from every task of every stage (resumed runs and
    all workers included), then RUN/data.incomplete replaces RUN/data (``finish_stage``: the old one stays until
    the new one is in place)."""
    out, work, final = Path(out), Path(work), Path(final)
    stats = collect_stats(stages, work / "logs", published=published_rows(out / "data"),
                          expected_files=expected_files)
    stats["config"] = config_dict
    write_json(out / "stats.json", stats)
    write_json(out / "metrics.json", summary_metrics(stats))
    finish_stage(out, final)
    for sub in work.iterdir():  # intermediate documents, signatures and the stamp; the logs stay for inspection
        if sub.name != "logs":
            shutil.rmtree(sub) if sub.is_dir() else sub.unlink()
    return data or ()


# Settings that do not change what the stage computes: a run may resume with other values
RESUME_SAFE = {"overwrite"}


def _start_over_reason(config: DataConfig, config_dict: dict, out: Path, work: Path) -> str | None:
    """Why the leftovers of an earlier run (RUN/data.work, RUN/data.incomplete) cannot be resumed; None: resume
    (or nothing is left over). Only a killed run of the same recipe resumes: its stamp and its folder are there."""
    if not out.exists() and not work.exists():
        return None
    if config.overwrite:
        return "overwrite: true"
    stamp = work / "config.json"
    if not stamp.is_file() or not out.is_dir():  # a published run's logs (RUN/data deleted since), or a partial copy
        return f"{work} and {out} are not the two halves of a killed run"
    before = json.loads(stamp.read_text())
    now = json.loads(json.dumps(config_dict))
    changed = sorted(k for k in set(before) | set(now) if k not in RESUME_SAFE and before.get(k) != now.get(k))
    if changed:
        return f"the recipe changed since {work} was started ({', '.join(changed[:4])})"
    return None


def run(config: DataConfig) -> Path:
    """Clean the web pages of ``config.inputs`` the FineWeb way and write RUN/data/ (parquet shards, stats.json)."""
    final = config.stage_dir()
    if is_complete(final) and not config.overwrite:
        logger.info("data: %s is complete, skipping (overwrite: true to redo)", final)
        return final
    out, work = incomplete_dir(final), final.with_name(final.name + WORK_SUFFIX)
    root, files = input_files(config.inputs)
    classifiers = resolve_classifiers(config)
    config_dict = config_to_dict(config)
    # Resume only a killed run of the same recipe; anything else starts over (RUN/data stays until replaced).
    reason = _start_over_reason(config, config_dict, out, work)
    if reason:
        logger.info("data: starting over: %s", reason)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    elif out.exists():
        logger.info("data: resuming %s (finished tasks are skipped)", out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    write_json(work / "config.json", config_dict)
    save_config(config, out / "config.yaml")
    logger.info("data: %d input files under %s, executor %s", len(files), root, config.executor)

    stages = build_stages(config, root, files, out, work, classifiers)
    report = [{"name": s["name"], "report": s["report"], "tasks": s["tasks"]} for s in stages]
    stages.append({"name": "finalize", "tasks": 1, "report": [None], "pipeline": [functools.partial(
        finalize, config_dict=config_dict, stages=report, out=str(out), work=str(work), final=str(final),
        expected_files=len(files) if config.limit == -1 else None)]})
    if config.executor in ("local", "ray"):
        # One stage after the other (Ray too: with ``depends``, datatrove's Ray executor waits forever for a stage
        # with a failed task); datatrove skips the tasks a previous run finished.
        with _ray_session() if config.executor == "ray" else contextlib.nullcontext():
            for stage in stages:
                logs = work / "logs" / stage["name"]
                executor = make_executor(config, stage, logs)
                executor.run()
                failed = executor.get_incomplete_ranks(skip_completed=True)
                if failed:
                    raise RuntimeError(f"data: stage '{stage['name']}': {len(failed)} of {stage['tasks']} tasks "
                                       f"failed (logs in {logs}/logs); run again to retry them")
    else:
        executor = None
        for stage in stages:
            executor = make_executor(config, stage, work / "logs" / stage["name"], depends=executor)
        executor.run()  # Slurm: submits the chain of jobs and returns (an old RUN/data stays until the last job)
        logger.info("data: submitted; %s appears when the last job finishes", final)
        return final
    stats = json.loads((final / "stats.json").read_text())
    for step in stats["steps"]:
        logger.info("data: %-18s docs %7d -> %7d  chars %10s -> %10s  %s", step["step"], step["docs_in"],
                    step["docs_out"], step["chars_in"], step["chars_out"],
                    ", ".join(f"{k} {v}" for k, v in step["dropped"].items()))
    if stats.get("files"):
        logger.info("data: files: %s", ", ".join(f"{k} {v}" for k, v in stats["files"].items()))
    if stats.get("accounting"):  # each one was a warning when the stats were collected
        logger.warning("data: %d accounting problems: see 'accounting' in %s", len(stats["accounting"]),
                       final / "stats.json")
    return final
