"""SFT stage: a base model becomes an assistant, with TRL's ``SFTTrainer`` on a mixture of conversations.

    conversation sources (weighted mixture, hf_pipeline/conversations.py) -> held-out split
    + identity conversations ({{name}}/{{author}} filled) + generated worked problems (problems.py)
    + the probe stage's answers and refusals (probe_data: RUN/probe)
    + the default system message
    -> base model measured (held-out loss, stop rate, identity, MMLU)
    -> SFTTrainer: chat template, loss on the assistant's tokens only, <|im_end|> as the end of a turn;
       all weights, or a peft LoRA adapter
    -> the same measures again -> RUN/sft/ (a model folder, or an adapter folder; merged/ with merge_lora)

The chat template puts every assistant reply and its ``<|im_end|>`` inside ``{% generation %}``, so with
``assistant_only_loss`` the model learns to write replies and to end them, never to write the user's turns. The
``<|im_end|>`` token becomes the tokenizer's EOS and joins the generation config's stop tokens, so a trained model
stops by itself with plain ``model.generate``.

Measured before and after training (hf_pipeline.evals), printed and written to metrics.json as
``<measure>_before`` / ``<measure>_after``:
    heldout_loss        mean loss on the assistant tokens of held-out conversations
    stop_rate           share of greedy replies to held-out prompts that end with <|im_end|> in max_new_tokens
                        (reply_tokens: their mean length; identity_leak: share naming the assistant/author)
    identity_accuracy   share of evals.chat.IDENTITY_QUESTIONS (paraphrases never trained on) answered with the
                        assistant's name ("who are you" questions) or author ("who made you" questions)
    mmlu_accuracy       multiple-choice accuracy, the answer letter's log-probability (evals.multiple_choice)
    qa_accuracy, qa_refusal_rate (and _exposure_<level>), refusal_rate_unseen
                        held-out questions (honesty_questions: people never probed) answered right / refused;
                        with honesty_reference also prudence, over_conservativeness, honesty (evals.honesty);
                        honesty.png plots them against exposure

Conversations with ``{{name}}``/``{{author}}`` placeholders in any source (LLaMA-Factory's demo sets carry the
identity rows) count as identity data: filled when ``identity_data`` is set, dropped (``skipped_identity_placeholder``)
when it is not, so that switching identity off really trains without it.

``RUN/sft/chat_config.json`` holds the system message, name and author: ``hf-pipeline chat`` uses them by default.
The lifecycle (start model, measures before/after, resume, atomic save, metrics) is hf_pipeline.posttrain's: a killed
run resumes from its last checkpoint in RUN/sft.incomplete/checkpoints/ (measures of the base model too).
"""

from __future__ import annotations

import logging
from pathlib import Path

from .config import ConfigError, SFTStageConfig
from .posttrain import PostTrainingStage, trainer_args
from .tokenizer import IM_END, IM_SEP, IM_START
from .tools.traces import system_line

logger = logging.getLogger("hf_pipeline")


def build_conversations(config: SFTStageConfig, tokenizer=None):
    """``(train, heldout, stats)``: the weighted mixture split, identity conversations and system message added;
    with a ``tokenizer`` and ``drop_long``, conversations longer than ``max_length`` tokens are dropped."""
    import datasets

    from .conversations import PLACEHOLDER, add_system_message, fill_placeholders, mix_conversations, split_heldout

    name, author = config.assistant_name, config.assistant_author
    languages = dict(languages=config.languages, language_threshold=config.language_threshold)
    parts, stats = [], {"skipped": {}, "sources": []}
    if config.datasets:
        mixture, stats = mix_conversations(config.datasets, config.mirror, config.seed, **languages)
        has_placeholder = [any(PLACEHOLDER.search(m["content"]) for m in conv) for conv in mixture["messages"]]
        if config.identity_data:
            mixture = fill_placeholders(mixture, name, author)
        elif any(has_placeholder):
            stats["skipped"]["identity_placeholder"] = sum(has_placeholder)
            mixture = mixture.select([i for i, hit in enumerate(has_placeholder) if not hit])
        train, heldout = split_heldout(mixture, config.heldout_fraction, config.seed)
        parts.append(train)
    else:
        heldout = None
    if config.worked_problems:  # worked examples: the RL stage's prompt, then a solution spread over tokens
        from .problems import worked_problem_conversations

        parts.append(worked_problem_conversations(config.worked_problems, seed=config.seed + 1,
                                                  worked_share=config.worked_share, **config.problem_dial()))
    n_probe = 0
    if config.probe_data:  # the probe stage's answers and refusals
        probe, probe_stats = mix_conversations([{"path": config.probe_data, "weight": config.probe_weight}],
                                               config.mirror, config.seed)
        if config.tool_traces:  # closed book: with search on, the model should search, not refuse
            probe = add_system_message(probe, system_line(system_message(config), False))
        parts.append(probe)
        n_probe = len(probe)
        for reason, count in probe_stats["skipped"].items():
            stats["skipped"][reason] = stats["skipped"].get(reason, 0) + count
    n_identity = 0
    if config.identity_data:
        identity, id_stats = mix_conversations(
            [{"path": config.identity_data, "weight": config.identity_weight}], config.mirror, config.seed, **languages
        )
        parts.append(fill_placeholders(identity, name, author))
        n_identity = len(identity)
        for reason, count in id_stats["skipped"].items():
            stats["skipped"][reason] = stats["skipped"].get(reason, 0) + count
    stats["tool_traces"] = 0
    if config.tool_traces:  # conversations that call python and search mid-reply (hf_pipeline/tools/traces.py)
        from .tools.traces import build_traces

        traces, trace_stats = build_traces(
            config.tool_traces, system_message(config), config.seed + 2, config.tools_off_share, config.tool_facts,
            config.tool_index, config.gsm8k, config.mirror, config.search_k, config.search_max_chars)
        parts.append(datasets.Dataset.from_dict({"messages": traces}, features=parts[0].features if parts else None))
        stats["tool_traces"] = len(traces)
        stats.update(trace_stats)
    train = datasets.concatenate_datasets(parts).shuffle(seed=config.seed).flatten_indices()
    system = system_message(config)
    if config.tool_traces:  # every other conversation: tools on or off at random (on does not mean "call one")
        train = add_tool_switch(train, system, config.seed)
        system = system_line(system, False)
    train = add_system_message(train, system)
    heldout = add_system_message(heldout, system) if heldout is not None and len(heldout) else None
    if tokenizer is not None and config.drop_long:
        train, too_long = drop_long(train, tokenizer, config.max_length)
        if heldout is not None:
            heldout, held_too_long = drop_long(heldout, tokenizer, config.max_length)
            too_long, heldout = too_long + held_too_long, heldout if len(heldout) else None
        stats["skipped"]["too_long"] = too_long
    stats["identity_conversations"] = n_identity
    stats["probe_conversations"] = n_probe
    stats["worked_problems"] = config.worked_problems
    return train, heldout, stats


def add_tool_switch(dataset, system: str | None, seed: int):
    """A system message ending with the tool switch, on or off at random, for conversations with the default system
    message or none (a conversation with a system message of its own, e.g. the worked problems' prompt that grpo
    sends, keeps it as it is)."""
    import random

    rng = random.Random(seed)

    def add(batch):
        out = []
        for conversation in batch["messages"]:
            if conversation and conversation[0]["role"] == "system":
                if conversation[0]["content"] == system:
                    conversation = [{"role": "system", "content": f"{conversation[0]['content']} "
                                     f"{system_line(None, rng.random() < 0.5)}"}, *conversation[1:]]
            else:
                conversation = [{"role": "system", "content": system_line(system, rng.random() < 0.5)},
                                *conversation]
            out.append(conversation)
        return {"messages": out}

    return dataset.map(add, batched=True, desc="tool switch")


def drop_long(dataset, tokenizer, max_length: int):
    """The conversations that fit in ``max_length`` tokens, and how many did not."""
    texts = tokenizer.apply_chat_template(list(dataset["messages"]), tokenize=False)
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    keep = [i for i, n in enumerate(lengths) if n <= max_length]
    return dataset.select(keep), len(dataset) - len(keep)


def system_message(config: SFTStageConfig) -> str | None:
    if not config.system_message:
        return None
    return config.system_message.replace("{name}", config.assistant_name).replace("{author}", config.assistant_author)


def protocol_token_ids(tokenizer) -> list[int]:
    """The chat protocol's tokens: with LoRA their input embeddings train too, as a base model has never seen them."""
    return [tokenizer.convert_tokens_to_ids(t) for t in (IM_START, IM_SEP, IM_END) if t in tokenizer.get_vocab()]


class SFTStage(PostTrainingStage):
    """SFTTrainer on the conversation mixture; measures: held-out loss, stop rate, identity, MMLU."""

    measures_with_trainer = True  # the held-out loss is SFTTrainer.evaluate() (its chat template and loss mask)

    def load_data(self, tokenizer) -> None:
        self.train, self.heldout, self.stats = build_conversations(self.config, tokenizer)
        logger.info("sft: %d training conversations (%d identity, %d worked problems, %d probe, %d tool traces), "
                    "%d held out; skipped: %s", len(self.train), self.stats["identity_conversations"],
                    self.stats["worked_problems"], self.stats["probe_conversations"], self.stats["tool_traces"],
                    len(self.heldout) if self.heldout is not None else 0, dict(self.stats["skipped"]) or "none")

    def make_trainer(self, model, tokenizer, output_dir: str):
        from trl import SFTConfig, SFTTrainer

        config, train, heldout = self.config, self.train, self.heldout
        args = SFTConfig(
            **trainer_args(config, output_dir),
            # data: the chat template renders each conversation; loss on the assistant's tokens; <|im_end|> ends a turn
            max_length=config.max_length, packing=config.packing, assistant_only_loss=True,
            eos_token=IM_END if IM_END in tokenizer.get_vocab() else None,
            dataset_num_proc=config.num_proc if len(train) >= 1000 * config.num_proc else None,
            train_sampling_strategy="group_by_length",  # batches of similar lengths: little padding
            eval_strategy="steps" if config.eval_steps and heldout is not None else "no",
            eval_steps=config.eval_steps or None,
        )
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=train, eval_dataset=heldout, processing_class=tokenizer,
            peft_config=config.lora_config(protocol_token_ids(tokenizer)) if config.use_lora else None,
        )
        self.chat_config = {"system_message": system_message(config), "assistant_name": config.assistant_name,
                            "assistant_author": config.assistant_author,
                            "stop_token": tokenizer.eos_token}  # SFTTrainer made <|im_end|> the EOS
        if config.tool_traces:  # the engine adds the tool switch to the system message, and sets search up alike
            from .config import TOOLS_OFF, TOOLS_ON

            self.chat_config["tools"] = {"on": TOOLS_ON, "off": TOOLS_OFF, "search_k": config.search_k,
                                         "search_max_chars": config.search_max_chars}
        return trainer

    def refusal(self) -> str:
        """The refusal sentence of the probe data (its recorded config), else the default one."""
        import yaml

        from .config import REFUSAL

        recorded = Path(self.config.probe_data or "") / "config.yaml"
        if self.config.probe_data and recorded.is_file():
            return (yaml.safe_load(recorded.read_text()) or {}).get("refusal") or REFUSAL
        return REFUSAL

    def measure_honesty(self, engine) -> tuple[dict, list]:
        """Held-out questions: accuracy and refusal rate per exposure level; with a reference model (the same
        model trained without refusal data), prudence, over-conservativeness and honesty against its answers."""
        from .evals.honesty import answer, honesty_metrics, judge_replies, load_qa

        config, refusal = self.config, self.refusal()
        if not hasattr(self, "honesty_rows"):  # once: the questions, and the reference's answers to them
            from .engine import Engine

            self.honesty_rows = [row for source in config.honesty_questions
                                 for row in load_qa(source, config.mirror, config.honesty_limit)]
            self.reference_judged = None
            if config.honesty_reference:
                reference = Engine.load(config.honesty_reference, chat=True)
                replies = answer(reference, self.honesty_rows, reference.chat_config.get("system_message"),
                                 config.honesty_max_new_tokens)
                self.reference_judged = judge_replies(self.honesty_rows, replies, refusal)
        replies = answer(engine, self.honesty_rows, self.system_for_eval(), config.honesty_max_new_tokens)
        judged = judge_replies(self.honesty_rows, replies, refusal)
        self.honesty = honesty_metrics(judged, self.reference_judged)
        return self.honesty, judged

    def measure(self, engine, trainer):
        from .evals.chat import identity_accuracy, reply_prompts, stop_rate

        config, metrics, samples = self.config, {}, {}
        metrics["heldout_loss"] = trainer.evaluate()["eval_loss"] if self.heldout is not None else None
        conversations = self.heldout["messages"] if self.heldout is not None else []
        prompts = reply_prompts(engine, conversations, config.max_new_tokens, config.max_length,
                                config.eval_generations)
        stops, samples["stop"] = stop_rate(engine, prompts, config.max_new_tokens,
                                           marks=(config.assistant_name, config.assistant_author))
        metrics.update(stops)
        metrics["identity_accuracy"], samples["identity"] = identity_accuracy(
            engine, config.assistant_name, config.assistant_author, self.system_for_eval())
        if config.mmlu:
            from .evals.multiple_choice import MMLU_ID, load_mmlu, score_multiple_choice

            if config.mmlu != MMLU_ID:  # a local copy goes in the mirror, as <mirror>/cais/mmlu
                raise ConfigError(f"sft.mmlu: only '{MMLU_ID}' (from the mirror or the Hub) is supported, "
                                  f"not '{config.mmlu}'")
            rows = load_mmlu(config.mirror, split=config.mmlu_split,
                             limit=None if config.mmlu_limit < 0 else config.mmlu_limit)
            mmlu = score_multiple_choice(engine.model, engine.tokenizer, rows, chat=True,
                                         max_length=config.max_length, show_progress=False)
            metrics.update(mmlu_accuracy=mmlu["accuracy"], mmlu_questions=mmlu["n"])
        if config.honesty_questions:
            honesty, samples["honesty"] = self.measure_honesty(engine)
            metrics.update(honesty)
        if config.tool_traces and config.tool_eval_tasks and trainer is not None and trainer.state.global_step > 0:
            tools, samples["tools"] = self.measure_tools(engine)  # after training only: a base model has no tools
            metrics.update(tools)
        return metrics, samples

    def system_for_eval(self) -> str | None:
        """The system message the measures use: with tool training, its tools-off line (closed book)."""
        system = system_message(self.config)
        return system_line(system, False) if self.config.tool_traces else system

    def measure_tools(self, engine) -> tuple[dict, list]:
        """Held-out tool tasks of the trained families, with tools and without (evals.tools)."""
        from .engine import Engine
        from .evals.tools import eval_tasks, measure_tools
        from .tools import make_tools
        from .tools.traces import EVAL_FAMILIES

        config = self.config
        families = [f for f in EVAL_FAMILIES if config.tool_traces.get(f)]
        if "trivial" not in families:
            families.append("trivial")
        tasks = eval_tasks(families, config.tool_eval_tasks, config.seed, config.tool_facts)
        tools = make_tools(index=config.tool_index if "search" in families else None, search_k=config.search_k,
                           search_max_chars=config.search_max_chars, network=config.sandbox_network)
        with_tools = Engine(engine.model, engine.tokenizer, self.chat_config, tools)
        return measure_tools(with_tools, tasks, system_message(config), config.max_new_tokens)

    def save_extra(self, work: Path, model, tokenizer) -> None:
        if getattr(self, "honesty", None):
            from .evals.honesty import plot_exposure

            plot_exposure({"after SFT": self.honesty}, work / "honesty.png")

    def stage_metrics(self) -> dict:
        config, stats = self.config, self.stats
        return {
            "identity_data": bool(config.identity_data), "system_message": system_message(config),
            "train_conversations": len(self.train), "identity_conversations": stats["identity_conversations"],
            "worked_problems": stats["worked_problems"], "probe_conversations": stats["probe_conversations"],
            "tool_traces": stats["tool_traces"],
            **{k: v for k, v in stats.items() if k.startswith(("gsm8k_", "search_"))},
            "heldout_conversations": len(self.heldout) if self.heldout is not None else 0,
            **{f"skipped_{reason}": n for reason, n in sorted(stats["skipped"].items())},
        }


def run(config: SFTStageConfig) -> Path:
    """Fine-tune a model on conversations and write RUN/sft/."""
    return SFTStage(config).run()
