"""RLHF stage: RL against the reward model (TRL ``GRPOTrainer``), with a guard against reward hacking.

    prompts: the preference data's training prompts (RUN/rank by default); held-out prompts for the judge
    -> the SFT model (RUN/sft) judged on held-out prompts: the judge's score (never trained on: the gold labeller, or
       a reward model trained on other pairs), the proxy reward model's score, degenerate replies
    -> GRPOTrainer: per prompt, num_generations rollouts; reward = the reward model's score (RUN/reward) plus
       unfinished_penalty for a rollout cut off at the token limit (the reward model would read it as finished: the
       chat template closes the turn); such rollouts get no gradient (mask_truncated_completions); KL to the SFT
       model (beta)
    -> the guard, every guard_steps steps: the policy's replies on guard_prompts held-out prompts, scored by the
       judge and the proxy, degenerate replies counted; the weights with the best judge score are kept; the run
       stops when the judge stays below its best while the proxy stays above its value there (patience checks):
       the proxy is being hacked (Gao et al., "Scaling Laws for Reward Model Overoptimization")
    -> the kept weights, judged as the start was, win rate against the start -> RUN/rlhf/

Usage::

    hf-pipeline rlhf --config recipes/tiny.yaml --output_dir runs/tiny
    hf-pipeline rlhf --config recipes/tiny.yaml --output_dir runs/tiny-overopt --beta 0 --learning_rate 3e-4 \\
        --max_steps 300 --guard false        # over-optimisation on purpose: the proxy rises, the judge falls

A killed run resumes from its last checkpoint; its guard starts again at the resumed step (the earlier checks and
the weights they kept are not carried over: the kept weights are held in memory).

Written: metrics.json (judge_score_before/after, proxy_reward_*, degenerate_share_* and its parts, mean_tokens_*,
win_rate (kept policy vs start, judged per held-out prompt, ties half), guard_best_step, guard_stopped_step,
guard_stop_reason), guard.json (every check), judge_curve.png (proxy and judge over the steps, degenerate share and
length), samples.json, log_history.json, the model folder.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

from .config import RLHFStageConfig
from .evals.preference import JudgedMeasures
from .grpo import GRPOStage

logger = logging.getLogger("hf_pipeline")


def unfinished_reward(stop_ids: set[int], penalty: float):
    """A TRL reward function: ``penalty`` for a completion whose last token ends no turn (cut off), else 0."""
    def unfinished(completion_ids, **kwargs) -> list[float]:
        return [0.0 if ids and ids[-1] in stop_ids else penalty for ids in completion_ids]

    return unfinished


def proxy_hacked(history: list[dict], patience: int) -> bool:
    """Whether the last ``patience`` checks all come after the best-judged one, each with the judge below that best
    and the proxy above its value there: the policy is climbing the proxy away from what the judge wants."""
    best = max(history, key=lambda point: point["judge_score"])  # the first of equal scores
    recent = history[-patience:]
    return (len(history) > patience and all(p["step"] > best["step"] for p in recent)
            and all(p["judge_score"] < best["judge_score"] and p["proxy_reward"] > best["proxy_reward"]
                    for p in recent))


class JudgeGuard:
    """A ``TrainerCallback`` (built by ``make``): the judge and the proxy on held-out prompts every ``every`` steps;
    keeps the best-judged weights (in memory) and stops the training when the proxy is being hacked."""

    @staticmethod
    def make(stage: "RLHFStage"):
        from transformers import TrainerCallback

        class Guard(JudgeGuard, TrainerCallback):  # its hooks before the base class's no-ops
            pass

        return Guard(stage)

    def __init__(self, stage: "RLHFStage"):
        config = stage.config
        self.stage, self.every, self.patience, self.active = stage, config.guard_steps, config.patience, config.guard
        self.history: list[dict] = []
        self.best: dict | None = None
        self.best_state = None
        self.stop: dict | None = None

    def check(self, model, step: int, control=None) -> dict:
        import numpy as np
        import torch

        states = random.getstate(), np.random.get_state(), torch.get_rng_state()  # the training's sampling goes on
        was_training = model.training
        try:
            metrics, rows = self.stage.judge(model, self.stage.guard_prompts, samples=1)
        finally:
            model.train(was_training)
            random.setstate(states[0]), np.random.set_state(states[1]), torch.set_rng_state(states[2])
        point = {"step": step, **metrics, "examples": [row["replies"][0] for row in rows[:3]]}  # what it writes
        self.history.append(point)
        if self.best is None or point["judge_score"] > self.best["judge_score"]:
            self.best = point
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        hacked = proxy_hacked(self.history, self.patience)
        logger.info("rlhf: guard at step %d: judge %.3f, proxy %.3f, degenerate %.2f, %.1f tokens (best judge %.3f "
                    "at step %d)%s", step, point["judge_score"], point["proxy_reward"], point["degenerate_share"],
                    point["mean_tokens"], self.best["judge_score"], self.best["step"],
                    " -> the proxy is being hacked" if hacked else "")
        if hacked and self.stop is None:
            self.stop = {"step": step, "reason": f"judge below its best (step {self.best['step']}) while the proxy "
                                                  f"rose, {self.patience} checks in a row"}
            if self.active and control is not None:
                control.should_training_stop = True
        return point

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not self.history:
            self.check(model, state.global_step)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            self.check(model, state.global_step, control)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.history and self.history[-1]["step"] != state.global_step:
            self.check(model, state.global_step, control)


def plot_judge_curve(history: list[dict], best: dict, stop: dict | None, path: Path, stopped: bool = True) -> None:
    """judge_curve.png: the proxy reward and the judge's score over the steps (the kept check, and where the guard's
    rule was met: the run stopped there when ``stopped``), and the share of degenerate replies with their length."""
    from matplotlib.figure import Figure

    steps = [h["step"] for h in history]
    fig = Figure(figsize=(11, 4), dpi=100)
    ax, ax_degen = fig.subplots(1, 2)
    ax.plot(steps, [h["judge_score"] for h in history], color="tab:green", marker="o", label="judge (held out)")
    ax.set(xlabel="step", ylabel="judge score", title="proxy reward vs judge on held-out prompts")
    proxy = ax.twinx()
    proxy.plot(steps, [h["proxy_reward"] for h in history], color="tab:blue", marker="s", label="proxy reward")
    proxy.set_ylabel("proxy reward (reward model)")
    ax.axvline(best["step"], color="tab:green", linestyle="--", alpha=0.6, label=f"kept (step {best['step']})")
    if stop:
        said = "guard stopped the run" if stopped else "guard rule met (guard off)"
        ax.axvline(stop["step"], color="tab:red", linestyle=":", label=f"{said} (step {stop['step']})")
    lines = ax.get_legend_handles_labels()[0] + proxy.get_legend_handles_labels()[0]
    proxy.legend(lines, [line.get_label() for line in lines], fontsize=8, loc="center right", framealpha=0.9)
    ax.grid(alpha=0.3)
    ax_degen.plot(steps, [h["degenerate_share"] for h in history], color="tab:red", label="degenerate share")
    ax_degen.set(xlabel="step", ylabel="share", ylim=(-0.02, 1.02), title="degenerate replies and length")
    length = ax_degen.twinx()
    length.plot(steps, [h["mean_tokens"] for h in history], color="tab:gray", label="mean tokens")
    length.set_ylabel("mean tokens")
    lines = ax_degen.get_legend_handles_labels()[0] + length.get_legend_handles_labels()[0]
    length.legend(lines, [line.get_label() for line in lines], fontsize=8, loc="center right", framealpha=0.9)
    ax_degen.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")


class RLHFStage(JudgedMeasures, GRPOStage):
    """GRPOTrainer against the reward model, guarded by the judge; measures: judge, proxy, degenerate, win rate."""

    def load_data(self, tokenizer) -> None:
        from .engine import stop_token_ids
        from .evals.preference import RewardScorer, heldout_prompts
        from .preferences import resolve_judge
        from .reward_model import preference_splits
        from collections import Counter

        config = self.config
        train, test = preference_splits(config, Counter())
        self.train = _unique_prompts(train).shuffle(seed=config.seed)
        held_out = heldout_prompts(test, -1, config.seed)
        self.eval_prompts = held_out if config.judge_prompts < 0 else held_out[:config.judge_prompts]
        self.guard_prompts = held_out[:config.guard_prompts]
        self.generation = config.max_completion_length, config.temperature
        self.scorer = RewardScorer.load(config.input_ref("reward_model"), what="rlhf.reward_model")
        self.judge_fn = resolve_judge(config.judge, what="rlhf.judge")
        stops = set(stop_token_ids(self.scorer.model, tokenizer)) | {tokenizer.pad_token_id}
        self.reward_funcs = [self.scorer.model, unfinished_reward(stops, config.unfinished_penalty)]
        self.reward_weights = [1.0, 1.0]
        self.reward_processing_classes = [self.scorer.tokenizer, None]
        self.guard = JudgeGuard.make(self)
        self.callbacks = (self.guard,)
        logger.info("rlhf: %d training prompts, %d held-out prompts judged (%d by the guard every %d steps); proxy "
                    "%s, judge %s", len(self.train), len(self.eval_prompts), len(self.guard_prompts),
                    config.guard_steps, config.input_ref("reward_model"), config.judge)

    def after_train(self, trainer) -> None:
        guard = self.guard
        if guard.best is not None and guard.best_state is not None and guard.best["step"] != trainer.state.global_step:
            trainer.model.load_state_dict(guard.best_state)
            logger.info("rlhf: kept the weights of step %d (best judge score %.3f), not those of step %d",
                        guard.best["step"], guard.best["judge_score"], trainer.state.global_step)

    def save_extra(self, work: Path, model, tokenizer) -> None:
        from .artifacts import write_json

        guard = self.guard
        write_json(work / "guard.json", {"checks": guard.history, "best": guard.best, "stop": guard.stop})
        plot_judge_curve(guard.history, guard.best, guard.stop, work / "judge_curve.png", self.config.guard)
        super().save_extra(work, model, tokenizer)

    def stage_metrics(self) -> dict:
        config, guard = self.config, self.guard
        return {
            **self.judged_metrics(),
            "guard_checks": len(guard.history), "guard_best_step": guard.best["step"] if guard.best else None,
            "guard_stopped_step": guard.stop["step"] if guard.stop and config.guard else None,
            "guard_stop_reason": guard.stop["reason"] if guard.stop else None,
            "guard": config.guard, "reward_model": config.input_ref("reward_model"), "prompts_train": len(self.train),
            "num_generations": config.num_generations, "beta": config.beta,
            "unfinished_penalty": config.unfinished_penalty,
        }


def _unique_prompts(pairs):
    """One row per prompt (``prompt`` messages, ``prompt_id``) of a pairs dataset."""
    seen = set()
    return pairs.select([i for i, pid in enumerate(pairs["prompt_id"]) if not (pid in seen or seen.add(pid))]) \
        .select_columns(["prompt", "prompt_id"])


def run(config: RLHFStageConfig) -> Path:
    """RL against the reward model, guarded by the judge, and write RUN/rlhf/."""
    import matplotlib  # noqa: F401 - needed for judge_curve.png at the end: fail before training, not after

    return RLHFStage(config).run()
