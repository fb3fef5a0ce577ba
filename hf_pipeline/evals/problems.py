"""Verifiable problems: pass@1 (greedy), pass@k (k samples) and what the replies look like.

    pass1              share of problems whose greedy completion has the right final answer (gsm8k_accuracy metric)
    pass1_strict       the same, counting only answers given on a "#### N" line
    pass1_checked      the same, counting only answers the reply's own arithmetic reaches (rewards.work_checks):
                       the rest are right by luck
    passk              share of problems solved by at least one of k sampled completions
    sample_accuracy    share of those k x problems samples that are correct (sampled pass@1)
    mean_completion_tokens, stop_rate   of the greedy completions
    worked_share       share of greedy completions that show intermediate results (rewards.shows_work)
    sample_worked_share, sample_mean_tokens   the same share, and the mean length, of the sampled completions
    accuracy_worked / accuracy_direct   sampled completions that show work / answer directly: share correct
                                        (None where the model never chose that form)
"""

from __future__ import annotations

from collections import Counter

from ..engine import Engine, SamplingParams


def pass_at_k(engine: Engine, problems, k: int, max_new_tokens: int, temperature: float = 1.0,
              batch_size: int = 64, seed: int | None = None, n_samples: int = 20) -> tuple[dict, list[dict]]:
    """Measure ``problems`` (rows with ``prompt``, ``question``, ``answer``); returns ``(metrics, samples)``."""
    from ..metrics import load_metric
    from ..rewards import is_correct, shows_work, work_checks

    prompts, answers = list(problems["prompt"]), list(problems["answer"])
    greedy = engine.reply(prompts, SamplingParams(max_new_tokens=max_new_tokens), batch_size=batch_size)
    scores = load_metric("gsm8k_accuracy").compute(predictions=[g["reply"] for g in greedy], references=answers)
    greedy_right = [is_correct(g["reply"], a) for g, a in zip(greedy, answers)]
    greedy_worked = [shows_work(g["reply"]) for g in greedy]
    sampling = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=0, top_p=1.0, seed=seed)
    sampled = engine.reply([p for p in prompts for _ in range(k)], sampling, batch_size=batch_size)
    correct = [is_correct(s["reply"], answers[i // k]) for i, s in enumerate(sampled)]
    worked = [shows_work(s["reply"]) for s in sampled]
    metrics = {
        "pass1": scores["accuracy"],
        "pass1_strict": scores["strict_accuracy"],
        "pass1_checked": sum(right and work_checks(g["reply"])
                             for g, right in zip(greedy, greedy_right)) / len(prompts),
        "passk": sum(any(correct[i * k:(i + 1) * k]) for i in range(len(prompts))) / len(prompts),
        "sample_accuracy": sum(correct) / len(correct),
        "mean_completion_tokens": sum(g["tokens"] for g in greedy) / len(greedy),
        "stop_rate": sum(g["stopped"] for g in greedy) / len(greedy),
        "worked_share": sum(greedy_worked) / len(greedy),
        "sample_worked_share": sum(worked) / len(worked),
        "sample_mean_tokens": sum(s["tokens"] for s in sampled) / len(sampled),
        "accuracy_worked": _share([c for c, w in zip(correct, worked) if w]),
        "accuracy_direct": _share([c for c, w in zip(correct, worked) if not w]),
    }
    samples = [{"question": q, "answer": a, "reply": g["reply"], "correct": right, "worked": w}
               for q, a, g, right, w in list(zip(problems["question"], answers, greedy, greedy_right,
                                                 greedy_worked))[:n_samples]]
    return metrics, samples


def _share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def guess_accuracy(train_answers, test_answers) -> float:
    """How much guessing pays: the share of ``test_answers`` equal to the most frequent of ``train_answers`` (the
    best constant answer a policy could learn from the training problems)."""
    if not train_answers or not test_answers:
        return 0.0
    guess = Counter(train_answers).most_common(1)[0][0]
    return sum(a == guess for a in test_answers) / len(test_answers)
