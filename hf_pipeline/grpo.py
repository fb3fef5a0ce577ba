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

Written to RUN/grpo/metrics.json (flat keys), before and after training (hf_pipeline.evals.problems; the lifecycle,
resume included, is hf_pipeline.posttrain's):
    pass1_before/after            share of held-out problems solved by the greedy completion (gsm8k_accuracy metric)
    pass1_strict_before/after     the same, counting only answers given on a "#### N" line
    pass1_checked_before/after    the same, counting only answers the reply's own arithmetic reaches
                                  (rewards.work_checks): the rest are right by luck
    passk_before/after, k         share of held-out problems solved by at least one of k sampled completions
    sample_accuracy_before/after  share of those k x problems samples that are correct (sampled pass@1)
    mean_completion_tokens_*      mean length of the greedy completions in tokens (stop token excluded)
    worked_share_before/after     share of greedy completions that show intermediate results
    sample_worked_share_*, sample_mean_tokens_*   the same for the sampled completions, and their mean length
    accuracy_worked_*, accuracy_direct_*          sampled completions of each form (worked / direct): share right
    reward_mean_first/last        mean training reward over the first / last tenth of the logged steps
    rollout_worked_share_first/last, rollout_mean_length_first/last   the same for the rollouts' share of worked
                                  replies and their length (the curves of reward_curve.png)
    guess_accuracy                the most frequent training answer's accuracy on the held-out problems
also log_history.json (per logging step: reward, rewards/<function>/mean, completion lengths, KL, loss...),
reward_curve.png (reward, share of worked rollouts and length per step), samples.json (greedy completions before and
after).
A killed run resumes from its last checkpoint in RUN/grpo.incomplete/checkpoints/ (the "before" measures too).
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from pathlib import Path

from .artifacts import is_main_process, wait_for_everyone
from .config import ConfigError, GRPOStageConfig
from .posttrain import PostTrainingStage, chat_policy_defaults, trainer_args

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


WORKED_KEY = "rewards/worked_reward/mean"  # the logged mean of rewards.worked_reward: the share of worked rollouts


def plot_reward_curve(log_history: list[dict], path: Path) -> None:
    """reward_curve.png, three panels over the training steps: the mean (weighted) reward and each reward
    function's mean; the share of rollouts that show intermediate results; the mean completion length."""
    from matplotlib.figure import Figure

    logs = [h for h in log_history if "reward" in h]
    steps = [h["step"] for h in logs]
    fig = Figure(figsize=(15, 4), dpi=100)
    ax, ax_worked, ax_len = fig.subplots(1, 3)
    ax.plot(steps, [h["reward"] for h in logs], label="reward (weighted sum)", linewidth=2)
    for key in sorted({k for h in logs for k in h if k.startswith("rewards/") and k.endswith("/mean")} - {WORKED_KEY}):
        ax.plot(steps, [h.get(key) for h in logs], label=key.split("/")[1], alpha=0.7)
    ax.set(xlabel="step", ylabel="mean reward", title="GRPO training reward")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax_worked.plot(steps, [h.get(WORKED_KEY) for h in logs], color="tab:green")
    ax_worked.set(xlabel="step", ylabel="share", ylim=(-0.02, 1.02), title="rollouts showing intermediate results")
    ax_worked.grid(alpha=0.3)
    ax_len.plot(steps, [h.get("completions/mean_length") for h in logs], color="tab:gray")
    ax_len.set(xlabel="step", ylabel="tokens", title="mean completion length")
    ax_len.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")


class GRPOStage(PostTrainingStage):
    """GRPOTrainer on problems with reward functions; measures: pass@1, pass@k, lengths on held-out problems.

    ``make_trainer`` is the rlhf stage's too: it reads the ``RLConfig`` fields, ``self.train`` (a ``prompt``
    column), ``self.reward_funcs`` / ``self.reward_weights``, and these two (rlhf: the reward model's tokenizer,
    its guard)."""

    reward_processing_classes = None
    callbacks: tuple = ()

    def load_start(self, path: str, work: Path):
        model, tokenizer = super().load_start(path, work)
        if (Path(path) / "adapter_config.json").is_file() and self.config.beta > 0 and not self.config.use_lora:
            if is_main_process():  # written once; the other processes wait for it
                model.save_pretrained(str(work / REFERENCE_DIR))  # TRL loads the KL reference from _name_or_path
            wait_for_everyone()
            model.config._name_or_path = str(work / REFERENCE_DIR)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.chat_config = chat_policy_defaults(model, tokenizer, path)
        return model, tokenizer

    def load_data(self, tokenizer) -> None:
        from .rewards import build_rewards

        config = self.config
        self.train, self.test, self.skipped = load_problems(config)
        logger.info("grpo: %d training problems, %d held out (%s); skipped rows: %s", len(self.train),
                    len(self.test), config.problems, self.skipped or "none")
        weights = dict(config.reward_weights)
        weights.setdefault("worked", 0.0)  # logged only: the share of rollouts that show their work, per step
        self.reward_funcs, self.reward_weights = build_rewards(weights, config.length_penalty or None)

    def make_trainer(self, model, tokenizer, output_dir: str):
        from trl import GRPOConfig, GRPOTrainer

        from .engine import stop_token_ids

        config = self.config
        args = GRPOConfig(
            **trainer_args(config, output_dir),
            # rollouts: batch_size completions per micro-step, num_generations of them per problem
            num_generations=config.num_generations, max_completion_length=config.max_completion_length,
            temperature=config.temperature, top_k=0, top_p=1.0, use_vllm=config.use_vllm, vllm_mode="colocate",
            # vLLM reads the stop tokens from the base model's folder, whose EOS may be <|endoftext|>: name <|im_end|>
            generation_kwargs={"stop_token_ids": stop_token_ids(model, tokenizer)} if config.use_vllm else None,
            # the objective
            beta=config.beta, loss_type=config.loss_type, scale_rewards=config.scale_rewards,
            num_iterations=config.num_iterations, reward_weights=self.reward_weights, disable_dropout=True,
            mask_truncated_completions=getattr(config, "mask_truncated_completions", False), log_completions=False,
        )
        if config.freeze_embeddings and not config.use_lora:  # LoRA leaves both fixed anyway
            model.get_input_embeddings().requires_grad_(False)
            model.get_output_embeddings().requires_grad_(False)
        logger.info("%s: %d completions per step, %d per prompt", self.name,
                    config.batch_size * config.gradient_accumulation_steps, config.num_generations)
        return GRPOTrainer(model=model, reward_funcs=self.reward_funcs, args=args, train_dataset=self.train,
                           processing_class=tokenizer, reward_processing_classes=self.reward_processing_classes,
                           callbacks=list(self.callbacks) or None,
                           peft_config=config.lora_config() if config.use_lora else None)

    def measure(self, engine, trainer):
        from .evals.problems import pass_at_k

        config = self.config
        return pass_at_k(engine, self.test, k=config.pass_k, max_new_tokens=config.max_completion_length,
                         temperature=config.eval_temperature, batch_size=config.eval_batch_size, seed=config.seed)

    def save_extra(self, work: Path, model, tokenizer) -> None:
        plot_reward_curve(self.trainer.state.log_history, work / "reward_curve.png")
        shutil.rmtree(work / REFERENCE_DIR, ignore_errors=True)

    def stage_metrics(self) -> dict:
        config = self.config
        from .evals.problems import guess_accuracy

        logs = [h for h in self.trainer.state.log_history if h.get("reward") is not None]
        tenth = max(1, len(logs) // 10)

        def first_last(key: str) -> dict:
            values = [h[key] for h in logs if h.get(key) is not None]
            return {"first": sum(values[:tenth]) / len(values[:tenth]) if values else None,
                    "last": sum(values[-tenth:]) / len(values[-tenth:]) if values else None}

        reward, worked, length = first_last("reward"), first_last(WORKED_KEY), first_last("completions/mean_length")
        return {
            "k": config.pass_k,
            "reward_mean_first": reward["first"], "reward_mean_last": reward["last"],
            "rollout_worked_share_first": worked["first"], "rollout_worked_share_last": worked["last"],
            "rollout_mean_length_first": length["first"], "rollout_mean_length_last": length["last"],
            # the best constant answer's accuracy on the held-out problems: what guessing can earn
            "guess_accuracy": guess_accuracy(list(self.train["answer"]), list(self.test["answer"])),
            "problems": config.problems, "num_train_problems": len(self.train),
            "num_test_problems": len(self.test),
            **{f"skipped_{reason}": n for reason, n in sorted(self.skipped.items())},
            "skipped_rows": sum(self.skipped.values()),
            "reward_weights": dict(config.reward_weights), "num_generations": config.num_generations,
            "beta": config.beta, "loss_type": config.loss_type,
        }


def run(config: GRPOStageConfig) -> Path:
    """RL on verifiable problems from the starting model, and write RUN/grpo/."""
    import matplotlib  # noqa: F401 - needed for reward_curve.png at the end: fail before training, not after

    return GRPOStage(config).run()
