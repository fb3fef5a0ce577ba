"""DPO stage: the preference pairs trained into the policy directly (TRL ``DPOTrainer``), no reward model, no RL.

    preference pairs (RUN/rank by default: train / test split by prompt; or any source the reward stage reads)
    -> the SFT model (RUN/sft) judged on the held-out prompts (as the rlhf stage judges: the judge's score, degenerate
       replies; the reward model's score too with reward_model)
    -> DPOTrainer: the loss pushes up log pi(chosen)/pi_ref(chosen) - log pi(rejected)/pi_ref(rejected) (beta); the
       reference is a frozen copy of the starting model; held-out pairs give the implicit reward's accuracy
    -> judged again, win rate against the start -> RUN/dpo/ (a model folder, or a LoRA adapter)

Usage::

    hf-pipeline dpo --config recipes/tiny.yaml --output_dir runs/tiny
    hf-pipeline dpo --model Qwen/Qwen2.5-0.5B-Instruct --preferences OpenAssistant/oasst1 --use_lora true

metrics.json: judge_score_before/after, degenerate_share_*, mean_tokens_*, proxy_reward_* (with reward_model),
win_rate, heldout_pair_accuracy / heldout_pair_margin / heldout_loss (DPO's implicit reward on the held-out pairs),
pairs.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from pathlib import Path

from .config import DPOStageConfig
from .evals.preference import JudgedMeasures
from .posttrain import PostTrainingStage, chat_policy_defaults, trainer_args

logger = logging.getLogger("hf_pipeline")


class DPOStage(JudgedMeasures, PostTrainingStage):
    """DPOTrainer on preference pairs; measures: the judge on held-out prompts, win rate against the start."""

    def load_start(self, path: str, work: Path):
        model, tokenizer = super().load_start(path, work)
        self.chat_config = chat_policy_defaults(model, tokenizer, path)
        return model, tokenizer

    def load_data(self, tokenizer) -> None:
        from .evals.preference import RewardScorer, heldout_prompts
        from .preferences import resolve_judge
        from .reward_model import preference_splits

        config = self.config
        self.stats = Counter()
        self.train, self.test = preference_splits(config, self.stats)
        self.eval_prompts = heldout_prompts(self.test, config.judge_prompts, config.seed)
        self.judge_fn = resolve_judge(config.judge, what="dpo.judge")
        self.scorer = RewardScorer.load(config.reward_model, what="dpo.reward_model") if config.reward_model else None
        self.generation = config.max_new_tokens, config.temperature
        logger.info("dpo: %d training pairs, %d held out, %d held-out prompts judged (%s)", len(self.train),
                    len(self.test), len(self.eval_prompts), config.judge)

    def make_trainer(self, model, tokenizer, output_dir: str):
        from trl import DPOConfig, DPOTrainer

        config = self.config
        args = DPOConfig(**trainer_args(config, output_dir), beta=config.beta, loss_type=list(config.loss_type),
                         max_length=config.max_length, dataset_num_proc=None)
        columns = ["prompt", "chosen", "rejected"]
        ref_model = None if config.use_lora else copy.deepcopy(model).eval()  # LoRA: the adapter switched off
        return DPOTrainer(model=model, ref_model=ref_model, args=args,
                          train_dataset=self.train.select_columns(columns),
                          eval_dataset=self.test.select_columns(columns) if len(self.test) else None,
                          processing_class=tokenizer,
                          peft_config=config.lora_config() if config.use_lora else None)

    def stage_metrics(self) -> dict:
        evaluated = self.trainer.evaluate() if len(self.test) else {}
        return {
            **self.judged_metrics(),
            # DPO's implicit reward beta * log pi/pi_ref on the held-out pairs: chosen above rejected, mean margin
            "heldout_pair_accuracy": evaluated.get("eval_rewards/accuracies"),
            "heldout_pair_margin": evaluated.get("eval_rewards/margins"), "heldout_loss": evaluated.get("eval_loss"),
            "pairs_train": len(self.train), "pairs_test": len(self.test), "beta": self.config.beta,
            "loss_type": list(self.config.loss_type), "preferences": self.config.input_ref("preferences"),
            **{f"skipped_{reason}": n for reason, n in sorted(self.stats.items())},
        }


def run(config: DPOStageConfig) -> Path:
    """DPO on the preference pairs from the starting model, and write RUN/dpo/."""
    return DPOStage(config).run()
