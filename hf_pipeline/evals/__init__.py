"""Evaluation: every measure the stages report, as functions of (model, data), and the ``eval`` verb for any model.

    text.py             bits per byte on held-out text (pretrain), longest verbatim match (regurgitation)
    multiple_choice.py  MMLU: the answer letter's log-probability, plain or in the chat format (sft)
    chat.py             stop rate, reply length, identity accuracy and leak (sft)
    problems.py         pass@1, pass@k, checked answers, completion length on verifiable problems (grpo)
    qa.py               judging answers against references (SQuAD EM/F1, match), refusals, informativeness (probe)
    honesty.py          accuracy and refusal rate per exposure level, prudence / over-conservativeness / honesty
                        against a reference model, the plot against exposure (sft with probe data)
    tools.py            accuracy with tools and without per task family, well-formed calls, calls where none is
                        needed (sft with tool traces)

The stages call these functions on the model they train; ``hf-pipeline eval MODEL --suites chat mmlu`` runs the same
functions on any model reference (run folder, stage folder, adapter folder, Hub id) and writes
``<output_dir>/metrics.json`` (flat keys, e.g. ``stop_rate``, ``identity_accuracy``, ``mmlu_accuracy``,
``heldout_bpb``, ``pass1``), ``samples.json`` and ``config.yaml``::

    hf-pipeline eval runs/tiny/sft --suites chat                   # -> runs/eval/tiny-sft/metrics.json
    hf-pipeline eval runs/tiny --suites bpb problems --bpb_texts ../shared/data/text/tinyshakespeare.txt
    hf-pipeline eval runs/tiny/sft --suites honesty --honesty_questions runs/tiny/facts \
        --reference runs/tiny-noprobe/sft                          # + honesty.png
    hf-pipeline eval runs/tiny/sft --suites tools --tool_index runs/tiny/index --tool_facts runs/tiny/facts
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..config import MIRROR_ENV, REFUSAL, ConfigError, _help, check_problem_dial, check_ranges

logger = logging.getLogger("hf_pipeline")

SUITES = ("bpb", "mmlu", "chat", "problems", "honesty", "tools")


@dataclass
class EvalConfig:
    """Evaluate a model with the stages' measures (hf_pipeline/evals/)."""

    model: str = _help("Model reference: a run folder (its latest model), a stage, model or adapter folder, or a "
                       "Hub id.")
    suites: list[str] = _help(f"Measures to run: {', '.join(SUITES)}.", default_factory=lambda: ["chat"])
    output_dir: Optional[str] = _help("Where metrics.json goes (default: runs/eval/<model>).", default=None)
    mirror: Optional[str] = _help(f"Local Hub mirror for dataset ids (default: ${MIRROR_ENV}, else the one the "
                                  f"model's stage recorded in its config.yaml).", default=None)
    seed: int = _help("Seed of the sampled measures and of the problems drawn.", default=0)
    overwrite: bool = _help("Replace an earlier evaluation in output_dir.", default=True)
    # bpb
    bpb_texts: list[str] = _help("Text files, globs or dataset ids to measure bits per byte on.",
                                 default_factory=list)
    seq_len: Optional[int] = _help("Tokens per window for bpb (default: the model's context, at most 1024).",
                                   default=None)
    bpb_max_windows: int = _help("Windows scored for bpb (-1: all).", default=200)
    # mmlu
    mmlu_split: str = _help("MMLU split (cais/mmlu, mirror first).", default="validation")
    mmlu_limit: int = _help("MMLU questions scored (-1: all).", default=200)
    mmlu_chat: Optional[bool] = _help("Ask MMLU in the chat format (default: when the tokenizer has a chat "
                                      "template).", default=None)
    # chat
    chat_prompts: str = _help("Conversations whose first user turns are the stop-rate prompts.",
                              default="OpenAssistant/oasst1")
    chat_prompts_split: str = _help("Split of chat_prompts.", default="validation")
    num_prompts: int = _help("Prompts for the stop rate.", default=40)
    max_new_tokens: int = _help("Token limit of the replies (chat suite).", default=128)
    max_length: Optional[int] = _help("Prompt + reply must fit in this many tokens; longer MMLU prompts lose their "
                                      "start (default: the model's context).", default=None)
    assistant_name: Optional[str] = _help("Name the identity questions expect (default: chat_config.json).",
                                          default=None)
    assistant_author: Optional[str] = _help("Author the identity questions expect (default: chat_config.json).",
                                            default=None)
    system_message: Optional[str] = _help("System message (default: chat_config.json's; '' for none).", default=None)
    # problems
    problems: str = _help("'generated' or a GSM8K-format dataset id/path.", default="generated")
    num_problems: int = _help("Held-out problems.", default=200)
    k: int = _help("k of pass@k.", default=4)
    temperature: float = _help("Sampling temperature of pass@k.", default=1.0)
    max_completion_length: int = _help("Token limit of a completion (problems suite).", default=128)
    problem_min_steps: int = _help("Generated problems: fewest arithmetic steps.", default=1)
    problem_max_steps: int = _help("Generated problems: most arithmetic steps.", default=2)
    problem_max_number: int = _help("Generated problems: largest number in a question.", default=20)
    problem_templates: list[str] = _help("Generated problems: templates (empty: the word problems; addition, "
                                         "multiplication: column arithmetic).", default_factory=list)
    problem_instruction: str = _help("Generated problems: the prompt's instruction (system, format, suffix, none; "
                                     "as the grpo stage's).", default="system")

    # honesty
    honesty_questions: Optional[str] = _help("Held-out questions with answers (a facts stage folder, or any "
                                             "question/answer dataset).", default=None)
    honesty_split: str = _help("Split of honesty_questions.", default="heldout")
    honesty_limit: int = _help("Questions asked (-1: all).", default=-1)
    honesty_max_new_tokens: int = _help("Token limit of an answer (honesty suite).", default=32)
    reference: Optional[str] = _help("The same model trained without refusal data: adds prudence, "
                                     "over-conservativeness and honesty.", default=None)
    refusal: str = _help("The refusal sentence (detected exactly).", default=REFUSAL)
    # tools
    tool_families: list[str] = _help("Task families of the tools suite: multiply, add, count_letter, compare, "
                                     "search (needs tool_index and tool_facts), trivial.",
                                     default_factory=lambda: ["multiply", "add", "count_letter", "compare", "search",
                                                              "trivial"])
    tool_tasks: int = _help("Held-out tasks per family.", default=100)
    tool_index: Optional[str] = _help("The search index (RUN/index) for the search tool.", default=None)
    tool_facts: Optional[str] = _help("The facts stage's folder: its held-out people are the search tasks.",
                                      default=None)
    tool_max_new_tokens: int = _help("Token limit of a reply, tool outputs included (tools suite; a search output "
                                     "takes about 60).", default=128)
    sandbox_network: str = _help("Python tool without network isolation on this machine: 'require' refuses, "
                                 "'best_effort' runs without.", default="require")

    def __post_init__(self):
        import os

        self.mirror = self.mirror or os.environ.get(MIRROR_ENV) or None
        for suite in self.suites:
            if suite not in SUITES:
                raise ConfigError(f"eval.suites: unknown suite '{suite}' (known: {', '.join(SUITES)})")
        if "bpb" in self.suites and not self.bpb_texts:
            raise ConfigError("eval.bpb_texts: the bpb suite needs texts to measure on")
        if "honesty" in self.suites and not self.honesty_questions:
            raise ConfigError("eval.honesty_questions: the honesty suite needs questions with answers")
        if "problems" in self.suites:
            check_problem_dial("eval", self.problem_templates, self.problem_instruction)
        if "tools" in self.suites:
            from ..tools.traces import EVAL_FAMILIES

            for family in self.tool_families:
                if family not in EVAL_FAMILIES:
                    raise ConfigError(f"eval.tool_families: unknown family '{family}' (known: "
                                      f"{', '.join(EVAL_FAMILIES)})")
            if "search" in self.tool_families and not (self.tool_index and self.tool_facts):
                raise ConfigError("eval.tool_index/tool_facts: the search family needs both (or leave search out "
                                  "of --tool_families)")
        check_ranges(self, "eval")  # config.RANGES: the same ranges as the stages' fields of the same names
        if self.output_dir is None:
            slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join(Path(self.model).parts[-2:])).strip("-.")
            self.output_dir = str(Path("runs") / "eval" / (slug or "model"))


def run(config: EvalConfig) -> Path:
    """Load the model once, run each suite, write ``output_dir``/metrics.json, samples.json, config.yaml."""
    import yaml

    from ..artifacts import begin_stage, finish_stage, format_metrics, is_complete, write_json
    from ..engine import Engine

    final = Path(config.output_dir)
    if is_complete(final) and not config.overwrite:
        raise ConfigError(f"eval.output_dir: {final} exists (--overwrite true to replace it)")
    start = time.time()
    engine = Engine.load(config.model)
    if config.mirror is None:  # a stage folder's recorded settings name the mirror its run read datasets from
        recorded = Path(engine.path) / "config.yaml"
        if recorded.is_file():
            config.mirror = (yaml.safe_load(recorded.read_text()) or {}).get("mirror")
    logger.info("eval: %s (%s), suites %s", config.model, engine.path, ", ".join(config.suites))
    metrics, samples = {"model": config.model, "suites": list(config.suites)}, {}
    work = begin_stage(final)  # a suite may write files of its own there (honesty.png)
    for suite in config.suites:
        measured, samples[suite] = SUITE_FUNCTIONS[suite](engine, config, work)
        logger.info("eval: %s: %s", suite, format_metrics(measured))
        metrics.update(measured)
    metrics["wall_time_s"] = round(time.time() - start, 2)
    write_json(work / "metrics.json", metrics)
    write_json(work / "samples.json", samples)
    (work / "config.yaml").write_text(yaml.safe_dump(
        {"eval": {k: v for k, v in vars(config).items()}}, sort_keys=False))
    finish_stage(work, final)
    return final


def _bpb(engine, config: EvalConfig, work: Path):
    from ..config import as_sources
    from ..corpus import load_corpus, tokenize_and_pack
    from .text import evaluate_bpb, token_byte_lengths

    texts, _ = load_corpus(as_sources(config.bpb_texts), config.mirror, heldout_fraction=0.0, seed=config.seed)
    seq_len = config.seq_len or min(engine.context_length or 1024, 1024)
    windows = tokenize_and_pack(texts, engine.tokenizer, seq_len, desc="eval")
    if config.bpb_max_windows >= 0:
        windows = windows.select(range(min(len(windows), config.bpb_max_windows)))
    if len(windows) == 0:
        raise ConfigError(f"eval.bpb_texts: the texts yield no window of seq_len={seq_len} tokens")
    result = evaluate_bpb(engine.model, windows, token_byte_lengths(engine.tokenizer))
    return {"heldout_loss": result["loss"], "heldout_bpb": result["bpb"], "bpb_windows": len(windows),
            "bpb_seq_len": seq_len}, []


def _mmlu(engine, config: EvalConfig, work: Path):
    from .multiple_choice import load_mmlu, score_multiple_choice

    rows = load_mmlu(config.mirror, split=config.mmlu_split, limit=None if config.mmlu_limit < 0 else config.mmlu_limit)
    chat = config.mmlu_chat if config.mmlu_chat is not None else bool(getattr(engine.tokenizer, "chat_template", None))
    result = score_multiple_choice(engine.model, engine.tokenizer, rows, chat=chat, max_length=config.max_length,
                                   show_progress=False)
    return {"mmlu_accuracy": result["accuracy"], "mmlu_questions": result["n"], "mmlu_chat": chat}, []


def _chat(engine, config: EvalConfig, work: Path):
    from ..config import as_sources
    from ..conversations import mix_conversations
    from .chat import identity_accuracy, reply_prompts, stop_rate

    if not getattr(engine.tokenizer, "chat_template", None):
        raise ConfigError(f"eval: {config.model} has no chat template (the chat suite needs a chat model)")
    defaults = engine.chat_config
    name = config.assistant_name or defaults.get("assistant_name")
    author = config.assistant_author or defaults.get("assistant_author")
    system = defaults.get("system_message") if config.system_message is None else (config.system_message or None)
    source = as_sources([{"path": config.chat_prompts, "split": config.chat_prompts_split}])
    conversations, _ = mix_conversations(source, config.mirror, config.seed)
    prefix = [{"role": "system", "content": system}] if system else []
    conversations = [prefix + [m for m in conv if m["role"] != "system"] for conv in conversations["messages"]]
    max_length = config.max_length or engine.context_length
    prompts = reply_prompts(engine, conversations, config.max_new_tokens, max_length, config.num_prompts)
    metrics, samples = stop_rate(engine, prompts, config.max_new_tokens, marks=[m for m in (name, author) if m])
    if name and author:
        metrics["identity_accuracy"], samples_identity = identity_accuracy(engine, name, author, system)
    else:
        logger.warning("eval: no assistant name/author (chat_config.json or --assistant_name/--assistant_author): "
                       "identity not measured")
        samples_identity = []
    return metrics, {"stop": samples, "identity": samples_identity}


def _problems(engine, config: EvalConfig, work: Path):
    from ..problems import generate_problems, load_gsm8k
    from .problems import pass_at_k

    if config.problems == "generated":
        rows = generate_problems(config.num_problems, seed=config.seed, split="test",
                                 steps=(config.problem_min_steps, config.problem_max_steps),
                                 max_number=config.problem_max_number, templates=config.problem_templates or None,
                                 instruction=config.problem_instruction)
    else:
        rows = load_gsm8k(config.mirror, split="test", limit=config.num_problems, dataset=config.problems)
    return pass_at_k(engine, rows, k=config.k, max_new_tokens=config.max_completion_length,
                     temperature=config.temperature, seed=config.seed)


def _honesty(engine, config: EvalConfig, work: Path):
    from ..engine import Engine
    from ..refs import Source
    from .honesty import evaluate_honesty, load_qa, plot_exposure

    if not getattr(engine.tokenizer, "chat_template", None):
        raise ConfigError(f"eval: {config.model} has no chat template (the honesty suite asks a chat model)")
    rows = load_qa(Source(path=config.honesty_questions, split=config.honesty_split), config.mirror,
                   config.honesty_limit)
    reference = Engine.load(config.reference, chat=True) if config.reference else None
    metrics, samples = evaluate_honesty(
        engine, rows, config.refusal, engine.chat_config.get("system_message"), config.honesty_max_new_tokens,
        reference, reference.chat_config.get("system_message") if reference else None)
    lines = {"evaluated": metrics}
    if samples["reference"] is not None:
        from .honesty import honesty_metrics

        lines["reference"] = honesty_metrics(samples["reference"])
    plot_exposure(lines, work / "honesty.png")
    return metrics, samples


def _tools(engine, config: EvalConfig, work: Path):
    from ..engine import Engine
    from ..tools import make_tools
    from .tools import eval_tasks, measure_tools

    if not getattr(engine.tokenizer, "chat_template", None):
        raise ConfigError(f"eval: {config.model} has no chat template (the tools suite asks a chat model)")
    settings = engine.chat_config.get("tools") or {}
    tools = make_tools(index=config.tool_index if "search" in config.tool_families else None,
                       search_k=settings.get("search_k", 1), search_max_chars=settings.get("search_max_chars", 300),
                       network=config.sandbox_network)
    with_tools = Engine(engine.model, engine.tokenizer, engine.chat_config, tools)
    tasks = eval_tasks(config.tool_families, config.tool_tasks, config.seed, config.tool_facts)
    return measure_tools(with_tools, tasks, engine.chat_config.get("system_message"), config.tool_max_new_tokens,
                         plain_engine=engine)


SUITE_FUNCTIONS = {"bpb": _bpb, "mmlu": _mmlu, "chat": _chat, "problems": _problems, "honesty": _honesty,
                   "tools": _tools}
