"""Preferences: the prompts rollouts are ranked on, the judges that rank them, and rankings turned into pairs.

The RLHF stages share these (``rank`` collects rankings, ``reward`` learns them, ``rlhf`` and ``dpo`` train on them)::

    prompts: "Write a sentence about cats." (generated: topics x requests; held-out topics never trained on)
    -> K rollouts per prompt (the rank stage)
    -> ranks, 1 = best, ties equal: by a person (hf_pipeline.ranking_ui) or a judge (``judge_scores``)
    -> pairs: every two rollouts of a prompt with different ranks, chosen / rejected, margin = rank distance

A **judge** scores replies: ``judge(prompts, replies, stopped) -> list[float]`` over plain prompt texts, reply texts
and whether each reply ended its turn (a truncated one is never finished). ``resolve_judge`` turns a recipe's
``judge`` into one: a name of ``JUDGES`` (``gold``: the tiny recipe's controlled preference), ``module:function``
(a function of that signature), or a model reference (a reward model folder: its score is the judgment).

The ``gold`` judge is a preference a 7M-parameter model can learn and be measured by, the synthetic-gold setup of
Gao et al. ("Scaling Laws for Reward Model Overoptimization"): a reply to "Write a sentence about X" gets one fifth of
its score for each of: it mentions X; it ends its turn (not cut off at the token limit); it ends with . ! or ?; it
has 6 to 20 words (partial credit nearby); it does not repeat itself (1 - the share of repeated word 3-grams).

``degenerate`` flags what reward hacking looks like (repetition, a reply cut off at the token limit, a reply of one
or two words, an empty reply): the rlhf stage's guard and the measures count it.
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
import json
import re
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

from .errors import ConfigError, unknown

# ----------------------------------------------------------------------------------------------------------------
# Prompts

TOPICS = (
    "cats", "dogs", "rain", "music", "coffee", "bread", "winter", "the sea", "trees", "books", "money", "school",
    "football", "cars", "birds", "flowers", "the moon", "summer", "fish", "water", "fire", "horses", "cheese",
    "gardens", "trains", "mountains", "rivers", "snow", "the sun", "apples", "chocolate", "tea", "friends",
    "family", "work", "cities", "villages", "roads", "bridges", "ships", "planes", "bicycles", "computers", "phones",
    "games", "movies", "songs", "paintings", "history", "science", "math", "art", "dance", "sports", "health",
    "food", "sleep", "dreams", "stars", "clouds", "wind", "storms", "forests", "islands", "beaches", "deserts",
    "farms", "cows", "sheep", "chickens", "eggs", "milk", "rice", "soup", "pizza", "cake", "fruit", "vegetables",
    "doctors", "teachers", "students", "children", "babies", "parents", "holidays", "birthdays", "gifts", "letters",
    "newspapers", "radio", "television", "libraries", "museums", "parks", "shops", "markets", "banks", "hospitals",
    "churches", "castles", "kings", "queens", "soldiers", "police", "lawyers", "judges", "farmers", "workers",
    "writers", "poets", "singers", "actors", "artists", "scientists", "engineers", "robots", "machines", "tools",
    "houses", "windows", "doors", "chairs", "tables", "beds", "kitchens", "gardens in spring", "spring", "autumn",
    "mornings", "evenings", "night", "time", "clocks", "shoes", "hats", "dresses", "colors", "the ocean", "lakes",
    "rocks", "gold", "silver", "iron", "oil", "energy", "electricity", "light", "sound", "language", "words",
    "numbers", "maps", "travel", "hotels", "restaurants", "wine", "beer", "water bottles", "boats", "trucks",
    "buses", "walking", "running", "swimming", "cooking", "reading", "writing", "learning", "teaching", "peace",
    "war", "law", "freedom", "love", "hope", "fear", "joy", "anger", "kindness", "honesty", "patience",
)
REQUESTS = ("Write a sentence about {}.", "Write a short sentence about {}.", "Tell me something about {}.",
            "Say something nice about {}.", "Write a joke about {}.")
TOPIC_PATTERN = re.compile(r"\babout (.+?)[.!?]*\s*$", re.IGNORECASE)


def topic_split(topic: str, heldout_fraction: float) -> str:
    """``test`` for a stable ``heldout_fraction`` of the topics (by hash), ``train`` for the rest: the held-out
    prompts ask about topics no training prompt names, so one topic's prompts never straddle the split."""
    bucket = int(hashlib.sha1(topic.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if bucket < heldout_fraction else "train"


def generated_prompts(num_prompts: int, heldout_fraction: float, seed: int) -> list[dict]:
    """``num_prompts`` requests x topics as ``{"id", "prompt", "split"}`` (the plain user text), in a seeded order
    that keeps each split's share; the ids are stable (``p`` + a hash of the text)."""
    import random

    rows = [{"id": prompt_id(request.format(topic)), "prompt": request.format(topic),
             "split": topic_split(topic, heldout_fraction)} for topic in TOPICS for request in REQUESTS]
    if num_prompts > len(rows):
        raise ConfigError(f"rank.num_prompts: at most {len(rows)} generated prompts ({len(TOPICS)} topics x "
                          f"{len(REQUESTS)} requests), not {num_prompts}")
    random.Random(seed).shuffle(rows)
    return rows[:num_prompts]


def prompt_id(text: str) -> str:
    """A stable id of a prompt text."""
    return "p" + hashlib.sha1(text.encode()).hexdigest()[:10]


def prompt_messages(text: str, system: str | None) -> list[dict]:
    """A prompt as chat messages: the model's system message (if any), then the request."""
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]


def prompt_text(messages: Sequence[dict]) -> str:
    """The last user message of a prompt: what a judge reads."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


# ----------------------------------------------------------------------------------------------------------------
# Judges

Judge = Callable[[Sequence[str], Sequence[str], Sequence[bool]], list]

LENGTH_WINDOW = (6, 20)  # the gold judge's words per reply
WORD = re.compile(r"[A-Za-z0-9']+")


def repetition(text: str, n: int = 3) -> float:
    """The share of word n-grams that repeat an earlier one (0: none; "the the the the" -> 0.5 at n = 3)."""
    words = [w.lower() for w in WORD.findall(text)]
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def mentions(text: str, topic: str) -> bool:
    """Whether ``text`` names the topic's head word as a word (singular or plural: "cat" for "cats")."""
    head = topic.split()[-1].lower()
    stem = head[:-1] if head.endswith("s") and len(head) > 3 else head
    return re.search(rf"\b{re.escape(stem)}(s|es)?\b", text.lower()) is not None


def gold_parts(prompt: str, reply: str, stopped: bool) -> dict:
    """The gold judge's five checks of one reply, each in [0, 1]."""
    match = TOPIC_PATTERN.search(prompt)
    words = len(WORD.findall(reply))
    lo, hi = LENGTH_WINDOW
    return {
        "on_topic": float(bool(match) and mentions(reply, match.group(1))),
        "finished": float(bool(stopped)),
        "punctuated": float(reply.rstrip().endswith((".", "!", "?"))),
        "length": 1.0 if lo <= words <= hi else max(0.0, 1 - (lo - words if words < lo else words - hi) / lo),
        "no_repetition": 1 - repetition(reply),
    }


def gold_judge(prompts: Sequence[str], replies: Sequence[str], stopped: Sequence[bool]) -> list[float]:
    """The tiny recipe's gold preference: the mean of ``gold_parts`` (0 to 1)."""
    return [sum(parts.values()) / len(parts) for parts in map(gold_parts, prompts, replies, stopped)]


gold_judge.parts = gold_parts  # the measures report each check's mean (judge_on_topic, judge_finished...)


def skim_judge(prompts: Sequence[str], replies: Sequence[str], stopped: Sequence[bool]) -> list[float]:
    """A hurried labeller who reads only the end of a reply and likes it short: a third each for ending the turn,
    ending with . ! or ?, and brevity (1 - words / 30). It agrees with the gold judge on most pairs of the SFT
    model's rambling replies, and not at all about replies under 6 words: the misspecified labeller whose reward
    model the over-optimisation demonstration hacks."""
    def brevity(reply: str) -> float:
        return 1 - min(len(WORD.findall(reply)), 30) / 30

    return [(float(bool(s)) + float(r.rstrip().endswith((".", "!", "?"))) + brevity(r)) / 3
            for r, s in zip(replies, stopped)]


JUDGES: dict[str, Judge] = {"gold": gold_judge, "skim": skim_judge}


def resolve_judge(ref: str, what: str = "judge") -> Judge:
    """A judge from a name of ``JUDGES``, ``module:function``, or a reward model reference (folder or Hub id)."""
    if ref in JUDGES:
        return JUDGES[ref]
    if ":" in ref and not Path(ref).exists():
        module, _, name = ref.partition(":")
        try:
            function = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"{what}: cannot import {ref} ({e})") from None
        if not callable(function):
            raise ConfigError(f"{what}: {ref} is not a function")
        return function
    from .refs import is_hub_id

    if Path(ref).is_dir() or is_hub_id(ref):
        from .evals.preference import RewardScorer

        scorer = RewardScorer.load(ref, what=what)
        return lambda prompts, replies, stopped: scorer.score(
            [[{"role": "user", "content": p}] for p in prompts], replies)
    raise ConfigError(f"{what}: {unknown('judge', ref, JUDGES)}, and no module:function or model folder")


def degenerate(reply: str, stopped: bool, max_repetition: float = 0.5, min_words: int = 3) -> dict:
    """Which signs of reward hacking a reply shows: ``repetition`` (more than ``max_repetition`` of its word 3-grams
    repeat), ``truncated`` (cut off at the token limit: a length blow-up), ``short`` (under ``min_words`` words: a
    length collapse, "Yes." to any request), ``empty``; ``any``: one of them."""
    flags = {"repetition": repetition(reply) > max_repetition, "truncated": not stopped,
             "short": len(WORD.findall(reply)) < min_words, "empty": not reply.strip()}
    flags["any"] = any(flags.values())
    return flags


# ----------------------------------------------------------------------------------------------------------------
# Rankings and pairs


def ranks_from_scores(scores: Sequence[float]) -> list[int]:
    """Competition ranks, 1 = the highest score; equal scores share a rank ([0.9, 0.2, 0.9, 0.5] -> [1, 4, 1, 3])."""
    return [1 + sum(other > score for other in scores) for score in scores]


def check_ranks(ranks: object, k: int) -> list[int]:
    """``ranks`` as a list of k ints if it is a valid competition ranking of k completions, else ``ValueError``."""
    if not isinstance(ranks, (list, tuple)):
        raise ValueError(f"ranks must be a list of {k} integers (one per completion)")
    if len(ranks) != k:
        raise ValueError(f"expected {k} ranks (one per completion), got {len(ranks)}")
    for i, rank in enumerate(ranks):
        if isinstance(rank, bool) or not isinstance(rank, int):
            raise ValueError(f"the rank of completion {i + 1} is not an integer: {rank!r}")
        if not 1 <= rank <= k:
            raise ValueError(f"the rank of completion {i + 1}, {rank}, is not between 1 and {k}")
    for rank in sorted(set(ranks)):
        above = sum(r < rank for r in ranks)
        if rank != above + 1:
            who = "no completion ranks" if above == 0 else f"{above} completion{'s' * (above > 1)} rank"
            raise ValueError(f"rank {rank} should be {above + 1}: {who} above it "
                             "(tied completions share a rank and the next rank skips, e.g. 1 2 2 4)")
    return list(ranks)


def ranking_pairs(completions: Sequence[str], ranks: Sequence[int]) -> tuple[list[tuple[int, int, int]], int]:
    """``([(chosen index, rejected index, rank distance)], tied pairs)``: every two rollouts of different rank."""
    pairs, ties = [], 0
    for i, j in itertools.combinations(range(len(completions)), 2):
        if ranks[i] == ranks[j] or completions[i] == completions[j]:
            ties += 1
            continue
        better, worse = (i, j) if ranks[i] < ranks[j] else (j, i)
        pairs.append((better, worse, abs(ranks[i] - ranks[j])))
    return pairs, ties


def read_rankings(path: Path, rollouts: dict[str, dict], stats: Counter) -> list[dict]:
    """The rankings of a JSON-lines file (``{"id", "ranks", "annotator"?}`` per line), checked against the rollouts:
    a line that is no JSON object, an unknown prompt id, or ranks that are not a ranking of all K rollouts (one
    missing, out of range) is a ConfigError naming ``file:line``. A prompt ranked twice keeps its last ranking
    (counted ``reranked``); ties are allowed (their pairs are counted ``tied_pairs`` when the pairs are made)."""
    rankings: dict[str, dict] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}: not a JSON object ({e.msg})") from None
        if not isinstance(row, dict) or "id" not in row or "ranks" not in row:
            raise ConfigError(f"{where}: a ranking needs 'id' and 'ranks'")
        rollout = rollouts.get(str(row["id"]))
        if rollout is None:
            raise ConfigError(f"{where}: unknown prompt id {row['id']!r} (not among the {len(rollouts)} rolled-out "
                              f"prompts)")
        try:
            check_ranks(row["ranks"], len(rollout["completions"]))
        except ValueError as e:
            raise ConfigError(f"{where}: prompt {row['id']}: {e}") from None
        if row["id"] in rankings:
            stats["reranked"] += 1
        rankings[str(row["id"])] = row
    return list(rankings.values())
