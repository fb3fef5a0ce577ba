"""SFT stage: a base model becomes an assistant, with TRL's ``SFTTrainer`` on a mixture of conversations.

    conversation sources (weighted mixture, hf_pipeline/conversations.py) -> held-out split
    + identity conversations ({{name}}/{{author}} filled) + generated worked problems (problems.py)
    + the default system message
    -> base model measured (held-out loss, stop rate, identity, MMLU)
    -> SFTTrainer: chat template, loss on the assistant's tokens only, <|im_end|> as the end of a turn;
       all weights, or a peft LoRA adapter
    -> the same measures again -> RUN/sft/ (a model folder, or an adapter folder; merged/ with merge_lora)

The chat template puts every assistant reply and its ``<|im_end|>`` inside ``{% generation %}``, so with
``assistant_only_loss`` the model learns to write replies and to end them, never to write the user's turns. The
``<|im_end|>`` token becomes the tokenizer's EOS and joins the generation config's stop tokens, so a trained model
stops by itself with plain ``model.generate``.

Measured before and after training, printed and written to metrics.json (flat keys):
    heldout_loss_before/after   mean loss on the assistant tokens of held-out conversations
    stop_rate(_base)            share of greedy replies to held-out prompts that end with <|im_end|> in max_new_tokens
                                (reply_tokens: their mean length; identity_leak: share naming the assistant/author)
    identity_accuracy(_base)    share of IDENTITY_QUESTIONS (paraphrases never trained on) answered with the
                                assistant's name ("who are you" questions) or author ("who made you" questions)
    mmlu_accuracy(_base)        multiple-choice accuracy, the answer letter's log-probability (evaluation.py)

Conversations with ``{{name}}``/``{{author}}`` placeholders in any source (LLaMA-Factory's demo sets carry the
identity rows) count as identity data: filled when ``identity_data`` is set, dropped (``skipped_identity_placeholder``)
when it is not, so that switching identity off really trains without it.

``RUN/sft/chat_config.json`` holds the system message, name and author: ``hf-pipeline chat`` uses them by default.
A killed run resumes from its last checkpoint in RUN/sft.incomplete/checkpoints/ (measures of the base model too).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from .artifacts import (BASELINE_FILE, begin_stage, finish_stage, format_metrics, incomplete_dir, is_complete,
                        measure_once, write_json)
from .chat import CHAT_CONFIG, generate_replies, render
from .config import ConfigError, SFTStageConfig, save_config
from .tokenizer import IM_END, IM_SEP, IM_START

logger = logging.getLogger("hf_pipeline")

# Held-out identity questions: paraphrases that are in none of the identity data (checked by the tests). A
# "name" question is answered right when the reply holds the assistant's name, an "author" one with the author's.
IDENTITY_QUESTIONS = [
    ("What should I call you?", "name"), ("Please introduce yourself.", "name"), ("Who am I talking to?", "name"),
    ("What's your name?", "name"), ("Tell me your name.", "name"), ("Could you tell me who you are?", "name"),
    ("Introduce yourself, please.", "name"), ("Who are you, exactly?", "name"), ("May I know your name?", "name"),
    ("What do people call you?", "name"), ("Hey there, who is this?", "name"), ("Are you a person or a bot?", "name"),
    ("Tell me who created you.", "author"), ("Who made you?", "author"), ("Who developed you?", "author"),
    ("Which team built you?", "author"), ("Who is your creator?", "author"), ("Who trained you?", "author"),
    ("Who are your developers?", "author"), ("Where do you come from? Who made you?", "author"),
]


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
                                                  **config.problem_dial()))
    n_identity = 0
    if config.identity_data:
        identity, id_stats = mix_conversations(
            [{"path": config.identity_data, "weight": config.identity_weight}], config.mirror, config.seed, **languages
        )
        parts.append(fill_placeholders(identity, name, author))
        n_identity = len(identity)
        for reason, count in id_stats["skipped"].items():
            stats["skipped"][reason] = stats["skipped"].get(reason, 0) + count
    train = datasets.concatenate_datasets(parts).shuffle(seed=config.seed).flatten_indices()
    system = system_message(config)
    train = add_system_message(train, system)
    heldout = add_system_message(heldout, system) if heldout is not None and len(heldout) else None
    if tokenizer is not None and config.drop_long:
        train, too_long = drop_long(train, tokenizer, config.max_length)
        if heldout is not None:
            heldout, held_too_long = drop_long(heldout, tokenizer, config.max_length)
            too_long, heldout = too_long + held_too_long, heldout if len(heldout) else None
        stats["skipped"]["too_long"] = too_long
    stats["identity_conversations"] = n_identity
    stats["worked_problems"] = config.worked_problems
    return train, heldout, stats


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


def identity_accuracy(model, tokenizer, config: SFTStageConfig) -> tuple[float, list[dict]]:
    """Share of IDENTITY_QUESTIONS whose greedy reply names the assistant (or its author), and the replies."""
    system = system_message(config)
    prefix = [{"role": "system", "content": system}] if system else []
    conversations = [prefix + [{"role": "user", "content": q}] for q, _ in IDENTITY_QUESTIONS]
    replies = generate_replies(model, tokenizer, conversations, max_new_tokens=48)
    samples = []
    for (question, kind), out in zip(IDENTITY_QUESTIONS, replies):
        wanted = config.assistant_name if kind == "name" else config.assistant_author
        samples.append({"question": question, "reply": out["reply"], "correct": wanted.lower() in out["reply"].lower()})
    return sum(s["correct"] for s in samples) / len(samples), samples


def stop_rate(model, tokenizer, heldout, config: SFTStageConfig) -> tuple[dict, list[dict]]:
    """Share of greedy replies to held-out prompts (system + first user turn) that end with <|im_end|> within
    max_new_tokens, with the replies' mean length in tokens (a model that stops at once is no success either)."""
    prompts = []
    for conv in heldout["messages"] if heldout is not None else []:
        first_reply = next(i for i, m in enumerate(conv) if m["role"] == "assistant")
        prompt = conv[:first_reply]
        n_tokens = len(tokenizer(render(tokenizer, prompt), add_special_tokens=False)["input_ids"])
        if n_tokens + config.max_new_tokens <= config.max_length:  # no room for a reply: skipped
            prompts.append(prompt)
        if len(prompts) == config.eval_generations:
            break
    if not prompts:
        return {}, []
    out = generate_replies(model, tokenizer, prompts, max_new_tokens=config.max_new_tokens)
    samples = [{"prompt": p[-1]["content"], **o} for p, o in zip(prompts, out)]
    # identity leak: replies to ordinary prompts that bring up the assistant's name or author (over-learned identity)
    marks = [config.assistant_name.lower(), config.assistant_author.lower()]
    leaks = [any(m in o["reply"].lower() for m in marks) for o in out]
    return {"stop_rate": sum(o["stopped"] for o in out) / len(out),
            "reply_tokens": sum(o["tokens"] for o in out) / len(out),
            "identity_leak": sum(leaks) / len(out)}, samples


def mmlu_accuracy(model, tokenizer, config: SFTStageConfig) -> dict | None:
    """Zero-shot MMLU accuracy, the question asked in the chat format (the same prompts before and after SFT)."""
    if not config.mmlu:
        return None
    from .evaluation import MMLU_ID, load_mmlu, score_multiple_choice

    if config.mmlu != MMLU_ID:  # a local copy goes in the mirror, as <mirror>/cais/mmlu
        raise ConfigError(f"sft.mmlu: only '{MMLU_ID}' (from the mirror or the Hub) is supported, not '{config.mmlu}'")
    rows = load_mmlu(config.mirror, split=config.mmlu_split, limit=None if config.mmlu_limit < 0 else config.mmlu_limit)
    return score_multiple_choice(model, tokenizer, rows, chat=True, max_length=config.max_length, show_progress=False)


def measure(model, tokenizer, trainer, heldout, config: SFTStageConfig) -> tuple[dict, dict]:
    """The stage's measures of ``model``: (flat metrics, samples)."""
    metrics, samples = {}, {}
    model.eval()  # trainer.train() leaves the model in training mode: LoRA dropout would be active
    metrics["heldout_loss"] = trainer.evaluate()["eval_loss"] if heldout is not None else None
    stops, samples["stop"] = stop_rate(model, tokenizer, heldout, config)
    metrics.update(stops)
    metrics["identity_accuracy"], samples["identity"] = identity_accuracy(model, tokenizer, config)
    mmlu = mmlu_accuracy(model, tokenizer, config)
    if mmlu:
        metrics.update(mmlu_accuracy=mmlu["accuracy"], mmlu_questions=mmlu["n"])
    return metrics, samples


def protocol_token_ids(tokenizer) -> list[int]:
    """The chat protocol's tokens: with LoRA their input embeddings train too, as a base model has never seen them."""
    return [tokenizer.convert_tokens_to_ids(t) for t in (IM_START, IM_SEP, IM_END) if t in tokenizer.get_vocab()]


def run(config: SFTStageConfig) -> Path:
    """Fine-tune a model on conversations and write RUN/sft/."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from .model import precision_args
    from .pretrain import last_complete_checkpoint
    from .refs import resolve_model

    final = config.stage_dir()
    if is_complete(final) and not config.overwrite:
        logger.info("sft: %s is complete, skipping (overwrite: true to redo it)", final)
        return final
    start = time.time()
    model_path = resolve_model(config.model or str(config.stage_dir("pretrain")))
    if Path(model_path).is_dir():  # an absolute path, so that a LoRA adapter finds its base model from anywhere
        model_path = str(Path(model_path).resolve())
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"sft.model: {model_path} has no chat template in its tokenizer")
    train, heldout, stats = build_conversations(config, tokenizer)
    logger.info("sft: %d training conversations (%d identity, %d worked problems), %d held out; skipped: %s",
                len(train), stats["identity_conversations"], stats["worked_problems"],
                len(heldout) if heldout is not None else 0,
                dict(stats["skipped"]) or "none")
    transformers.set_seed(config.seed)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)

    resume_from = last_complete_checkpoint(incomplete_dir(final) / "checkpoints") if config.resume else None
    work = begin_stage(final, keep_partial=resume_from is not None)
    save_config(config, work / "config.yaml")
    args = SFTConfig(
        output_dir=str(work / "checkpoints"),
        # data: the chat template renders each conversation; loss on the assistant's tokens; <|im_end|> ends a turn
        max_length=config.max_length, packing=config.packing, assistant_only_loss=True,
        eos_token=IM_END if IM_END in tokenizer.get_vocab() else None,
        dataset_num_proc=config.num_proc if len(train) >= 1000 * config.num_proc else None,
        # optimisation
        per_device_train_batch_size=config.batch_size, per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps, learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type, warmup_steps=config.warmup_ratio, weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm, max_steps=config.max_steps, num_train_epochs=config.num_epochs,
        train_sampling_strategy="group_by_length",  # batches of similar lengths: little padding
        **precision_args(config.bf16, "sft"),
        activation_checkpointing=False,  # small models: recomputing costs more than it saves
        # bookkeeping
        eval_strategy="steps" if config.eval_steps and heldout is not None else "no",
        eval_steps=config.eval_steps or None,
        save_strategy="steps", save_steps=config.save_steps, save_total_limit=2, logging_steps=config.logging_steps,
        seed=config.seed, data_seed=config.seed, report_to="none",
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=train, eval_dataset=heldout, processing_class=tokenizer,
        peft_config=config.lora_config(protocol_token_ids(tokenizer)) if config.use_lora else None,
    )
    model = trainer.model  # the PeftModel with LoRA
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("sft: %s, %.2fM of %.2fM parameters trained", "LoRA" if config.use_lora else "all weights",
                trainable / 1e6, total / 1e6)

    # 1. The starting model, measured once (a resumed run reads what the killed one measured).
    base = measure_once(work, lambda: measure(model, tokenizer, trainer, heldout, config))
    logger.info("sft: before: %s", format_metrics(base["metrics"]))

    # 2. Train.
    if resume_from:
        logger.info("sft: resuming from %s", resume_from)
    result = trainer.train(resume_from_checkpoint=resume_from)
    train_seconds = result.metrics.get("train_runtime")

    # 3. The assistant, measured the same way.
    after, samples = measure(model, tokenizer, trainer, heldout, config)
    logger.info("sft: after: %s", format_metrics(after))

    # 4. Save: the model (or adapter) with the tokenizer (EOS now <|im_end|>), generation config and chat defaults.
    trainer.save_model(str(work))
    model.generation_config.save_pretrained(str(work))
    chat_config = {"system_message": system_message(config), "assistant_name": config.assistant_name,
                   "assistant_author": config.assistant_author, "stop_token": tokenizer.eos_token}
    write_json(work / CHAT_CONFIG, chat_config)
    if config.use_lora and config.merge_lora:
        merged = model.merge_and_unload()
        merged.save_pretrained(str(work / "merged"))
        tokenizer.save_pretrained(str(work / "merged"))
        write_json(work / "merged" / CHAT_CONFIG, chat_config)
    if not config.keep_checkpoints:
        import shutil

        shutil.rmtree(work / "checkpoints", ignore_errors=True)
    (work / BASELINE_FILE).unlink()

    metrics = {
        "heldout_loss_before": base["metrics"]["heldout_loss"], "heldout_loss_after": after["heldout_loss"],
        **{f"{k}_base": v for k, v in base["metrics"].items() if k not in ("heldout_loss", "mmlu_questions")},
        **{k: v for k, v in after.items() if k != "heldout_loss"},
        "identity_data": bool(config.identity_data), "system_message": system_message(config),
        "train_conversations": len(train), "identity_conversations": stats["identity_conversations"],
        "worked_problems": stats["worked_problems"],
        "heldout_conversations": len(heldout) if heldout is not None else 0,
        **{f"skipped_{reason}": n for reason, n in sorted(stats["skipped"].items())},
        "train_loss": result.training_loss, "steps": trainer.state.global_step, "use_lora": config.use_lora,
        "trainable_params": trainable, "num_params": total, "resumed_from": resume_from,
        "train_seconds": train_seconds, "device": str(trainer.args.device), "bf16": trainer.args.bf16,
        "wall_time_s": round(time.time() - start, 2),
    }
    write_json(work / "metrics.json", metrics)
    write_json(work / "samples.json", {"before": base["samples"], "after": samples})
    write_json(work / "log_history.json", {"log_history": trainer.state.log_history})
    finish_stage(work, final)
    for name in ("heldout_loss", "stop_rate", "identity_accuracy", "mmlu_accuracy"):
        before = metrics.get(f"{name}_before", metrics.get(f"{name}_base"))
        now = metrics.get(f"{name}_after", metrics.get(name))
        if now is not None:
            shown = (f"{v:.4g}" if isinstance(v, float) else v for v in (before, now))
            logger.info("sft: %-18s %s -> %s", name, *shown)
    logger.info("sft: %d steps in %.0f s -> %s", metrics["steps"], train_seconds or 0, final)
    return final

