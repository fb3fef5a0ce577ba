"""GRPO stage: reinforcement learning on verifiable problems with TRL's ``GRPOTrainer``.

    problems: generated arithmetic word problems (difficulty dial, disjoint train/test) or GSM8K-format rows
    -> held-out problems measured on the starting model (RUN/sft by default): greedy pass@1, pass@k, length
    -> GRPOTrainer: per problem, num_generations completions sampled; each scored by the reward functions
       (correctness of the final "#### N" answer, or checked_correctness: right and reached by the reply's own
       arithmetic; format; optional length penalty; weighted); the advantage of a
       completion is its reward relative to its group; policy-gradient step, optional KL to the starting model
    -> the same measures again -> RUN/grpo/ (a model folder, or a LoRA adapter; merged/ with merge_lora)

Usage (the ``grpo`` section of a recipe, or flags)::

    hf-pipeline grpo --config recipes/tiny.yaml --output_dir runs/tiny            # from runs/tiny/sft
    hf-pipeline grpo --config recipes/gpu_gsm8k.yaml --model Qwen/Qwen2.5-0.5B-Instruct --use_lora true

The reward functions are ``hf_pipeline.rewards`` (TRL's signature); their weights are ``reward_weights``. The
prompts are chat messages (a system message with the answer format, then the question), rendered by the tokenizer's
chat template; rollouts and evaluations stop at ``<|im_end|>``, which joins the generation config's stop tokens.

Written to RUN/grpo/metrics.json (flat keys), before and after training:
    pass1_before/after            share of held-out problems solved by the greedy completion (gsm8k_accuracy metric)
    pass1_strict_before/after     the same, counting only answers given on a "#### N" line
    pass1_checked_before/after    the same, counting only answers the reply's own arithmetic reaches
                                  (rewards.work_checks): the rest are right by luck
    passk_before/after, k         share of held-out problems solved by at least one of k sampled completions
    sample_accuracy_before/after  share of those k x problems samples that are correct (sampled pass@1)
    mean_completion_tokens_*      mean length of the greedy completions in tokens (stop token excluded)
    reward_mean_first/last        mean training reward over the first / last tenth of the logged steps
also log_history.json (per logging step: reward, rewards/<function>/mean, completion lengths, KL, loss...),
reward_curve.png (the reward per step), samples.json (greedy completions before and after).
A killed run resumes from its last checkpoint in RUN/grpo.incomplete/checkpoints/ (the "before" measures too).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import Counter
from pathlib import Path

from .artifacts import (BASELINE_FILE, begin_stage, finish_stage, format_metrics, incomplete_dir, is_complete,
                        measure_once, write_json)
from .config import ConfigError, GRPOStageConfig, save_config

logger = logging.getLogger("hf_pipeline")

REFERENCE_DIR = "reference"  # a merged LoRA starting model, saved for TRL to rebuild the KL reference from


def load_problems(config: GRPOStageConfig):
    """``(train, test, skipped)``: generated problems of each split, or a dataset's rows with a held-out part."""
    from .problems import GSM8K_CONFIG, GSM8K_ID, generate_problems, load_gsm8k

    if config.problems == "generated":
        dial = dict(seed=config.seed, **config.problem_dial())
        return (generate_problems(config.num_train_problems, split="train", **dial),
                generate_problems(config.num_test_problems, split="test", **dial), {})
    stats = Counter()
    name = config.problems_name or (GSM8K_CONFIG if config.problems == GSM8K_ID else None)
    rows = load_gsm8k(config.mirror, split=config.problems_split, stats=stats, dataset=config.problems, name=name)
    rows = rows.shuffle(seed=config.seed)
    n_test = min(config.num_test_problems, len(rows) // 2)
    if n_test < 1:
        raise ConfigError(f"grpo.problems: {config.problems} has {len(rows)} usable rows, too few to hold some out")
    test = rows.select(range(n_test))
    train = rows.select(range(n_test, min(len(rows), n_test + config.num_train_problems)))
    return train, test, {k: v for k, v in stats.items() if k != "kept"}


def load_policy(config: GRPOStageConfig, work: Path):
    """The starting model and its tokenizer; a LoRA adapter folder is merged into its base model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .chat import stop_token_ids
    from .refs import resolve_model

    path = resolve_model(config.model or str(config.stage_dir("sft")))
    if Path(path).is_dir():
        path = str(Path(path).resolve())
    tokenizer = AutoTokenizer.from_pretrained(path)
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"grpo.model: {path} has no chat template in its tokenizer (run the sft stage first)")
    if (Path(path) / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=torch.float32).merge_and_unload()
        if config.beta > 0 and not config.use_lora:  # TRL loads the KL reference from config._name_or_path
            model.save_pretrained(str(work / REFERENCE_DIR))
            model.config._name_or_path = str(work / REFERENCE_DIR)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if torch.cuda.is_available():  # the "before" measures generate on the accelerator too (the Trainer would move it)
        model.to("cuda")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.eos_token_id = stop_token_ids(model, tokenizer)  # <|im_end|> ends every completion
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, path


def measure(model, tokenizer, problems, config: GRPOStageConfig) -> tuple[dict, list[dict]]:
    """Greedy pass@1 and pass@k (k samples at eval_temperature) on held-out problems, and completion lengths."""
    from .chat import generate_replies
    from .metrics import load_metric
    from .rewards import is_correct, work_checks

    model.eval()  # trainer.train() leaves the model in training mode
    prompts, answers, k = list(problems["prompt"]), list(problems["answer"]), config.pass_k
    common = dict(max_new_tokens=config.max_completion_length, batch_size=config.eval_batch_size)
    greedy = generate_replies(model, tokenizer, prompts, temperature=0.0, **common)
    scores = load_metric("gsm8k_accuracy").compute(predictions=[g["reply"] for g in greedy], references=answers)
    greedy_right = [is_correct(g["reply"], a) for g, a in zip(greedy, answers)]
    sampled = generate_replies(model, tokenizer, [p for p in prompts for _ in range(k)],
                               temperature=config.eval_temperature, top_k=0, top_p=1.0, seed=config.seed, **common)
    correct = [is_correct(s["reply"], answers[i // k]) for i, s in enumerate(sampled)]
    metrics = {
        "pass1": scores["accuracy"],
        "pass1_strict": scores["strict_accuracy"],
        "pass1_checked": sum(right and work_checks(g["reply"])
                             for g, right in zip(greedy, greedy_right)) / len(prompts),
        "passk": sum(any(correct[i * k:(i + 1) * k]) for i in range(len(prompts))) / len(prompts),
        "sample_accuracy": sum(correct) / len(correct),
        "mean_completion_tokens": sum(g["tokens"] for g in greedy) / len(greedy),
        "stop_rate": sum(g["stopped"] for g in greedy) / len(greedy),
    }
    samples = [{"question": q, "answer": a, "reply": g["reply"], "correct": right}
               for q, a, g, right in list(zip(problems["question"], answers, greedy, greedy_right))[:20]]
    return metrics, samples


def plot_reward_curve(log_history: list[dict], path: Path) -> None:
    """reward_curve.png: the mean (weighted) reward and each reward function's mean per logging step, and the
    mean completion length."""
    from matplotlib.figure import Figure

    logs = [h for h in log_history if "reward" in h]
    steps = [h["step"] for h in logs]
    fig = Figure(figsize=(10, 4), dpi=100)
    ax, ax_len = fig.subplots(1, 2)
    ax.plot(steps, [h["reward"] for h in logs], label="reward (weighted sum)", linewidth=2)
    for key in sorted({k for h in logs for k in h if k.startswith("rewards/") and k.endswith("/mean")}):
        ax.plot(steps, [h.get(key) for h in logs], label=key.split("/")[1], alpha=0.7)
    ax.set(xlabel="step", ylabel="mean reward", title="GRPO training reward")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax_len.plot(steps, [h.get("completions/mean_length") for h in logs], color="tab:gray")
    ax_len.set(xlabel="step", ylabel="tokens", title="mean completion length")
    ax_len.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")


def run(config: GRPOStageConfig) -> Path:
    """RL on verifiable problems from the starting model, and write RUN/grpo/."""
    import matplotlib  # noqa: F401 - needed for reward_curve.png at the end: fail before training, not after
    import transformers
    from trl import GRPOConfig, GRPOTrainer

    from .chat import CHAT_CONFIG, stop_token_ids
    from .model import precision_args
    from .pretrain import last_complete_checkpoint
    from .rewards import build_rewards

    final = config.stage_dir()
    if is_complete(final) and not config.overwrite:
        logger.info("grpo: %s is complete, skipping (overwrite: true to redo it)", final)
        return final
    start = time.time()
    train, test, skipped = load_problems(config)
    logger.info("grpo: %d training problems, %d held out (%s); skipped rows: %s", len(train), len(test),
                config.problems, skipped or "none")
    reward_funcs, reward_weights = build_rewards(config.reward_weights, config.length_penalty or None)

    resume_from = last_complete_checkpoint(incomplete_dir(final) / "checkpoints") if config.resume else None
    work = begin_stage(final, keep_partial=resume_from is not None)
    save_config(config, work / "config.yaml")
    transformers.set_seed(config.seed)
    model, tokenizer, model_path = load_policy(config, work)

    # 1. The starting model, measured once (a resumed run reads what the killed one measured).
    base = measure_once(work, lambda: measure(model, tokenizer, test, config))
    logger.info("grpo: before: %s", format_metrics(base["metrics"]))

    # 2. GRPO: rollouts, rewards, group-relative advantages, policy-gradient steps.
    args = GRPOConfig(
        output_dir=str(work / "checkpoints"),
        # rollouts: batch_size completions per micro-step, num_generations of them per problem
        num_generations=config.num_generations, max_completion_length=config.max_completion_length,
        temperature=config.temperature, top_k=0, top_p=1.0, use_vllm=config.use_vllm, vllm_mode="colocate",
        # vLLM reads the stop tokens from the base model's folder, whose EOS may be <|endoftext|>: name <|im_end|>
        generation_kwargs={"stop_token_ids": stop_token_ids(model, tokenizer)} if config.use_vllm else None,
        # the objective
        beta=config.beta, loss_type=config.loss_type, scale_rewards=config.scale_rewards,
        num_iterations=config.num_iterations, reward_weights=reward_weights, disable_dropout=True,
        # optimisation
        per_device_train_batch_size=config.batch_size, gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate, lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_ratio, weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm,
        max_steps=config.max_steps, num_train_epochs=config.num_epochs,
        **precision_args(config.bf16, "grpo"),
        activation_checkpointing=False,  # small models: recomputing costs more than it saves
        # bookkeeping
        logging_steps=config.logging_steps, save_strategy="steps", save_steps=config.save_steps, save_total_limit=2,
        seed=config.seed, data_seed=config.seed, report_to="none", log_completions=False,
    )
    if config.freeze_embeddings and not config.use_lora:  # LoRA leaves both fixed anyway
        model.get_input_embeddings().requires_grad_(False)
        model.get_output_embeddings().requires_grad_(False)
    trainer = GRPOTrainer(
        model=model, reward_funcs=reward_funcs, args=args, train_dataset=train, processing_class=tokenizer,
        peft_config=config.lora_config() if config.use_lora else None,
    )
    model = trainer.model  # the PeftModel with LoRA
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("grpo: %s, %.2fM of %.2fM parameters trained; %d completions per step, %d per problem",
                "LoRA" if config.use_lora else "all weights", trainable / 1e6, total / 1e6,
                config.batch_size * config.gradient_accumulation_steps, config.num_generations)
    if resume_from:
        logger.info("grpo: resuming from %s", resume_from)
    result = trainer.train(resume_from_checkpoint=resume_from)
    train_seconds = result.metrics.get("train_runtime")

    # 3. The trained model, measured the same way.
    after, samples = measure(model, tokenizer, test, config)
    logger.info("grpo: after: %s", format_metrics(after))

    # 4. Save: the model (or adapter) with the tokenizer and the generation config that stops at <|im_end|>.
    trainer.save_model(str(work))
    tokenizer.save_pretrained(str(work))
    model.generation_config.save_pretrained(str(work))
    chat_config = Path(model_path) / CHAT_CONFIG  # the SFT model's chat defaults (system message, name) carry over
    if chat_config.is_file():
        shutil.copy(chat_config, work / CHAT_CONFIG)
    if config.use_lora and config.merge_lora:
        merged = model.merge_and_unload()
        merged.save_pretrained(str(work / "merged"))
        tokenizer.save_pretrained(str(work / "merged"))
        if chat_config.is_file():
            shutil.copy(chat_config, work / "merged" / CHAT_CONFIG)
    log_history = trainer.state.log_history
    plot_reward_curve(log_history, work / "reward_curve.png")
    if not config.keep_checkpoints:
        shutil.rmtree(work / "checkpoints", ignore_errors=True)
    shutil.rmtree(work / REFERENCE_DIR, ignore_errors=True)
    (work / BASELINE_FILE).unlink()

    rewards = [h["reward"] for h in log_history if h.get("reward") is not None]
    tenth = max(1, len(rewards) // 10)
    metrics = {
        **{f"{k}_before": v for k, v in base["metrics"].items()},
        **{f"{k}_after": v for k, v in after.items()},
        "k": config.pass_k,
        "reward_mean_first": sum(rewards[:tenth]) / tenth if rewards else None,
        "reward_mean_last": sum(rewards[-tenth:]) / tenth if rewards else None,
        "problems": config.problems, "num_train_problems": len(train), "num_test_problems": len(test),
        **{f"skipped_{reason}": n for reason, n in sorted(skipped.items())},
        "skipped_rows": sum(skipped.values()),
        "reward_weights": dict(config.reward_weights), "num_generations": config.num_generations,
        "beta": config.beta, "loss_type": config.loss_type, "learning_rate": config.learning_rate,
        "train_loss": result.training_loss, "steps": trainer.state.global_step, "use_lora": config.use_lora,
        "trainable_params": trainable, "num_params": total, "start_model": model_path, "resumed_from": resume_from,
        "train_seconds": train_seconds, "device": str(trainer.args.device), "bf16": trainer.args.bf16,
        "wall_time_s": round(time.time() - start, 2),
    }
    write_json(work / "metrics.json", metrics)
    write_json(work / "samples.json", {"before": base["samples"], "after": samples})
    write_json(work / "log_history.json", {"log_history": log_history})
    finish_stage(work, final)
    for name in ("pass1", "pass1_strict", "pass1_checked", "passk", "sample_accuracy", "mean_completion_tokens",
                 "stop_rate"):
        logger.info("grpo: %-22s %.4g -> %.4g", name, metrics[f"{name}_before"], metrics[f"{name}_after"])
    logger.info("grpo: %d steps in %.0f s, reward %.3f -> %.3f -> %s", metrics["steps"], train_seconds or 0,
                metrics["reward_mean_first"] or 0, metrics["reward_mean_last"] or 0, final)
    return final

