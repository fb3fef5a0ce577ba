"""Reward stage: a reward model learns the preferences (TRL ``RewardTrainer``), to stand in for the people who ranked.

    preference pairs (RUN/rank by default: its train / test split by prompt; or Anthropic/hh-rlhf, OpenAssistant/oasst1,
    any prompt / chosen / rejected dataset, split by prompt here)
    -> the starting model (RUN/sft, or any causal LM or Hub model) with a fresh score head
       (AutoModelForSequenceClassification, num_labels=1; LoRA with use_lora: the head trains in full)
    -> held-out pairwise accuracy and margin, before and after: the rank stage's held-out prompts are judged by the
       same labeller as the training pairs, so their accuracy is the agreement with it (the gold judge, in the tiny
       recipe); eval_preferences add other held-out sets (accuracy_<name>: Anthropic/hh-rlhf's human pairs)
    -> RewardTrainer: loss -log sigmoid(r_chosen - r_rejected - margin) + center_rewards_coefficient * (r_c + r_r)^2
    -> RUN/reward/: a sequence-classification model folder (``AutoModelForSequenceClassification.from_pretrained``),
       its tokenizer, metrics.json, samples.json (scored held-out pairs), config.yaml

The score is read at the last token that is not the pad token, so the stage refuses a tokenizer whose pad token is
its end token (the score would be read at the first end token: transformers #35352); hf-pipeline's tokenizer has a
distinct ``<|pad|>``. The rlhf stage reads RUN/reward as its proxy reward.

Usage::

    hf-pipeline reward --config recipes/tiny.yaml --output_dir runs/tiny
    hf-pipeline reward --model Qwen/Qwen2.5-0.5B-Instruct --preferences OpenAssistant/oasst1 --use_lora true

metrics.json: accuracy_before/after, margin_before/after, reward_mean_before/after (held-out pairs), accuracy_<name>
for each eval set, pairs_train / pairs_test, prompts_train / prompts_test, skipped rows by reason, pad / eos ids.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from .config import ConfigError, RewardStageConfig
from .posttrain import PostTrainingStage, trainer_args

logger = logging.getLogger("hf_pipeline")


def preference_splits(config, stats: Counter):
    """``(train, test)`` pairs of a preference stage's source: a rank folder's own train / test split, else the
    source split by prompt (``preference_heldout``)."""
    from .preference_data import load_preferences, split_by_prompt
    from .refs import Source

    ref = config.input_ref("preferences")
    what = f"{config.stage}.preferences"
    splits = _saved_splits(ref)
    if {"train", "test"} <= splits:
        return tuple(load_preferences(Source(path=ref, split=split), config.mirror, stats, what=what)
                     for split in ("train", "test"))
    pairs = load_preferences(Source(path=ref, name=config.preferences_name, split=config.preferences_split),
                             config.mirror, stats, what=what)
    train, test = split_by_prompt(pairs, config.preference_heldout, config.seed)
    if len(train) == 0:
        raise ConfigError(f"{what}: {ref} has no usable pairs ({dict(stats) or 'none read'})")
    return train, test


def _saved_splits(ref: str) -> set[str]:
    """The splits of a ``save_to_disk`` DatasetDict folder (none for anything else)."""
    import json

    path = Path(ref) / "dataset_dict.json"
    return set(json.loads(path.read_text()).get("splits", [])) if path.is_file() else set()


class RewardStage(PostTrainingStage):
    """RewardTrainer on preference pairs; measures: held-out pairwise accuracy and margin."""

    def load_start(self, path: str, work: Path):
        from .evals.preference import load_reward_model

        model, tokenizer = load_reward_model(path, "reward.model")
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(f"reward.model: {path} has no chat template in its tokenizer")
        return model, tokenizer

    def load_data(self, tokenizer) -> None:
        config = self.config
        self.stats = Counter()
        self.train, self.test = preference_splits(config, self.stats)
        if not config.use_margin:
            self.train = self.train.remove_columns("margin")
        self.evals = {}
        for source in config.eval_preferences:
            from .preference_data import load_preferences

            pairs = load_preferences(source, config.mirror, self.stats, what="reward.eval_preferences")
            if config.eval_limit >= 0:
                pairs = pairs.shuffle(seed=config.seed).select(range(min(config.eval_limit, len(pairs))))
            self.evals[source.path.rstrip("/").split("/")[-1]] = pairs
        logger.info("reward: %d training pairs (%d prompts), %d held out (%d prompts); eval sets: %s; skipped: %s",
                    len(self.train), len(set(self.train["prompt_id"])), len(self.test),
                    len(set(self.test["prompt_id"])), {k: len(v) for k, v in self.evals.items()} or "none",
                    dict(self.stats) or "none")

    def make_trainer(self, model, tokenizer, output_dir: str):
        from trl import RewardConfig, RewardTrainer

        config = self.config
        args = RewardConfig(**trainer_args(config, output_dir), max_length=config.max_length,
                            center_rewards_coefficient=config.center_rewards_coefficient or None,
                            dataset_num_proc=None)
        return RewardTrainer(model=model, args=args, train_dataset=self.train.remove_columns("prompt_id"),
                             processing_class=tokenizer,
                             peft_config=config.lora_config(task_type="SEQ_CLS") if config.use_lora else None)

    def measure(self, engine, trainer):
        from .evals.preference import RewardScorer, pairwise_accuracy

        scorer = RewardScorer(engine.model, engine.tokenizer, self.config.eval_batch_size, self.config.max_length)
        metrics = pairwise_accuracy(scorer, self.test)
        for name, pairs in self.evals.items():
            metrics.update({f"{k}_{name}": v for k, v in pairwise_accuracy(scorer, pairs).items()})
        shown = self.test.select(range(min(8, len(self.test))))
        samples = [{"prompt": row["prompt"][-1]["content"], "chosen": row["chosen"][-1]["content"],
                    "rejected": row["rejected"][-1]["content"], "scores": scorer.score(
                        [row["prompt"]] * 2, [row["chosen"][-1]["content"], row["rejected"][-1]["content"]])}
                   for row in shown]
        return metrics, samples

    def stage_metrics(self) -> dict:
        tokenizer = self.trainer.processing_class
        return {
            "pairs_train": len(self.train), "pairs_test": len(self.test),
            "prompts_train": len(set(self.train["prompt_id"])), "prompts_test": len(set(self.test["prompt_id"])),
            **{f"skipped_{reason}": n for reason, n in sorted(self.stats.items())},
            "preferences": self.config.input_ref("preferences"),
            "center_rewards_coefficient": self.config.center_rewards_coefficient,
            "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
        }


def run(config: RewardStageConfig) -> Path:
    """Train a reward model on preference pairs and write RUN/reward/."""
    return RewardStage(config).run()
