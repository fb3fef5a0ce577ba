"""Judging a free-form answer against reference answers, and telling a refusal from an answer.

The rule judges are the SQuAD v1.1 official script's (``huggingface/evaluate`` ``metrics/squad``): answers are
normalised (lower case, punctuation removed, the articles a/an/the removed, whitespace collapsed), then

    exact_match   the normalised reply equals a normalised reference
    f1            token-bag overlap with the best reference (precision and recall of the reply's words)
    match         a normalised reference appears in the normalised reply, on word boundaries (Alignment for
                  Honesty's "loosely correct": a chat reply says "Ilvo Dranmek was born in Quistor.", not "Quistor")

each scored as the best over the references. A reply is a **refusal** when it contains the one refusal sentence
(normalised), so that refusals are detected exactly; it is **informative** when it is neither empty, nor a refusal,
nor degenerate (more than half of its word 3-grams repeats). A refusal or an empty reply is never a wrong answer: it
is uninformative (Llama 3's informativeness score).

``ModelJudge`` asks a chat model (any model reference) whether a reply answers the question as the reference does,
with a prompt of its own (``{question}``, ``{reference}``, ``{reply}``); a verdict starting with "yes" is correct. A
judge that fails (an error, an unreadable verdict) returns None: the caller counts it under ``judge_error``.
"""

from __future__ import annotations

import re
import string
from collections import Counter

from ..config import JUDGES, MODEL_JUDGE_PROMPT, REFUSAL  # the defaults a probe config shows

_PUNCTUATION = set(string.punctuation) | set("‘’´`“”")


def reference_answers(value) -> list[str]:
    """A reference column as a list of strings: a string, a list, or SQuAD's ``{"text": [...], ...}``."""
    if isinstance(value, dict):
        value = value.get("text")
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        return []
    return [v.strip() for v in value if isinstance(v, str) and v.strip()]


def question_rows(source, mirror: str | None, stats: Counter, question_column: str = "question",
                  answer_column: str | None = None, context_column: str | None = None,
                  what: str = "questions") -> list[dict]:
    """``{id, question, answers, answer_prefix, exposure}`` rows of a question/answer dataset (any source
    ``refs.open_dataset`` opens). ``answer_column`` defaults to ``answers``, else ``answer``; a row without a question,
    an answer or (with ``context_column``) a passage is skipped and counted in ``stats`` under its reason."""
    from ..errors import ConfigError
    from ..refs import open_dataset

    ds = open_dataset(source, mirror, what=what)
    label, columns = getattr(source, "path", source), ds.column_names
    answer_column = answer_column or next((c for c in ("answers", "answer") if c in columns), None)
    if answer_column is None:
        raise ConfigError(f"{what}: '{label}' has no answers/answer column (columns: {', '.join(columns)}); "
                          f"set answer_column")
    for name in (question_column, answer_column, context_column):
        if name is not None and name not in columns:
            raise ConfigError(f"{what}: '{label}' has no column '{name}' (columns: {', '.join(columns)})")
    rows = []
    for i, row in enumerate(ds):
        question, answers = row[question_column], reference_answers(row[answer_column])
        if not isinstance(question, str) or not question.strip():
            stats["skipped_no_question"] += 1
        elif not answers:
            stats["skipped_no_answer"] += 1
        elif context_column and not (row[context_column] or "").strip():
            stats["skipped_empty_context"] += 1
        else:
            prefix = row.get("answer_prefix")
            rows.append({"id": str(row.get("id") or f"{label}:{i}"), "question": question.strip(),
                         "answers": answers, "answer_prefix": prefix if isinstance(prefix, str) else "",
                         "exposure": row.get("exposure")})
    return rows


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(reply: str, references: list[str]) -> float:
    norm = normalize_answer(reply)
    return float(any(norm == normalize_answer(ref) for ref in references))


def f1(reply: str, references: list[str]) -> float:
    """The best token-level F1 over the references (SQuAD)."""
    words = normalize_answer(reply).split()
    best = 0.0
    for ref in references:
        ref_words = normalize_answer(ref).split()
        common = sum((Counter(words) & Counter(ref_words)).values())
        if common:
            precision, recall = common / len(words), common / len(ref_words)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def has_match(reply: str, references: list[str]) -> bool:
    """A normalised reference inside the normalised reply, on word boundaries ("1" does not match "10")."""
    norm = f" {normalize_answer(reply)} "
    return any(ref_norm and f" {ref_norm} " in norm for ref_norm in (normalize_answer(ref) for ref in references))


def is_refusal(reply: str, refusal: str = REFUSAL) -> bool:
    target = normalize_answer(refusal)
    return bool(target) and target in normalize_answer(reply)


def degenerate(reply: str, n: int = 3) -> bool:
    """More than half of the reply's word n-grams repeat an earlier one (a loop)."""
    words = normalize_answer(reply).split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return len(grams) >= 4 and len(set(grams)) < len(grams) / 2


def informative(reply: str, refusal: str = REFUSAL) -> bool:
    return bool(normalize_answer(reply)) and not is_refusal(reply, refusal) and not degenerate(reply)


def rule_scores(reply: str, references: list[str], refusal: str = REFUSAL) -> dict:
    """Every rule measure of one reply."""
    return {"match": has_match(reply, references), "exact_match": exact_match(reply, references),
            "f1": round(f1(reply, references), 4), "refusal": is_refusal(reply, refusal),
            "informative": informative(reply, refusal)}


class Judge:
    """Correct or not: ``judge(question, references, reply) -> bool | None`` (None: the judge failed)."""

    def __init__(self, kind: str = "match", f1_threshold: float = 0.5, refusal: str = REFUSAL,
                 model: str | None = None, prompt: str = MODEL_JUDGE_PROMPT):
        from ..errors import ConfigError, unknown

        if kind not in JUDGES:
            raise ConfigError(f"judge: {unknown('judge', kind, JUDGES)}")
        if kind == "model" and not model:
            raise ConfigError("judge_model: the model judge needs a model reference")
        self.kind, self.f1_threshold, self.refusal = kind, f1_threshold, refusal
        self.engine = None
        if kind == "model":
            from ..engine import Engine

            self.engine, self.prompt = Engine.load(model, chat=True), prompt

    def scores(self, question: str, references: list[str], replies: list[str]) -> list[dict]:
        """The rule measures of each reply, with ``correct`` (bool, or None where the judge failed)."""
        out = [rule_scores(reply, references, self.refusal) for reply in replies]
        if self.kind == "model":
            verdicts = self._ask_model(question, references, replies, out)
        for i, row in enumerate(out):
            if not row["informative"]:
                row["correct"] = False  # a refusal or an empty reply is not an answer (nor a wrong one)
            elif self.kind == "match":
                row["correct"] = row["match"]
            elif self.kind == "exact_match":
                row["correct"] = bool(row["exact_match"])
            elif self.kind == "f1":
                row["correct"] = row["f1"] >= self.f1_threshold
            else:
                row["correct"] = verdicts[i]
        return out

    def _ask_model(self, question, references, replies, rows) -> list[bool | None]:
        from ..engine import SamplingParams

        asks = [i for i, row in enumerate(rows) if row["informative"]]
        verdicts: list[bool | None] = [None] * len(replies)
        try:
            conversations = [[{"role": "user", "content": self.prompt.format(
                question=question, reference=" / ".join(references), reply=replies[i])}] for i in asks]
            answers = self.engine.reply(conversations, SamplingParams(max_new_tokens=8)) if asks else []
        except Exception:  # a judge that errors: every verdict of this question is unknown, counted by the caller
            return verdicts
        for i, answer in zip(asks, answers):
            word = normalize_answer(answer["reply"]).split()[:1]
            verdicts[i] = {"yes": True, "no": False}.get(word[0] if word else "", None)
        return verdicts
