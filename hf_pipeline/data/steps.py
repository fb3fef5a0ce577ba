"""The steps of the web-data stage and the arguments each takes: ``step_args`` and ``executor_options`` are checked
against the classes' constructors before anything runs (``DataConfig`` calls ``check_step_args`` and
``check_executor_options``), so a misspelt keyword is one line with a did-you-mean, not a TypeError in a worker.
"""

from __future__ import annotations

from ..errors import ConfigError


def step_classes(extractor: str = "main_text") -> dict[str, tuple[type, ...]]:
    """The class behind each ``step_args`` key, then the datatrove class it subclasses or passes ``**kwargs`` to (the
    fast filters keep datatrove's constructors, so ``step_args`` take datatrove's argument names)."""
    from datatrove.pipeline.filters import (
        C4QualityFilter, FineWebQualityFilter, GopherQualityFilter, GopherRepetitionFilter, URLFilter,
    )

    from .extract import MainTextExtractor
    from .filters import (
        EarlyStopC4QualityFilter, FastFineWebQualityFilter, FastGopherQualityFilter, FastGopherRepetitionFilter,
        WebURLFilter,
    )
    from .lid import OfflineLanguageFilter

    if extractor == "main_text":
        extraction = (MainTextExtractor,)
    else:
        from datatrove.pipeline.extractors import Trafilatura

        extraction = (Trafilatura,)
    return {"url_filter": (WebURLFilter, URLFilter), "extraction": extraction, "language": (OfflineLanguageFilter,),
            "gopher_repetition": (FastGopherRepetitionFilter, GopherRepetitionFilter),
            "gopher_quality": (FastGopherQualityFilter, GopherQualityFilter),
            "c4_quality": (EarlyStopC4QualityFilter, C4QualityFilter),
            "fineweb_quality": (FastFineWebQualityFilter, FineWebQualityFilter)}


# Arguments the stage sets from other settings: step_args may not set them (they would clash or be ignored)
STAGE_SET_ARGS = {
    "exclusion_writer": "data.keep_dropped", "timeout": "data.extractor_timeout", "languages": "data.languages",
    "language_threshold": "data.language_threshold", "block_domains": "data.url_block_domains",
    "extra_domains": "data.url_block_domains", "block_urls": "data.url_block_urls",
    "extra_urls": "data.url_block_urls", "allow_domains": "data.url_allow_domains",
}


def _keywords(*classes: type) -> dict:
    """The keyword parameters of ``classes``' constructors (a subclass first: its defaults win)."""
    import inspect

    params = {}
    for cls in reversed(classes):
        params.update({name: p for name, p in inspect.signature(cls.__init__).parameters.items()
                       if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)})
    return params


def _check_keywords(where: str, kwargs: dict, params: dict, set_by_stage: dict) -> None:
    """Each of ``kwargs`` a parameter in ``params`` (not one the stage sets itself), with a value of its default's
    kind: a ConfigError (one line, with a did-you-mean) before anything runs, not a TypeError in a worker."""
    from ..errors import unknown

    for name, value in kwargs.items():
        if name in set_by_stage:
            raise ConfigError(f"{where}: '{name}' is set by {set_by_stage[name]}, not here")
        if name not in params:
            raise ConfigError(f"{where}: {unknown('argument', name, sorted(set(params) - set(set_by_stage)))}")
        default = params[name].default
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"{where}.{name}: must be true or false, not {value!r}")
        if (isinstance(default, (int, float)) and not isinstance(default, bool)
                and (isinstance(value, bool) or not isinstance(value, (int, float)))):
            raise ConfigError(f"{where}.{name}: must be a number, not {value!r}")


def check_step_args(step_args: dict, extractor: str = "main_text") -> None:
    """Each keyword of ``step_args`` is an argument of its step's class (``data.step_args.gopher_quality: unknown
    argument 'min_doc_wrds' (did you mean 'min_doc_words'?)``)."""
    classes = step_classes(extractor)
    for key, kwargs in step_args.items():
        _check_keywords(f"data.step_args.{key}", kwargs, _keywords(*classes[key]), STAGE_SET_ARGS)


def check_executor_options(executor: str, options: dict) -> None:
    """Each of ``executor_options`` is an argument of the datatrove executor's class."""
    from datatrove.executor import LocalPipelineExecutor, RayPipelineExecutor, SlurmPipelineExecutor

    cls = {"local": LocalPipelineExecutor, "slurm": SlurmPipelineExecutor, "ray": RayPipelineExecutor}[executor]
    set_by_stage = {"pipeline": "the stage", "depends": "the stage", "job_name": "the stage", "tasks": "data.tasks",
                    "logging_dir": "data.output_dir"}
    if executor != "slurm":
        set_by_stage["workers"] = "data.workers"
    _check_keywords(f"data.executor_options ({executor})", options, _keywords(cls), set_by_stage)
