"""Pretraining stage: a causal LM from scratch on packed token windows, with ``transformers.Trainer``.

    corpus -> tokenize (datasets.map, multiprocess) -> documents joined by <|endoftext|> -> fixed windows
           -> Trainer (AdamW, cosine schedule with warmup, bf16, gradient accumulation, checkpoints)
           -> held-out loss and bits per byte -> RUN/pretrain/ (a model folder AutoModelForCausalLM loads)

Bits per byte (bpb, ``hf_pipeline.evals.text``) divides the summed held-out loss, converted to bits, by the UTF-8
bytes of the predicted tokens: unlike loss per token it does not depend on the tokenizer, so models with different
vocabularies compare.

A killed run leaves RUN/pretrain.incomplete/checkpoints/; running the stage again resumes from the last checkpoint
and, because the sampler is seeded and Trainer skips the batches already seen, sees the data in the same order.

Under ``accelerate launch`` with N processes, ``batch_size`` is per process (a step sees N x batch_size windows:
with the seeded sampler the same windows as one process with N x batch_size); every process trains and evaluates,
the Trainer saves checkpoints once, and only the main process writes and renames the stage folder.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from .artifacts import (finish_stage, is_complete, is_main_process, resume_or_start, train_loss, wait_for_everyone,
                        write_json)
from .config import ConfigError, PretrainConfig, config_to_dict
from .corpus import load_corpus, tokenize_and_pack
from .evals.text import evaluate_bpb, token_byte_lengths

logger = logging.getLogger("hf_pipeline")


def collate_windows(features: list[dict]) -> dict:
    """A batch of packed windows: all ``seq_len`` long, no padding, so the labels are the inputs (the model shifts
    them). Stacking tensors (the dataset is in torch format) instead of padding Python lists keeps the collator off
    the GPU's critical path."""
    import torch

    ids = torch.stack([torch.as_tensor(f["input_ids"]) for f in features])
    return {"input_ids": ids, "labels": ids}


def _trainer_class():
    from transformers import Trainer

    class PretrainTrainer(Trainer):
        """Trainer whose evaluation reports held-out loss *and* bits per byte."""

        def __init__(self, *args, token_bytes=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.token_bytes = token_bytes

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            windows = eval_dataset if eval_dataset is not None else self.eval_dataset
            result = evaluate_bpb(
                self.model, windows, self.token_bytes, self.args.per_device_eval_batch_size,
                autocast=self.accelerator.autocast(),
            )
            metrics = {f"{metric_key_prefix}_{k}": v for k, v in result.items()}
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

    return PretrainTrainer


def training_arguments(config: PretrainConfig, checkpoint_dir: Path, learning_rate: float):
    from transformers import TrainingArguments

    from .model import precision_args, tracking_args

    return TrainingArguments(
        output_dir=str(checkpoint_dir),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": config.min_lr_ratio},
        warmup_steps=config.warmup_ratio,  # a float < 1 is a share of the total steps
        weight_decay=config.weight_decay,
        adam_beta1=0.9,
        adam_beta2=config.adam_beta2,
        max_grad_norm=config.max_grad_norm,
        max_steps=config.max_steps,
        num_train_epochs=config.num_epochs,
        **precision_args(config.bf16, "pretrain"),  # bf16 where the hardware has it (on CPU: AMX), else fp32
        torch_compile=config.torch_compile,
        eval_strategy="steps",
        eval_steps=config.eval_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        seed=config.seed,
        data_seed=config.seed,
        dataloader_drop_last=True,
        **tracking_args(config),
    )


def run(config: PretrainConfig) -> Path:
    """Pretrain a model from scratch and write RUN/pretrain/."""
    from transformers import AutoTokenizer

    from .model import build_model, count_params, default_learning_rate, model_config
    from .refs import resolve_tokenizer

    final = config.stage_dir()
    if is_complete(final) and not config.overwrite:
        logger.info("pretrain: %s is complete, skipping (overwrite: true to redo it)", final)
        return final
    start = time.time()
    # resume only with the recorded settings (else refuse, naming them), before any slow work
    work, resume_from = resume_or_start(final, config_to_dict(config), config.resume and not config.overwrite)
    tokenizer_ref = resolve_tokenizer(config.input_ref("tokenizer"))
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_ref)

    train_docs, heldout_docs = load_corpus(config.corpus, config.mirror, config.heldout_fraction, config.seed)
    train = tokenize_and_pack(train_docs, tokenizer, config.seq_len, config.num_proc, "train")
    heldout = tokenize_and_pack(heldout_docs, tokenizer, config.seq_len, config.num_proc, "heldout")
    if len(train) == 0:
        raise ConfigError(f"pretrain: the corpus yields no window of seq_len={config.seq_len} tokens")
    if len(heldout) == 0:
        logger.warning("pretrain: held-out split yields no full window; evaluating on 2%% of the training windows")
        heldout = train.select(range(max(1, len(train) // 50)))
    logger.info(
        "pretrain: %d train windows (%d tokens), %d held-out windows of %d tokens",
        len(train), len(train) * config.seq_len, len(heldout), config.seq_len,
    )

    mconfig = model_config(
        config.depth, len(tokenizer), config.seq_len, config.aspect_ratio, config.head_dim,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    lr = config.learning_rate or default_learning_rate(mconfig.hidden_size)

    import transformers

    transformers.set_seed(config.seed)
    model = build_model(mconfig)
    logger.info(
        "pretrain: model depth %d, width %d, %d heads, %.2fM parameters (%.2fM non-embedding), lr %.2e",
        config.depth, mconfig.hidden_size, mconfig.num_attention_heads, count_params(model) / 1e6,
        count_params(model, non_embedding=True) / 1e6, lr,
    )
    trainer = _trainer_class()(
        model=model,
        args=training_arguments(config, work / "checkpoints", lr),
        train_dataset=train.with_format("torch"),
        eval_dataset=heldout,
        data_collator=collate_windows,
        processing_class=tokenizer,
        token_bytes=token_byte_lengths(tokenizer),
    )
    result = trainer.train(resume_from_checkpoint=resume_from)
    evals = [h for h in trainer.state.log_history if "eval_bpb" in h]
    if evals and evals[-1].get("step") == trainer.state.global_step:
        final_eval = evals[-1]  # the schedule already evaluated the final weights
    else:
        final_eval = trainer.evaluate()

    trainer.save_model(str(work))  # every process (FSDP/ZeRO-3 gather the weights); the Trainer writes once
    if not is_main_process():
        wait_for_everyone()  # the main process writes the rest and renames the folder
        return final
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.save_pretrained(str(work))
    if not config.keep_checkpoints:
        import shutil

        shutil.rmtree(work / "checkpoints", ignore_errors=True)
    steps = trainer.state.global_step
    tokens_per_step = config.batch_size * config.gradient_accumulation_steps * config.seq_len * trainer.args.world_size
    tokens = steps * tokens_per_step
    resumed_step = int(resume_from.rsplit("-", 1)[1]) if resume_from else 0  # tokens/s: this process's steps only
    metrics = {
        "heldout_loss": final_eval["eval_loss"],
        "heldout_bpb": final_eval["eval_bpb"],
        # the Trainer's mean covers this process's steps: after a resume, the mean of every logged step instead
        "train_loss": train_loss(trainer.state.log_history) if resume_from else result.training_loss,
        "steps": steps,
        "train_tokens": tokens,
        "tokens_per_s": (steps - resumed_step) * tokens_per_step / max(result.metrics.get("train_runtime", 1e-9),
                                                                       1e-9),
        "train_seconds": result.metrics.get("train_runtime"),  # of this process (a resumed run: since the resume)
        "num_params": count_params(model),
        "non_embedding_params": count_params(model, non_embedding=True),
        "learning_rate": lr,
        "resumed_from": resume_from,
        "device": str(trainer.args.device),
        "bf16": trainer.args.bf16,
        "num_processes": trainer.args.world_size,
        "wall_time_s": round(time.time() - start, 2),
    }
    write_json(work / "metrics.json", metrics)
    write_json(work / "log_history.json", {"log_history": trainer.state.log_history})
    finish_stage(work, final)
    wait_for_everyone()
    logger.info(
        "pretrain: trained %d steps (%.2fM tokens, %.0f tokens/s), held-out loss %.3f, %.3f bits/byte -> %s",
        steps, tokens / 1e6, metrics["tokens_per_s"], metrics["heldout_loss"], metrics["heldout_bpb"], final,
    )
    return final
