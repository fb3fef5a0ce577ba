"""Probe stage: find out what a model knows, and write "I don't know" training data where it does not.

The method of Llama 3 (section 4.3.6, "Factuality") with the defaults of Alignment for Honesty (Yang et al. 2023):

    questions with reference answers (the facts stage's probe split; SQuAD, NQ-open or any question/answer dataset)
    -> ask the start model each question num_samples times at temperature 1 (and once greedily)
    -> judge every answer against the references (hf_pipeline.evals.qa: match / exact_match / f1 / a model judge;
       a refusal or an empty answer is uninformative, never wrong)
    -> per question: accuracy = correct / judged samples; known when accuracy >= known_threshold
    -> conversations: a known question is answered with the model's own most frequent right answer (never the
       reference: training a model on facts it does not know teaches it to make facts up, Gekhman et al. 2024), an
       unknown one with the refusal sentence; refusal_share sets the mix
    -> RUN/probe/: a DatasetDict (``train``: ``messages`` plus id, label, accuracy, exposure; ``labels``: every
       probed question with its samples and verdicts), stats.json (known/unknown per exposure level, judge counts,
       skipped rows by reason), metrics.json, config.yaml

The SFT stage reads the ``train`` split (``sft.probe_data: RUN/probe``). How the question is asked follows the model:
a model with ``chat_config.json`` (an SFT model) gets a chat turn; a base model a few-shot prompt (``num_shots``
questions of the set, with their answers, then ``Q: question\\nA:``), continued after the question's
``answer_prefix`` where the dataset has one (the facts stage's "Ilvo Dranmek was born in"), so that the answer is the
sentence the model completed ("Ilvo Dranmek was born in Quistor."), cut at the end of the first line and of the
first sentence.

Results are appended to ``RUN/probe.incomplete/progress.jsonl`` as they come: a killed run resumes where it stopped
(with the settings it recorded, else it refuses, naming them).
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections import Counter, defaultdict
from pathlib import Path

from .config import ConfigError, ProbeConfig, config_to_dict

logger = logging.getLogger("hf_pipeline")

PROGRESS = "progress.jsonl"
QUESTIONS_PER_CHUNK = 16  # questions sampled together (x num_samples rows), then written to progress.jsonl


def load_questions(config: ProbeConfig, stats: Counter) -> list[dict]:
    """The question rows of every source (``evals.qa.question_rows``), a random ``limit`` of them."""
    from .evals.qa import question_rows

    rows = []
    for source in config.questions:
        rows += question_rows(source, config.mirror, stats, config.question_column, config.answer_column,
                              config.context_column, what="probe.questions")
    if config.limit >= 0:  # a random subset (the facts stage's splits are ordered by exposure level)
        rows = random.Random(config.seed).sample(rows, min(config.limit, len(rows)))
    return rows


def first_sentence(text: str) -> str:
    """The answer part of a continuation: up to the first line break, then up to the first sentence end."""
    text = text.strip().split("\n")[0]
    match = re.search(r"[.!?](\s|$)", text)
    return (text[:match.end()] if match else text).strip()


class Prober:
    """Asks questions of one model the way it is used (chat turn, or few-shot prompt for a base model)."""

    def __init__(self, engine, config: ProbeConfig, shots: list[dict]):
        self.engine, self.config = engine, config
        mode = config.prompt
        if mode == "auto":
            mode = "chat" if engine.chat_config else "base"
        if mode == "chat" and not getattr(engine.tokenizer, "chat_template", None):
            raise ConfigError("probe.prompt: chat, but the model's tokenizer has no chat template")
        self.mode = mode
        system = config.system_message if config.system_message is not None else engine.chat_config.get(
            "system_message")
        self.system = system or None
        self.shots = "".join(f"Q: {s['question']}\nA: {self._lead(s)}{s['answers'][0]}.\n\n" for s in shots)

    @staticmethod
    def _lead(row: dict) -> str:
        return f"{row['answer_prefix']} " if row.get("answer_prefix") else ""

    def ask(self, rows: list[dict], sampling) -> list[str]:
        """One answer per row: the answer sentence (with the base prompt's answer_prefix, which the model
        completed: "Ilvo Dranmek was born in Quistor.")."""
        if self.mode == "chat":  # as the honesty evaluation asks, with this probe's sampling
            from .evals.honesty import answer

            return answer(self.engine, rows, self.system, sampling.max_new_tokens, self.config.batch_size, sampling)
        prompts = [f"{self.shots}Q: {row['question']}\nA:" + (f" {row['answer_prefix']}" if row["answer_prefix"]
                                                               else "") for row in rows]
        texts = self.engine.complete_batch(prompts, sampling, batch_size=self.config.batch_size)
        return [first_sentence(self._lead(row) + text.strip()) for row, text in zip(rows, texts)]


def probe_rows(prober: Prober, judge, rows: list[dict], config: ProbeConfig, seed: int) -> list[dict]:
    """Sample, judge and label ``rows``: one result per question."""
    from .engine import SamplingParams

    k = config.num_samples
    sampled = prober.ask([row for row in rows for _ in range(k)],
                         SamplingParams(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                        seed=seed))
    greedy = prober.ask(rows, SamplingParams(max_new_tokens=config.max_new_tokens))
    results = []
    for i, row in enumerate(rows):
        samples = sampled[i * k:(i + 1) * k]
        verdicts = judge.scores(row["question"], row["answers"], samples + [greedy[i]])
        sample_verdicts, greedy_verdict = verdicts[:-1], verdicts[-1]
        judged = [v for v in sample_verdicts if v["correct"] is not None]
        right = [s for s, v in zip(samples, sample_verdicts) if v["correct"]]
        accuracy = len(right) / len(judged) if judged else None
        label = ("unjudged" if accuracy is None else
                 "known" if accuracy >= config.known_threshold else "unknown")
        results.append({
            **{key: row[key] for key in ("id", "question", "answers", "exposure")},
            "label": label, "accuracy": accuracy, "samples": samples,
            "correct": [v["correct"] for v in sample_verdicts],
            "refusals": sum(v["refusal"] for v in sample_verdicts),
            "uninformative": sum(not v["informative"] for v in sample_verdicts),
            "judge_errors": len(samples) - len(judged),
            "greedy": greedy[i], "greedy_correct": greedy_verdict["correct"],
            # the model's own most frequent right answer (never the reference)
            "own_answer": Counter(right).most_common(1)[0][0] if right else None,
        })
    return results


def training_rows(results: list[dict], config: ProbeConfig, seed: int) -> tuple[list[dict], Counter]:
    """Known -> the model's own answer, unknown -> the refusal; mixed to ``refusal_share`` refusals."""
    known = [r for r in results if r["label"] == "known"]
    unknown = [r for r in results if r["label"] == "unknown"]
    rng = random.Random(seed)
    rng.shuffle(known)
    rng.shuffle(unknown)
    dropped = Counter()
    share = config.refusal_share
    if share is not None:
        if share == 0:
            keep_known, keep_unknown = len(known), 0
        elif share == 1:
            keep_known, keep_unknown = 0, len(unknown)
        elif len(unknown) > round(len(known) * share / (1 - share)):
            keep_known, keep_unknown = len(known), round(len(known) * share / (1 - share))
        else:
            keep_known, keep_unknown = round(len(unknown) * (1 - share) / share), len(unknown)
        dropped["dropped_known_for_mix"] = len(known) - keep_known
        dropped["dropped_unknown_for_mix"] = len(unknown) - keep_unknown
        known, unknown = known[:keep_known], unknown[:keep_unknown]
    rows = []
    for r in known + unknown:
        answer = r["own_answer"] if r["label"] == "known" else config.refusal
        rows.append({"messages": [{"role": "user", "content": r["question"]},
                                  {"role": "assistant", "content": answer}],
                     "id": r["id"], "label": r["label"], "accuracy": r["accuracy"], "exposure": r["exposure"]})
    rng.shuffle(rows)
    return rows, dropped


def level_stats(results: list[dict]) -> dict:
    """Known/unknown counts and mean accuracy per exposure level (rows with an ``exposure``)."""
    levels = defaultdict(list)
    for r in results:
        if r["exposure"] is not None:
            levels[r["exposure"]].append(r)
    out = {}
    for level in sorted(levels):
        group = levels[level]
        accuracies = [r["accuracy"] for r in group if r["accuracy"] is not None]
        out[str(level)] = {"questions": len(group), "known": sum(r["label"] == "known" for r in group),
                           "unknown": sum(r["label"] == "unknown" for r in group),
                           "mean_accuracy": round(sum(accuracies) / len(accuracies), 4) if accuracies else None,
                           "greedy_accuracy": round(sum(bool(r["greedy_correct"]) for r in group) / len(group), 4)}
    return out


def run(config: ProbeConfig) -> Path:
    """Probe the start model and write RUN/probe/."""
    import datasets
    from tqdm.auto import tqdm

    from .artifacts import finish_stage, is_complete, resume_or_start, write_json
    from .engine import Engine
    from .evals.qa import Judge, normalize_answer

    final = config.stage_dir()
    if is_complete(final) and not config.overwrite:
        logger.info("probe: %s is complete, skipping (overwrite: true to redo it)", final)
        return final
    start = time.time()
    stats: Counter = Counter()
    rows = load_questions(config, stats)  # before the model: a bad dataset fails at once
    engine = Engine.load(config.input_ref("model"))
    if not engine.tokenizer(config.refusal, add_special_tokens=False)["input_ids"] or not normalize_answer(
            config.refusal):
        raise ConfigError(f"probe.refusal: {config.refusal!r} tokenizes to nothing (or has no words to detect)")
    judge = Judge(config.judge, config.f1_threshold, config.refusal, config.judge_model, config.judge_prompt)
    if len(rows) <= config.num_shots:
        raise ConfigError(f"probe.questions: {len(rows)} usable questions, need more than num_shots "
                          f"({config.num_shots}); skipped: {dict(stats) or 'none'}")
    order = list(range(len(rows)))
    random.Random(config.seed).shuffle(order)
    prober = Prober(engine, config, [rows[i] for i in order[:config.num_shots]])
    if prober.mode == "chat":  # shots only prompt a base model
        order = list(range(len(rows)))
    else:
        shot_ids = set(order[:config.num_shots])
        order = [i for i in range(len(rows)) if i not in shot_ids]
        stats["shots"] = config.num_shots
    todo = [rows[i] for i in order]

    work, _ = resume_or_start(final, config_to_dict(config), config.resume and not config.overwrite,
                              progress_file=PROGRESS)
    progress = work / PROGRESS
    results = [json.loads(line) for line in progress.read_text().splitlines()] if progress.is_file() else []
    done = {r["id"] for r in results}
    if done:
        logger.info("probe: resuming, %d of %d questions already probed", len(done), len(todo))
    todo_left = [row for row in todo if row["id"] not in done]
    logger.info("probe: %s (%s prompt): %d questions x %d samples at temperature %g, judge %s",
                engine.path, prober.mode, len(todo), config.num_samples, config.temperature, config.judge)
    with progress.open("a") as out, tqdm(total=len(todo), initial=len(done), desc="probe", unit="q") as bar:
        for chunk_start in range(0, len(todo_left), QUESTIONS_PER_CHUNK):
            chunk = todo_left[chunk_start:chunk_start + QUESTIONS_PER_CHUNK]
            seed = config.seed + len(done) + chunk_start  # a resumed run samples the rest as the killed one would
            for result in probe_rows(prober, judge, chunk, config, seed):
                out.write(json.dumps(result) + "\n")
                results.append(result)
            out.flush()
            bar.update(len(chunk))

    labels = Counter(r["label"] for r in results)
    train, dropped = training_rows([r for r in results if r["label"] != "unjudged"], config, config.seed)
    stats.update(dropped)
    stats["skipped_unjudged"] = labels["unjudged"]
    judge_counts = {
        "samples": sum(len(r["samples"]) for r in results),
        "correct": sum(sum(bool(c) for c in r["correct"]) for r in results),
        "refusal": sum(r["refusals"] for r in results),
        "uninformative": sum(r["uninformative"] for r in results),
        "judge_error": sum(r["judge_errors"] for r in results),
    }
    judge_counts["wrong"] = judge_counts["samples"] - judge_counts["correct"] - judge_counts["uninformative"] - \
        judge_counts["judge_error"]
    per_level = level_stats(results)
    label_features = datasets.Features({
        "id": datasets.Value("string"), "question": datasets.Value("string"),
        "answers": datasets.Sequence(datasets.Value("string")), "exposure": datasets.Value("int64"),
        "label": datasets.Value("string"), "accuracy": datasets.Value("float64"),
        "samples": datasets.Sequence(datasets.Value("string")), "correct": datasets.Sequence(datasets.Value("bool")),
        "refusals": datasets.Value("int64"), "uninformative": datasets.Value("int64"),
        "judge_errors": datasets.Value("int64"), "greedy": datasets.Value("string"),
        "greedy_correct": datasets.Value("bool"), "own_answer": datasets.Value("string"),
    })
    train_features = datasets.Features({
        "messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
        "id": datasets.Value("string"), "label": datasets.Value("string"), "accuracy": datasets.Value("float64"),
        "exposure": datasets.Value("int64"),
    })
    def table(rows, features):  # (from_list of no rows would lose the columns)
        return datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in features}, features=features)

    datasets.DatasetDict({"train": table(train, train_features), "labels": table(results, label_features)}
                         ).save_to_disk(str(work), num_shards={"train": 1, "labels": 1})  # (0 rows: loadable)
    if not train:
        logger.warning("probe: no training rows (%d known, %d unknown, refusal_share %s)", labels["known"],
                       labels["unknown"], config.refusal_share)
    metrics = {
        "questions": len(results), "known": labels["known"], "unknown": labels["unknown"],
        "known_share": round(labels["known"] / max(1, labels["known"] + labels["unknown"]), 4),
        "train_rows": len(train), "refusal_rows": sum(r["label"] == "unknown" for r in train),
        "answer_rows": sum(r["label"] == "known" for r in train),
        "prompt": prober.mode, "num_samples": config.num_samples, "known_threshold": config.known_threshold,
        "judge": config.judge, "start_model": engine.path, "wall_time_s": round(time.time() - start, 2),
    }
    write_json(work / "stats.json", {"per_exposure": per_level, "judge": judge_counts, "rows": dict(stats),
                                     "labels": dict(labels)})
    write_json(work / "metrics.json", metrics)
    progress.unlink()
    finish_stage(work, final)
    for level, s in per_level.items():
        logger.info("probe: exposure %-4s %3d questions: %3d known, %3d unknown (mean accuracy %.2f)", level,
                    s["questions"], s["known"], s["unknown"], s["mean_accuracy"] or 0.0)
    logger.info("probe: read %d questions (skipped %s), %d known / %d unknown -> %d answers + %d refusals -> %s",
                len(results), {k: v for k, v in stats.items() if k.startswith("skipped") and v} or "none",
                labels["known"], labels["unknown"], metrics["answer_rows"], metrics["refusal_rows"], final)
    return final
