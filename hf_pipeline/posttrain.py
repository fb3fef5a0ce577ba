"""The post-training lifecycle, written once: every stage that trains a model from a model uses it.

    start model (config.model, else the stage table's default: sft <- RUN/pretrain, grpo <- RUN/sft)
    -> the stage's data -> RUN/<stage>.incomplete/ (kept if a checkpoint can be resumed), config.yaml
    -> the stage's TRL trainer
    -> measure the starting model, once (kept in baseline.json: a resumed run reads what the killed one measured)
    -> train (resuming from the last complete checkpoint)
    -> measure the trained model the same way
    -> save the model or adapter, tokenizer, generation config, chat defaults (merged/ for merge_lora)
    -> metrics.json: every measure as <measure>_before / <measure>_after, then the training figures;
       samples.json (before/after), log_history.json -> rename to RUN/<stage>/

A stage subclasses ``PostTrainingStage`` and fills in what is its own: ``load_data``, ``make_trainer``, ``measure``,
and optionally ``load_start`` (its model preparation), ``after_train``, ``save_extra`` and ``stage_metrics``. The
starting model is measured before the trainer is built (whose construction seeds the training's random state
afresh), unless the stage sets ``measures_with_trainer`` (sft: its held-out loss is the trainer's own evaluation).

Under ``accelerate launch`` with several processes every process loads, measures and trains (the Trainer shards the
batches and saves checkpoints once); only the main process creates, writes and renames the stage folder, and the
others wait for it (``artifacts.wait_for_everyone``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from .artifacts import (BASELINE_FILE, finish_stage, format_metrics, is_complete, is_main_process, measure_once,
                        resume_or_start, train_loss, wait_for_everyone, write_json)
from .config import ConfigError, PostTrainingConfig, config_to_dict
from .engine import CHAT_CONFIG, Engine

logger = logging.getLogger("hf_pipeline")

CHECKPOINTS = "checkpoints"


def before_after(before: dict, after: dict) -> dict:
    """``{measure}_before`` / ``{measure}_after`` for every measure of either side (None where one lacks it)."""
    keys = list(dict.fromkeys([*before, *after]))
    return {f"{k}_{side}": values.get(k) for k in keys for side, values in (("before", before), ("after", after))}


class PostTrainingStage:
    """One post-training stage. ``run()`` is the lifecycle; subclasses implement the hooks below."""

    measures_with_trainer = False  # True: ``measure`` needs the trainer (then the start is measured once it is built)

    def __init__(self, config: PostTrainingConfig):
        self.config = config
        self.name = config.stage
        self.chat_config: dict = {}  # written beside the model (chat defaults), if not empty

    # --- hooks ------------------------------------------------------------------------------------------------------

    def load_start(self, path: str, work: Path):
        """The starting model (float32; a LoRA adapter folder merged into its base) and its tokenizer."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(f"{self.name}.model: {path} has no chat template in its tokenizer")
        try:
            if (Path(path) / "adapter_config.json").is_file():
                from peft import AutoPeftModelForCausalLM

                model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=torch.float32).merge_and_unload()
            else:
                model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        except (OSError, ValueError) as e:
            raise ConfigError(f"{self.name}.model: cannot load {path} ({str(e).splitlines()[0][:200]})") from None
        if torch.cuda.is_available():  # the "before" measures generate on the accelerator too (this process's GPU)
            model.to(f"cuda:{os.environ.get('LOCAL_RANK', '0')}")
        return model, tokenizer

    def load_data(self, tokenizer) -> None:
        """Read the stage's data (stored on ``self``) and log what was read, kept and skipped."""
        raise NotImplementedError

    def make_trainer(self, model, tokenizer, output_dir: str):
        """The stage's TRL trainer, checkpointing into ``output_dir`` (the lifecycle keeps it as ``self.trainer``)."""
        raise NotImplementedError

    def measure(self, engine: Engine, trainer) -> tuple[dict, object]:
        """The stage's measures of ``engine.model``: ``(flat metrics, samples)``. ``trainer`` is None when the
        starting model is measured before the trainer exists (``measures_with_trainer`` False)."""
        raise NotImplementedError

    def after_train(self, trainer) -> None:
        """Between training and the "after" measures (rlhf: put back the weights its guard kept)."""

    def save_extra(self, work: Path, model, tokenizer) -> None:
        """Files beside the model besides what the lifecycle saves."""

    def stage_metrics(self) -> dict:
        """The stage's own metrics (data counts, settings), after the before/after pairs."""
        return {}

    # --- the lifecycle ------------------------------------------------------------------------------------------

    def run(self) -> Path:
        import transformers

        config, name = self.config, self.name
        final = config.stage_dir()
        if is_complete(final) and not config.overwrite:
            logger.info("%s: %s is complete, skipping (overwrite: true to redo it)", name, final)
            return final
        start = time.time()
        from .refs import resolve_model

        model_path = resolve_model(config.input_ref("model"))
        if Path(model_path).is_dir():  # absolute, so that a LoRA adapter finds its base model from anywhere
            model_path = str(Path(model_path).resolve())
        # resume only with the recorded settings (else refuse, naming them); overwrite starts over
        work, resume_from = resume_or_start(final, config_to_dict(config), config.resume and not config.overwrite)
        transformers.set_seed(config.seed)
        model, tokenizer = self.load_start(model_path, work)
        self.tokenizer = tokenizer
        self.load_data(tokenizer)
        # 1. The starting model, measured once (a resumed run reads what the killed one measured): before the
        #    trainer is built, unless the stage measures with it (sft's held-out loss is trainer.evaluate()).
        def measure_start(trainer):
            model.eval()
            return self.measure(Engine(trainer.model if trainer else model, tokenizer), trainer)

        if not self.measures_with_trainer:
            base = measure_once(work, lambda: measure_start(None))
        trainer = self.trainer = self.make_trainer(model, tokenizer, str(work / CHECKPOINTS))
        if self.measures_with_trainer:
            base = measure_once(work, lambda: measure_start(trainer))
        self.baseline = base  # the start's measures and samples (a resumed run's from baseline.json)
        model = trainer.model  # the PeftModel with LoRA
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        logger.info("%s: %s, %.2fM of %.2fM parameters trained", name,
                    "LoRA" if config.use_lora else "all weights", trainable / 1e6, total / 1e6)
        engine = Engine(model, tokenizer)
        logger.info("%s: before: %s", name, format_metrics(base["metrics"]))

        # 2. Train.
        result = trainer.train(resume_from_checkpoint=resume_from)
        train_seconds = result.metrics.get("train_runtime")
        self.after_train(trainer)

        # 3. The trained model, measured the same way.
        model.eval()  # trainer.train() leaves the model in training mode: LoRA dropout would be active
        after, samples = self.measure(engine, trainer)
        logger.info("%s: after: %s", name, format_metrics(after))

        # 4. Save: the model (or adapter), tokenizer, generation config, chat defaults; merged/ for merge_lora.
        trainer.save_model(str(work))  # every process (FSDP/ZeRO-3 gather the weights); the Trainer writes once
        if is_main_process():
            self._publish(work, final, model, tokenizer, base, after, samples, result, resume_from, trainable, total,
                          model_path, start)
        wait_for_everyone()  # the other processes return once the stage folder is complete
        logger.info("%s: %d steps in %.0f s -> %s", name, trainer.state.global_step, train_seconds or 0, final)
        return final

    def _publish(self, work, final, model, tokenizer, base, after, samples, result, resume_from, trainable, total,
                 model_path, start) -> None:
        """The main process's writes: the files beside the model, metrics.json, samples.json, the rename."""
        config, name, trainer = self.config, self.name, self.trainer
        tokenizer.save_pretrained(str(work))
        if getattr(model, "generation_config", None) is not None:  # a reward model has none
            model.generation_config.save_pretrained(str(work))
        if self.chat_config:
            write_json(work / CHAT_CONFIG, self.chat_config)
        if config.use_lora and config.merge_lora:
            merged = model.merge_and_unload()
            merged.save_pretrained(str(work / "merged"))
            tokenizer.save_pretrained(str(work / "merged"))
            if self.chat_config:
                write_json(work / "merged" / CHAT_CONFIG, self.chat_config)
        self.save_extra(work, model, tokenizer)
        if not config.keep_checkpoints:
            shutil.rmtree(work / CHECKPOINTS, ignore_errors=True)
        (work / BASELINE_FILE).unlink()

        metrics = {
            **before_after(base["metrics"], after),
            **self.stage_metrics(),
            # the Trainer's mean covers this process's steps: after a resume, the mean of every logged step
            "train_loss": train_loss(trainer.state.log_history) if resume_from else result.training_loss,
            "steps": trainer.state.global_step,
            "learning_rate": config.learning_rate, "use_lora": config.use_lora, "trainable_params": trainable,
            "num_params": total, "start_model": model_path, "resumed_from": resume_from,
            "train_seconds": result.metrics.get("train_runtime"), "device": str(trainer.args.device),
            "bf16": trainer.args.bf16, "num_processes": trainer.args.world_size,
            "wall_time_s": round(time.time() - start, 2),
        }
        write_json(work / "metrics.json", metrics)
        write_json(work / "samples.json", {"before": base["samples"], "after": samples})
        write_json(work / "log_history.json", {"log_history": trainer.state.log_history})
        finish_stage(work, final)
        for key in after:
            before, now = metrics.get(f"{key}_before"), metrics.get(f"{key}_after")
            shown = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in (before, now)]
            logger.info("%s: %-22s %s -> %s", name, key, *shown)


def trainer_args(config: PostTrainingConfig, output_dir: str) -> dict:
    """The ``TrainingArguments`` every post-training stage shares (TRL's configs take them all): the optimisation
    fields of the recipe, precision for this hardware, checkpoints, seeds, trackers."""
    from .model import precision_args, tracking_args

    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=config.batch_size, per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps, learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type, warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm, max_steps=config.max_steps,
        num_train_epochs=config.num_epochs, **precision_args(config.bf16, config.stage),
        activation_checkpointing=False,  # small models: recomputing costs more than it saves
        logging_steps=config.logging_steps, save_strategy="steps", save_steps=config.save_steps, save_total_limit=2,
        seed=config.seed, data_seed=config.seed, **tracking_args(config),
    )


def chat_policy_defaults(model, tokenizer, path: str) -> dict:
    """A chat model about to be trained further (grpo, dpo, rlhf): its generation stops at ``<|im_end|>`` and pads
    with the pad token; returns the chat defaults beside it (system message, name), which the stage carries over."""
    from .engine import stop_token_ids

    model.generation_config.eos_token_id = stop_token_ids(model, tokenizer)  # <|im_end|> ends every completion
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return read_chat_config(path)


def read_chat_config(model_path: str) -> dict:
    """The chat defaults (system message, name) beside a model, if any: a later stage carries them over."""
    path = Path(model_path) / CHAT_CONFIG
    return json.loads(path.read_text()) if path.is_file() else {}
