"""The ``hf-pipeline`` command: one sub-command per stage, ``run`` for a whole recipe, and tools around them.

    hf-pipeline data      --config recipes/tiny.yaml [--output_dir DIR] [--workers 4 --executor slurm ...]
    hf-pipeline tokenizer --config recipes/tiny.yaml [--output_dir DIR] [--vocab_size 4096 ...]
    hf-pipeline pretrain  --config recipes/tiny.yaml [--output_dir DIR] [--depth 6 ...]
    hf-pipeline run       --config recipes/tiny.yaml [--output_dir DIR] [--stages ...] [--pretrain.max_steps 50 ...]
    hf-pipeline sft       --config recipes/tiny.yaml [--use_lora true ...]
    hf-pipeline grpo      --config recipes/tiny.yaml [--num_generations 8 ...]
    hf-pipeline rank      --config recipes/tiny.yaml [--judge gold | --judge none --ui terminal|web]
    hf-pipeline reward    --config recipes/tiny.yaml [--preferences Anthropic/hh-rlhf ...]
    hf-pipeline dpo       --config recipes/tiny.yaml [--beta 0.1 ...]
    hf-pipeline rlhf      --config recipes/tiny.yaml [--beta 0 --guard false ...]
    hf-pipeline chat      MODEL [--system TEXT] [--temperature 0.7 ...] [--tools python search --index RUN/index]
    hf-pipeline generate  MODEL --prompt TEXT [--temperature 0.8 --top_k 50 --top_p 0.95 --max_new_tokens 64 --seed 0]
    hf-pipeline push      RUN_DIR[/STAGE] --repo-id ORG/NAME [--private]
    hf-pipeline pull      ORG/NAME --to DIR
    hf-pipeline report    RUN_DIR
    hf-pipeline serve     MODEL [--tools python search --index RUN/index] [--port 8000]

A bad recipe, flag or input fails before any work starts, with one line that names the file, key or path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

from .artifacts import run_lock
from .config import STAGE_CONFIGS, ArgumentParser, ConfigError, build_config, load_recipe, make_parser
from .errors import suggest
from .stages import STAGES

logger = logging.getLogger("hf_pipeline")


def run_stage(config):
    """Run one stage (the ``run(config)`` of the module the stage table names), holding the run folder's lock."""
    from . import run_stage as run_locked

    return run_locked(config)


def cmd_stage(stage: str, argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        make_parser(stage).print_help()
        return 0
    config = build_config(stage, argv)
    config.check()
    path = run_stage(config)
    print(path)
    return 0


def _split_run_args(argv: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Split ``run`` args into shared ones and per-stage ``--stage.field value`` overrides."""
    shared, per_stage = [], {}
    target = shared
    for arg in argv:
        if arg.startswith("--") and "." in arg.split("=")[0]:
            stage, rest = arg[2:].split(".", 1)
            if stage not in STAGE_CONFIGS:
                raise ConfigError(f"hf-pipeline run: {arg}: unknown stage '{stage}'{suggest(stage, STAGE_CONFIGS)}")
            target = per_stage.setdefault(stage, [])
            target.append("--" + rest)
        elif arg.startswith("--"):
            target = shared
            target.append(arg)
        else:
            target.append(arg)
    return shared, per_stage


def cmd_run(argv: list[str]) -> int:
    parser = ArgumentParser(prog="hf-pipeline run", description="Run the stages of a recipe in order.")
    parser.add_argument("--config", required=True, help="Recipe YAML.")
    parser.add_argument("--stages", nargs="+", default=None, help="Stages to run (default: the recipe's `stages`).")
    if "-h" in argv or "--help" in argv:
        parser.print_help()
        print("\nAny shared field (--output_dir, --seed, --mirror, --overwrite...) applies to every stage;"
              "\n--STAGE.FIELD VALUE overrides one stage's field, e.g. --pretrain.max_steps 50.")
        return 0
    shared_args, per_stage = _split_run_args(argv)
    known, rest = parser.parse_known_args(shared_args)
    recipe = load_recipe(known.config)
    stages = known.stages or recipe.get("stages") or [s for s in STAGE_CONFIGS if s in recipe]
    for stage in stages:
        if stage not in STAGE_CONFIGS:
            raise ConfigError(f"hf-pipeline run: --stages: unknown stage '{stage}'{suggest(stage, STAGE_CONFIGS)}")
    for stage in per_stage:
        if stage not in stages:
            raise ConfigError(f"hf-pipeline run: --{stage}.* given but stage '{stage}' is not run")
    configs = [build_config(s, rest + per_stage.get(s, []), recipe, known.config) for s in stages]
    for i, config in enumerate(configs):  # every input checked before the first stage starts
        config.check(planned=tuple(stages[:i]))
    output_dir = Path(configs[0].output_dir) if configs else None
    with run_lock(output_dir) if output_dir else contextlib.nullcontext():  # no other process between the stages
        for config in configs:
            logger.info("run: stage %s -> %s", config.stage, config.stage_dir())
            run_stage(config)
        if output_dir:  # the report card of the whole run folder, its earlier stages included
            from .report import write_report

            for path in write_report(output_dir):
                logger.info("run: report -> %s", path)
    print(output_dir)
    return 0


def cmd_generate(argv: list[str]) -> int:
    parser = ArgumentParser(prog="hf-pipeline generate", description="Sample a continuation from a model.")
    parser.add_argument("model", help="Model folder, run folder (its latest model) or Hub id.")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0, help="0 for greedy decoding.")
    parser.add_argument("--top_k", "--top-k", type=int, default=None)
    parser.add_argument("--top_p", "--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no_stream", "--no-stream", action="store_true", help="Print the text at the end only.")
    from .chat import add_tool_args, register_tools

    add_tool_args(parser)
    args = parser.parse_args(argv)
    from .engine import Engine, SamplingParams

    sampling = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                              top_p=args.top_p, seed=args.seed)
    if not args.prompt:
        raise ConfigError("generate: --prompt must not be empty")
    engine = Engine.load(args.model)
    register_tools(engine, args)
    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    text = engine.complete(args.prompt, sampling, stream=not args.no_stream)
    if args.no_stream:
        print(text)
    return 0


def cmd_eval(argv: list[str]) -> int:
    """``hf-pipeline eval MODEL --suites chat mmlu ...``: the stages' measures on any model."""
    from transformers import HfArgumentParser

    from .evals import EvalConfig, run

    parser = HfArgumentParser(EvalConfig, prog="hf-pipeline eval", allow_abbrev=False,
                              description="Evaluate any model with the stages' measures; writes metrics.json.")
    if "-h" in argv or "--help" in argv:
        parser.print_help()
        return 0
    if argv and not argv[0].startswith("-"):  # the model as the first word
        argv = ["--model", argv[0], *argv[1:]]
    argv = ["--suites" if a == "--suite" else a for a in argv]

    def error(message):
        raise ConfigError(f"hf-pipeline eval: {message}")

    parser.error = error
    (config,) = parser.parse_args_into_dataclasses(args=argv)
    path = run(config)
    import json

    print(json.dumps(json.loads((path / "metrics.json").read_text()), indent=2))
    print(path)
    return 0


def cmd_chat(argv: list[str]) -> int:
    from .chat import main as chat_main

    return chat_main(argv)


def cmd_push(argv: list[str]) -> int:
    parser = ArgumentParser(prog="hf-pipeline push", description="Upload a stage folder, or a whole run, with model "
                            "cards.")
    parser.add_argument("folder", help="A finished stage folder (runs/tiny/pretrain), or a run folder (runs/tiny): "
                                       "each stage to ORG/NAME-<stage>, the run's index and report to ORG/NAME.")
    parser.add_argument("--repo-id", "--repo_id", dest="repo_id", required=True)
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--revision", default=None)
    parser.add_argument("--token", default=None, help="Hub token (default: the logged-in one / HF_TOKEN).")
    args = parser.parse_args(argv)
    from .hub import is_run_folder, push, push_run

    if is_run_folder(Path(args.folder)):  # every stage to ORG/NAME-<stage>, the run's index and report to ORG/NAME
        if args.revision:
            raise ConfigError("push: --revision is for one stage folder, not a whole run")
        print(push_run(args.folder, args.repo_id, args.private, args.token))
        return 0
    print(push(args.folder, args.repo_id, args.private, args.token, args.revision))
    return 0


def cmd_report(argv: list[str]) -> int:
    """``hf-pipeline report RUN``: RUN/report.md and RUN/report.html from the stages' metrics.json files."""
    from .report import main

    return main(argv)


def cmd_serve(argv: list[str]) -> int:
    """``hf-pipeline serve MODEL``: an OpenAI-compatible chat server with a web page (FastAPI + uvicorn)."""
    from .serve import main

    return main(argv)


def cmd_pull(argv: list[str]) -> int:
    parser = ArgumentParser(prog="hf-pipeline pull", description="Download a repo from the Hub.")
    parser.add_argument("repo_id")
    parser.add_argument("--to", default=None, help="Local folder (default: the Hugging Face cache).")
    parser.add_argument("--repo-type", "--repo_type", dest="repo_type", default="model", choices=["model", "dataset"])
    parser.add_argument("--revision", default=None)
    parser.add_argument("--token", default=None)
    args = parser.parse_args(argv)
    from .hub import RUN_INDEX, pull, pull_stages

    path = pull(args.repo_id, args.to, args.repo_type, args.revision, args.token)
    if (path / RUN_INDEX).is_file():  # a pushed run: each stage's repo into <to>/<stage>
        path = pull_stages(path, args.token)
    print(path)
    return 0


def usage() -> str:
    stages = "\n".join(f"  {stage.name:<10} {(STAGE_CONFIGS[stage.name].__doc__ or '').strip().splitlines()[0]}"
                       for stage in STAGES)
    return (
        "usage: hf-pipeline COMMAND [--config RECIPE.yaml] [--field value ...]\n\n"
        f"stages (each writes RUN/<stage>/):\n{stages}\n\n"
        "tools:\n"
        "  run        Run the stages of a recipe in order.\n"
        "  generate   Sample from a model folder, run folder or Hub id.\n"
        "  chat       Talk to a chat model (run folder, model or adapter folder, Hub id) in the terminal.\n"
        "  eval       Measure any model (bpb, mmlu, chat, problems, honesty, tools) and write metrics.json.\n"
        "  report     Write RUN/report.md and RUN/report.html: every stage's settings, times and measures.\n"
        "  serve      Serve a chat model: OpenAI-compatible /v1/chat/completions, tools, a web page at /.\n"
        "  push       Upload a stage folder to the Hub with a model card.\n"
        "  pull       Download a repo from the Hub.\n\n"
        "`hf-pipeline COMMAND --help` lists a command's options."
    )


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    import datasets
    import transformers

    transformers.logging.set_verbosity_warning()
    datasets.logging.set_verbosity_warning()


def main(argv: list[str] | None = None) -> int:
    """The command. The one place where an expected failure (bad value, file, artifact, Hub answer, interrupt)
    becomes one line on stderr and an exit status; only a bug keeps its traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _dispatch(argv)
    except ConfigError as e:  # a bad recipe, flag, file, artifact or Hub answer: one line, named
        print(f"hf-pipeline: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # stages write into RUN/<stage>.incomplete: nothing half-done looks complete
        print("hf-pipeline: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of our output went away (| head): nothing more to say
        sys.stdout = open(os.devnull, "w")  # so that the interpreter's final flush does not fail again
        return 141
    except OSError as e:
        if not e.filename:  # not about a file: an unexpected failure, with its traceback
            raise
        print(f"hf-pipeline: error: {e.filename}: {e.strerror or e}", file=sys.stderr)
        return 1


def _dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command in ("-V", "--version"):
        from . import __version__

        print(__version__)
        return 0
    handlers = {"run": cmd_run, "generate": cmd_generate, "chat": cmd_chat, "eval": cmd_eval, "push": cmd_push,
                "pull": cmd_pull, "report": cmd_report, "serve": cmd_serve}
    if command not in STAGE_CONFIGS and command not in handlers:
        raise ConfigError(f"unknown command '{command}'{suggest(command, [*STAGE_CONFIGS, *handlers])} "
                          f"(hf-pipeline --help lists them)")
    setup_logging()
    if command in STAGE_CONFIGS:
        return cmd_stage(command, rest)
    return handlers[command](rest)


if __name__ == "__main__":
    sys.exit(main())
