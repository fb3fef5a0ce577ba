"""Preference measures: reward models scored on held-out pairs, policies judged on held-out prompts.

    RewardScorer            a sequence-classification reward model: the score of (prompt, reply) conversations,
                            read at the last real token (the pad token is distinct from the end token)
    pairwise_accuracy       share of held-out pairs whose chosen reply scores above the rejected one, mean margin
    judge_policy            replies sampled on held-out prompts, scored by a judge (the gold preference) and
                            optionally the proxy reward model; degenerate replies counted (repetition, truncation)
    win_rate                per prompt, one model's judged replies against another's (ties count half)

The reward, rlhf and dpo stages call these on the model they train; the same functions score any reward model.
"""

from __future__ import annotations

import logging
from statistics import mean
from typing import Sequence

from ..errors import ConfigError

logger = logging.getLogger("hf_pipeline")


class RewardScorer:
    """A reward model and its tokenizer: ``score(prompts, replies)`` renders each prompt (chat messages) with the
    reply as the assistant's turn by the tokenizer's chat template and returns the model's score."""

    def __init__(self, model, tokenizer, batch_size: int = 32, max_length: int = 1024):
        self.model, self.tokenizer, self.batch_size, self.max_length = model, tokenizer, batch_size, max_length

    @classmethod
    def load(cls, ref: str, what: str = "reward_model") -> "RewardScorer":
        from ..refs import resolve_model

        model, tokenizer = load_reward_model(resolve_model(ref), what)
        return cls(model.eval(), tokenizer)

    def texts(self, prompts: Sequence[list], replies: Sequence[str]) -> list[str]:
        return [self.tokenizer.apply_chat_template(list(p) + [{"role": "assistant", "content": r}], tokenize=False)
                for p, r in zip(prompts, replies)]

    def score(self, prompts: Sequence[list], replies: Sequence[str]) -> list[float]:
        import torch

        texts, scores = self.texts(prompts, replies), []
        sides = self.tokenizer.padding_side, self.tokenizer.truncation_side
        # padded after the reply; a long conversation loses its beginning, never the reply being scored
        self.tokenizer.padding_side, self.tokenizer.truncation_side = "right", "left"
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(texts[start:start + self.batch_size], return_tensors="pt", padding=True,
                                       truncation=True, max_length=self.max_length, add_special_tokens=False)
                with torch.inference_mode():
                    logits = self.model(**batch.to(self.model.device)).logits
                scores += logits[:, 0].float().tolist()
        finally:
            self.tokenizer.padding_side, self.tokenizer.truncation_side = sides
            self.model.train(was_training)
        return scores


def load_reward_model(path: str, what: str):
    """``(model, tokenizer)``: a sequence-classification model with one score (a causal LM folder gets a fresh score
    head), float32, on the accelerator if there is one; its pad token checked (``check_pad_token``)."""
    import os

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{what}: cannot load a reward model from {path} ({str(e).splitlines()[0][:200]})") from None
    check_pad_token(model, tokenizer, what)
    if torch.cuda.is_available():
        model.to(f"cuda:{os.environ.get('LOCAL_RANK', 0)}")
    return model, tokenizer


def check_pad_token(model, tokenizer, what: str) -> None:
    """A reward model reads its score at the last token that is not the pad token: with pad == EOS that is the
    first EOS (transformers #35352). The pad token must exist, differ from the end token, and be the model's."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    if pad is None or pad == eos:
        raise ConfigError(f"{what}: the tokenizer's pad token ({tokenizer.pad_token!r}) must exist and differ from "
                          f"its end token ({tokenizer.eos_token!r}): the reward is read at the last non-pad token")
    model.config.pad_token_id = pad
    assert model.config.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id


def pairwise_accuracy(scorer: RewardScorer, pairs) -> dict:
    """``accuracy`` (chosen scored above rejected; a tie counts half), ``margin`` (mean chosen - rejected score),
    ``reward_mean`` and ``pairs`` over a dataset of ``prompt``/``chosen``/``rejected`` message lists."""
    if len(pairs) == 0:
        return {"accuracy": None, "margin": None, "reward_mean": None, "pairs": 0}
    prompts = list(pairs["prompt"])
    chosen = scorer.score(prompts, [c[-1]["content"] for c in pairs["chosen"]])
    rejected = scorer.score(prompts, [r[-1]["content"] for r in pairs["rejected"]])
    wins = [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected)]
    return {"accuracy": mean(wins), "margin": mean(c - r for c, r in zip(chosen, rejected)),
            "reward_mean": mean(chosen + rejected), "pairs": len(wins)}


def judge_policy(engine, prompts: Sequence[list], judge, scorer: RewardScorer | None = None, samples: int = 1,
                 max_new_tokens: int = 48, temperature: float = 1.0, seed: int = 0, batch_size: int = 64,
                 keep_samples: int = 8) -> tuple[dict, list]:
    """Sample ``samples`` replies per held-out prompt (chat messages) and judge them.

    Returns ``(metrics, rows)``: ``judge_score`` (mean judge score), ``proxy_reward`` (mean reward model score, with
    a scorer), ``degenerate_share`` and its parts (``repetition_share``, ``truncated_share``, ``short_share``,
    ``empty_share``),
    ``mean_tokens``, ``judge_<check>`` (a judge with ``parts``: each check's mean), ``distinct_share`` (distinct
    replies / replies: 1 / n when one reply answers everything);
    ``rows`` holds per prompt its replies and scores (``prompt``, ``replies``, ``judge``), for
    ``win_rate``; the first ``keep_samples`` become the stage's samples.
    """
    from ..engine import SamplingParams
    from ..preferences import degenerate, prompt_text

    conversations = [list(p) for p in prompts for _ in range(samples)]
    out = engine.reply(conversations, SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature,
                                                     seed=seed), batch_size=batch_size)
    replies, stopped = [o["reply"] for o in out], [o["stopped"] for o in out]
    texts = [prompt_text(c) for c in conversations]
    scores = [float(s) for s in judge(texts, replies, stopped)]
    proxy = scorer.score(conversations, replies) if scorer else None
    flags = [degenerate(r, s) for r, s in zip(replies, stopped)]
    parts = getattr(judge, "parts", None)  # a judge made of checks (gold): the share of replies passing each
    parts = [parts(*row) for row in zip(texts, replies, stopped)] if parts else []
    metrics = {
        "judge_score": mean(scores),
        **({"proxy_reward": mean(proxy)} if proxy else {}),
        "degenerate_share": mean(f["any"] for f in flags),
        **{f"{kind}_share": mean(f[kind] for f in flags) for kind in ("repetition", "truncated", "short", "empty")},
        "mean_tokens": mean(o["tokens"] for o in out),
        # mode collapse: the same reply whatever the prompt (a policy that found one reply the proxy likes)
        "distinct_share": len(set(replies)) / len(replies),
        **{f"judge_{name}": mean(p[name] for p in parts) for name in (parts[0] if parts else {})},
    }
    rows = [{"prompt": texts[i * samples], "replies": replies[i * samples:(i + 1) * samples],
             "judge": scores[i * samples:(i + 1) * samples],
             **({"proxy": proxy[i * samples:(i + 1) * samples]} if proxy else {})} for i in range(len(prompts))]
    return metrics, rows


def win_rate(rows, baseline_rows) -> float | None:
    """Share of prompts where ``rows``' mean judge score beats ``baseline_rows``' (a tie counts half)."""
    base = {row["prompt"]: mean(row["judge"]) for row in baseline_rows}
    results = [1.0 if mean(r["judge"]) > base[r["prompt"]] else 0.5 if mean(r["judge"]) == base[r["prompt"]] else 0.0
               for r in rows if r["prompt"] in base]
    return mean(results) if results else None


class JudgedMeasures:
    """The measures of a stage that trains a policy on preferences (rlhf, dpo): replies on held-out prompts judged
    (``judge_policy``), before and after; ``win_rate`` of the trained model against the start in
    ``judged_metrics``. The lifecycle sets ``tokenizer``; the stage sets ``judge_fn``, ``scorer`` (or None),
    ``eval_prompts`` and ``generation`` (``max_new_tokens``, ``temperature``)."""

    scorer = None

    def judge(self, model, prompts, samples: int) -> tuple[dict, list]:
        from ..engine import Engine

        model.eval()
        max_new_tokens, temperature = self.generation
        return judge_policy(Engine(model, self.tokenizer), prompts, self.judge_fn, self.scorer, samples=samples,
                            max_new_tokens=max_new_tokens, temperature=temperature, seed=self.config.seed)

    def measure(self, engine, trainer):
        metrics, rows = self.judge(engine.model, self.eval_prompts, samples=self.config.judge_samples)
        if trainer is not None:  # the trained model (the start is measured before the trainer exists)
            self.after_rows = rows
        return metrics, rows

    def judged_metrics(self) -> dict:
        return {"win_rate": win_rate(self.after_rows, self.baseline["samples"]), "judge": self.config.judge,
                "prompts_judged": len(self.eval_prompts), "judge_samples": self.config.judge_samples}


def heldout_prompts(test_pairs, limit: int, seed: int) -> list:
    """The distinct prompts (chat messages) of held-out pairs, shuffled by ``seed``, the first ``limit`` (-1: all)."""
    import random

    seen, prompts = set(), []
    for pid, prompt in zip(test_pairs["prompt_id"], test_pairs["prompt"]):
        if pid not in seen:
            seen.add(pid)
            prompts.append(prompt)
    random.Random(seed).shuffle(prompts)
    return prompts if limit < 0 else prompts[:limit]
