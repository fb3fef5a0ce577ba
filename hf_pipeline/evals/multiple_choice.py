"""Evaluation: multiple-choice knowledge (MMLU) scored by comparing the log-probabilities of the answer letters.

The standard MMLU protocol (Hendrycks et al., 2021): each question is shown as

    The following are multiple choice questions (with answers) about high school biology.

    <k solved examples from the dev split of the same subject, each ending "Answer: X">

    <question>
    A. <choice>
    B. <choice>
    C. <choice>
    D. <choice>
    Answer:

and the model's prediction is the letter whose continuation (" A", " B", " C" or " D") is most likely as the next
token(s). No text is generated, so a base model that never learned the format is still scored fairly; random guessing
gets 0.25. With ``chat=True`` the question is rendered through the tokenizer's chat template as a user message
(few-shot examples as earlier user/assistant turns) and the letter is the first thing the assistant says.

How a letter is tokenized depends on the tokenizer (" A" may be one token, or a space and a letter, or the space may
merge with the prompt's end), so the letter's tokens are taken as what ``prompt + letter`` has beyond ``prompt``;
a letter of several tokens is scored by the sum of their log-probabilities.

Sequences are batched with right padding: every real token keeps the position it has alone (no ``position_ids`` to
get right, whatever position encoding the model uses), and the causal mask keeps the padding after it out of view.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tqdm.auto import tqdm

from ..config import MIRROR_ENV, ConfigError

logger = logging.getLogger("hf_pipeline")

MMLU_ID = "cais/mmlu"
MMLU_CONFIG = "all"
LETTERS = "ABCDEFGHIJ"  # MMLU has four choices; the scorer accepts up to ten


# ----------------------------------------------------------------------------------------------------------------
# Data


def load_mmlu(
    mirror: str | None = None,
    split: str = "validation",
    subjects: Sequence[str] | None = None,
    limit: int | None = None,
):
    """MMLU (config ``all``) as a ``datasets.Dataset`` with columns question, subject, choices, answer (an index).

    ``mirror``: a folder laid out as ``<org>/<name>/`` (default: $HF_PIPELINE_MIRROR) tried before the Hub id
    ``cais/mmlu``. ``subjects`` keeps only those subjects; ``limit`` keeps the first ``limit`` rows after that.
    """
    from ..config import Source
    from ..refs import mirror_path, open_dataset

    mirror = mirror or os.environ.get(MIRROR_ENV) or None
    local = mirror_path(MMLU_ID, mirror)
    source = str(local) if local else MMLU_ID
    ds = open_dataset(Source(MMLU_ID, name=MMLU_CONFIG, split=split), mirror, what="mmlu")  # an unknown split: ConfigError
    if subjects:
        wanted = set(subjects)
        unknown = wanted - set(ds.unique("subject"))
        if unknown:
            raise ConfigError(f"mmlu: unknown subject(s) {', '.join(sorted(unknown))} in split '{split}'")
        ds = ds.filter(lambda batch: [s in wanted for s in batch["subject"]], batched=True)
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    logger.info("MMLU %s: %d questions from %s", split, len(ds), source)
    return ds


# ----------------------------------------------------------------------------------------------------------------
# Prompts


def _subject_name(subject: str) -> str:
    return subject.replace("_", " ")


def _answer_index(answer) -> int:
    """The answer as a choice index (the Hub rows hold an int; accept a letter too)."""
    if isinstance(answer, str):
        return LETTERS.index(answer.strip().upper())
    return int(answer)


def _question_block(row: dict) -> str:
    """The question and its lettered choices, without the trailing "Answer:"."""
    lines = [row["question"].strip()]
    lines += [f"{LETTERS[i]}. {choice}" for i, choice in enumerate(row["choices"])]
    return "\n".join(lines)


def format_mmlu_prompt(row: dict, few_shot_rows: Iterable[dict] = (), chat_tokenizer=None) -> str:
    """The MMLU prompt for ``row``, ending where the answer letter should come.

    Plain (``chat_tokenizer`` None): the standard header, each few-shot example followed by "Answer: X" and a blank
    line, then the question and "Answer:"; the continuation to score is " A", " B", ...
    Chat: one user turn per example answered by an assistant turn "X", then the question as a user message rendered
    with ``add_generation_prompt=True``; the continuation to score is "A", "B", ...
    """
    header = f"The following are multiple choice questions (with answers) about {_subject_name(row['subject'])}.\n\n"
    shots = list(few_shot_rows)
    if chat_tokenizer is None:
        parts = [header]
        for shot in shots:
            parts.append(f"{_question_block(shot)}\nAnswer: {LETTERS[_answer_index(shot['answer'])]}\n\n")
        parts.append(f"{_question_block(row)}\nAnswer:")
        return "".join(parts)

    if not getattr(chat_tokenizer, "chat_template", None):
        raise ConfigError("chat=True needs a tokenizer with a chat template")
    instruction = "\nAnswer with the letter of the correct choice."
    messages = []
    for i, shot in enumerate(shots):
        messages.append({"role": "user", "content": (header if i == 0 else "") + _question_block(shot) + instruction})
        messages.append({"role": "assistant", "content": LETTERS[_answer_index(shot["answer"])]})
    messages.append({"role": "user", "content": ("" if shots else header) + _question_block(row) + instruction})
    return chat_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


# ----------------------------------------------------------------------------------------------------------------
# Scoring


@dataclass
class _Request:
    """One sequence to run through the model, and the (position, token) pairs whose log-probs make each score."""

    question: int  # index of the question it belongs to
    input_ids: list[int]
    targets: dict[int, list[tuple[int, int]]]  # choice index -> [(position whose logits predict it, token id)]


def _letter_ids(tokenizer, prompts: list[str], letters: list[str], add_special_tokens: bool):
    """Per prompt: its token ids, and per letter the token ids that ``prompt + letter`` adds to them."""
    # verbose=False: a k-shot prompt may exceed the tokenizer's model_max_length; _requests cuts what is too long
    contexts = tokenizer(prompts, add_special_tokens=add_special_tokens, verbose=False)["input_ids"]
    continuations: list[list[list[int]]] = [[] for _ in prompts]
    for letter in letters:
        fulls = tokenizer([p + letter for p in prompts], add_special_tokens=add_special_tokens, verbose=False)
        fulls = fulls["input_ids"]
        for i, (context, full) in enumerate(zip(contexts, fulls)):
            if full[: len(context)] == context and len(full) > len(context):
                continuations[i].append(full[len(context) :])
            else:  # the letter merged with the end of the prompt: score the letter's own tokens after the prompt
                continuations[i].append(tokenizer(letter, add_special_tokens=False)["input_ids"])
    return contexts, continuations


def _requests(question: int, context: list[int], continuations: list[list[int]], max_length: int | None):
    """The sequences that score one question's choices: usually one.

    A sequence ``context + p`` scores every continuation ``c`` whose ``c[:-1]`` is a prefix of ``p``: its tokens are
    in the sequence and each is predicted from the position before it. So when every letter is a single token the
    prompt alone scores them all from its last position, and letters like [" ", "A"], [" ", "B"], [" C"] also share
    one sequence ``prompt + " "``. A sequence longer than ``max_length`` loses tokens from the left (the start of the
    prompt). Returns (requests, whether anything was cut).
    """
    groups: list[tuple[list[int], dict[int, list[int]]]] = []  # (p, {choice: continuation})
    for choice in sorted(range(len(continuations)), key=lambda i: -len(continuations[i])):
        c = continuations[choice]
        group = next((g for g in groups if g[0][: len(c) - 1] == c[:-1]), None)
        if group is None:
            group = (c[:-1], {})
            groups.append(group)
        group[1][choice] = c
    out, cut = [], False
    for p, conts in groups:
        ids = context + p
        excess = max(0, len(ids) - max_length) if max_length else 0
        cut |= excess > 0
        ids = ids[excess:]
        start = len(context) - excess  # where the continuations begin after the cut
        if start < 1:
            raise ConfigError(f"max_length {max_length} leaves no room for the prompt before the answer")
        # token j of a continuation sits at position start + j and is predicted from the position before it
        targets = {i: [(start + j - 1, tok) for j, tok in enumerate(c)] for i, c in conts.items()}
        out.append(_Request(question, ids, targets))
    return out, cut


def _run_requests(model, requests: list[_Request], batch_size: int, pad_id: int, show_progress: bool):
    """Log-prob sums per (question, choice). Batches are right-padded, so every real token keeps its position."""
    import torch

    scores: dict[tuple[int, int], float] = {}
    # longest first: similar lengths share a batch (less padding), and an out-of-memory error shows up at once
    order = sorted(range(len(requests)), key=lambda r: -len(requests[r].input_ids))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc="scoring choices", unit="batch", disable=not show_progress):
        width = max(len(requests[r].input_ids) for r in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for b, r in enumerate(batch):
            ids = requests[r].input_ids
            input_ids[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[b, : len(ids)] = 1
        logits = model(
            input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device), use_cache=False
        ).logits
        for b, r in enumerate(batch):
            request = requests[r]
            positions = sorted({pos for targets in request.targets.values() for pos, _ in targets})
            logprobs = torch.log_softmax(logits[b, positions].float(), dim=-1)  # only the rows we need
            row_of = {pos: k for k, pos in enumerate(positions)}
            for choice, targets in request.targets.items():
                total = sum(logprobs[row_of[pos], tok].item() for pos, tok in targets)
                scores[(request.question, choice)] = total
    return scores


def score_multiple_choice(
    model,
    tokenizer,
    dataset,
    k_shot: int = 0,
    batch_size: int = 8,
    chat: bool = False,
    few_shot_dataset=None,
    mirror: str | None = None,
    max_length: int | None = None,
    show_progress: bool = True,
) -> dict:
    """Score a causal LM on multiple-choice rows (question, subject, choices, answer) such as MMLU's.

    k_shot: solved examples per question, the first ``k_shot`` rows of the same subject in ``few_shot_dataset``
        (default: MMLU's dev split, loaded from ``mirror``).
    chat: render through the tokenizer's chat template (for SFT/RL models) instead of the plain prompt.
    max_length: sequences longer than this lose tokens from the left (default: the model's
        ``max_position_embeddings``, if its config has one).

    Returns accuracy, n, chance (0.25 for four choices), macro_accuracy (mean over subjects), per_subject
    ({subject: {"accuracy", "n"}}), predictions (choice indices), choice_logprobs, k_shot, chat and truncated
    (how many questions lost the start of their prompt).
    """
    import torch

    from ..metrics import load_metric

    rows = list(dataset)
    if not rows:
        raise ConfigError("score_multiple_choice: the dataset has no rows")
    if chat and not getattr(tokenizer, "chat_template", None):
        raise ConfigError("chat=True needs a tokenizer with a chat template")

    # Few-shot examples: the first k of the same subject, as in the original MMLU evaluation.
    shots_by_subject: dict[str, list[dict]] = defaultdict(list)
    if k_shot > 0:
        if few_shot_dataset is None:
            few_shot_dataset = load_mmlu(mirror, split="dev")
        for shot in few_shot_dataset:
            if len(shots_by_subject[shot["subject"]]) < k_shot:
                shots_by_subject[shot["subject"]].append(shot)

    # Prompts, and the token ids of each choice's letter after its prompt.
    chat_tokenizer = tokenizer if chat else None
    prompts = [format_mmlu_prompt(row, shots_by_subject.get(row["subject"], ()), chat_tokenizer) for row in rows]
    num_choices = len(rows[0]["choices"])
    if any(len(row["choices"]) != num_choices for row in rows) or num_choices > len(LETTERS):
        raise ConfigError(f"score_multiple_choice: every question needs the same number of choices (<= {len(LETTERS)})")
    letters = [letter if chat else " " + letter for letter in LETTERS[:num_choices]]
    # a chat template writes its own special tokens; a plain prompt gets the tokenizer's usual ones (e.g. BOS)
    contexts, continuations = _letter_ids(tokenizer, prompts, letters, add_special_tokens=not chat)

    if max_length is None:
        max_length = getattr(model.config, "max_position_embeddings", None)
    requests, truncated = [], 0
    for q, (context, conts) in enumerate(zip(contexts, continuations)):
        reqs, cut = _requests(q, context, conts, max_length)
        requests += reqs
        truncated += cut
    if truncated:
        logger.warning(
            "%d of %d prompts are longer than %d tokens: their start is cut", truncated, len(rows), max_length
        )

    pad_id = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            scores = _run_requests(model, requests, batch_size, pad_id, show_progress)
    finally:
        model.train(was_training)

    # Predictions, accuracy (through the shipped evaluate metric) and per-subject accuracy.
    choice_logprobs = [[scores[(q, c)] for c in range(num_choices)] for q in range(len(rows))]
    predictions = [max(range(num_choices), key=lambda c: lp[c]) for lp in choice_logprobs]
    references = [_answer_index(row["answer"]) for row in rows]
    result = load_metric("multiple_choice_accuracy").compute(
        predictions=predictions, references=references, num_choices=num_choices
    )
    by_subject: dict[str, list[bool]] = defaultdict(list)
    for row, p, r in zip(rows, predictions, references):
        by_subject[row["subject"]].append(p == r)
    per_subject = {s: {"accuracy": sum(hits) / len(hits), "n": len(hits)} for s, hits in sorted(by_subject.items())}
    macro = sum(v["accuracy"] for v in per_subject.values()) / len(per_subject)
    logger.info(
        "multiple choice: accuracy %.4f on %d questions (chance %.2f), %d-shot%s",
        result["accuracy"], result["n"], result["chance"], k_shot, ", chat" if chat else "",
    )
    return {
        "accuracy": result["accuracy"],
        "n": result["n"],
        "chance": result["chance"],
        "macro_accuracy": macro,
        "per_subject": per_subject,
        "predictions": predictions,
        "choice_logprobs": choice_logprobs,
        "k_shot": k_shot,
        "chat": chat,
        "truncated": truncated,
    }
