"""Tool use: accuracy with tools and without per task family, well-formed calls, calls where none is needed.

On held-out tasks (``tools.traces``: the tenth of each python family never trained on, the facts' held-out people
for search, held-out greetings and one-digit sums for ``trivial``), the same model answers twice: with the tools
registered and ``Tools: python, search.`` in its system message, and with none and ``Tools: none.``. Measures
(flat keys, ``<family>`` in multiply, add, count_letter, compare, search):

    tools_<family>_with / tools_<family>_without   share answered right (the last number of the answer for python
                                                   families, the reference named in it for search)
    tools_<family>_call_rate                       share of replies that called a tool (with tools on)
    tools_search_with_exposure_<level>             search accuracy per exposure level of the facts
    tools_wellformed                               share of calls that ran without an error (all families)
    tools_calls_without                            share of replies with a tool token although tools were off
    tools_trivial_call_rate                        share of greetings / one-digit sums that called a tool
    tools_trivial_correct                          share of one-digit sums answered right
"""

from __future__ import annotations

import re

from ..config import TOOLS_OFF, TOOLS_ON

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def last_number(text: str) -> str | None:
    numbers = NUMBER.findall(text.replace(",", ""))
    return numbers[-1] if numbers else None


def same_number(found: str | None, expected: str) -> bool:
    try:
        return found is not None and abs(float(found) - float(expected)) < 1e-9
    except ValueError:
        return False


def eval_tasks(families, n: int, seed: int, facts: str | None = None) -> list[dict]:
    """``n`` held-out tasks per family: ``family``, ``question``, ``expected`` (python, trivial) or ``answers``
    and ``exposure`` (search)."""
    from ..tools.traces import PYTHON_FAMILIES, draw, trivial_tasks

    tasks = []
    for family in families:
        if family in PYTHON_FAMILIES:
            tasks += draw(family, n, seed, heldout=True)
        elif family == "trivial":
            tasks += trivial_tasks(n, seed, heldout=True)
        elif family == "search" and facts:
            from datasets import load_from_disk

            rows = list(load_from_disk(facts)["heldout"])
            step = max(1, len(rows) // n) if n < len(rows) else 1
            tasks += [{"family": "search", "question": r["question"], "answers": r["answers"],
                       "exposure": r["exposure"]} for r in rows[::step][:n]]
    return tasks


def correct(task: dict, reply: str) -> bool:
    if task["family"] == "search":
        from .qa import has_match

        return has_match(reply, task["answers"])
    if task.get("expected") is None:  # a greeting: nothing to get right
        return True
    return same_number(last_number(reply), task["expected"])


def measure_tools(engine, tasks: list[dict], system: str | None, max_new_tokens: int = 128,
                  plain_engine=None) -> tuple[dict, list]:
    """The measures above for ``engine`` (with its tools registered); ``plain_engine``: the same model without
    tools (default: one made here)."""
    from ..engine import Engine, SamplingParams

    plain = plain_engine or Engine(engine.model, engine.tokenizer, engine.chat_config)
    sampling = SamplingParams(max_new_tokens=max_new_tokens)

    def ask(eng, line):
        head = [{"role": "system", "content": f"{system} {line}" if system else line}]
        return eng.reply([head + [{"role": "user", "content": t["question"]}] for t in tasks], sampling)

    with_tools, without = ask(engine, TOOLS_ON), ask(plain, TOOLS_OFF)
    metrics, samples = {}, []
    families = list(dict.fromkeys(t["family"] for t in tasks))
    for family in families:
        rows = [i for i, t in enumerate(tasks) if t["family"] == family]
        called = [bool(with_tools[i]["tool_calls"]) for i in rows]
        if family == "trivial":
            metrics["tools_trivial_call_rate"] = sum(called) / len(rows)
            sums = [i for i in rows if tasks[i]["expected"] is not None]
            metrics["tools_trivial_correct"] = (sum(correct(tasks[i], with_tools[i]["reply"]) for i in sums)
                                                / len(sums)) if sums else None
            continue
        metrics[f"tools_{family}_with"] = sum(correct(tasks[i], with_tools[i]["reply"]) for i in rows) / len(rows)
        metrics[f"tools_{family}_without"] = sum(correct(tasks[i], without[i]["reply"]) for i in rows) / len(rows)
        metrics[f"tools_{family}_call_rate"] = sum(called) / len(rows)
        if family == "search":
            for level in sorted({tasks[i]["exposure"] for i in rows}):
                at = [i for i in rows if tasks[i]["exposure"] == level]
                metrics[f"tools_search_with_exposure_{level}"] = sum(
                    correct(tasks[i], with_tools[i]["reply"]) for i in at) / len(at)
                metrics[f"tools_search_without_exposure_{level}"] = sum(
                    correct(tasks[i], without[i]["reply"]) for i in at) / len(at)
    calls = [c for r in with_tools for c in r["tool_calls"]]
    metrics["tools_calls"] = len(calls)
    metrics["tools_wellformed"] = sum(c["ok"] for c in calls) / len(calls) if calls else None
    metrics["tools_calls_without"] = sum(r["tool_tokens"] for r in without) / len(without) if without else None
    for task, on, off in zip(tasks, with_tools, without):
        samples.append({"family": task["family"], "question": task["question"],
                        "expected": task.get("expected") or task.get("answers"), "with_tools": on["text"],
                        "with_tools_correct": correct(task, on["reply"]), "without_tools": off["text"],
                        "without_tools_correct": correct(task, off["reply"])})
    return metrics, samples
