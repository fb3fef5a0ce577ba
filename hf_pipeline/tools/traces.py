"""Tool-use conversations: training traces for SFT and held-out tasks for the ``tools`` evaluation.

Each family is a task the tiny model cannot do in its head but can do with a tool, or one it should answer without::

    multiply      What is 415 * 391?               <|python_start|>print(415 * 391)<|python_end|>
                                                   <|output_start|>162265<|output_end|>The answer is 162265.
    add           What is 738 + 969?               print(738 + 969) -> 1707
    count_letter  How many times does the letter "a" appear in "barakanalo"?   print("barakanalo".count("a")) -> 4
                  (made-up words of two-letter syllables, the count uniform in 0..9)
    compare       Which is bigger, 9.11 or 9.9?    print(max(9.11, 9.9)) -> 9.9 -> The bigger number is 9.9.
    search        Where was Hushai Reifoum born?   <|search_start|>Where was Hushai Reifoum born?<|search_end|>
                                                   <|output_start|>(the index's top passage)<|output_end|>
                                                   Hushai Reifoum was born in Praekark.
    gsm8k         GSM8K's <<48/2=24>> calculator notes become python calls (traces whose call does not give the
                  note's result are dropped: Llama 3's filter, counted)
    trivial       greetings and one-digit sums with tools on: answered directly, no call (Llama 3's remedy for
                  models that call a tool for everything)

A conversation's system message ends with the tool switch (``config.TOOLS_ON`` / ``TOOLS_OFF``); with tools off
(``off_share`` of the python families) the answer comes directly. The outputs are what the tools return: python
outputs are what ``print`` writes (tests/test_tools.py runs samples through the real sandbox), search outputs come
from the real index. The tasks are split by a hash of the question: a tenth is held out (``heldout_key``), never
trained on, and is what the evaluation asks; search questions are the facts' probe people for training and its
held-out people for evaluation.
"""

from __future__ import annotations

import ast
import hashlib
import operator
import random
import re

from ..config import TOOLS_OFF, TOOLS_ON
from ..tokenizer import OUTPUT_END, OUTPUT_START, PYTHON_END, PYTHON_START, SEARCH_END, SEARCH_START

PYTHON_FAMILIES = ("multiply", "add", "count_letter", "compare")
EVAL_FAMILIES = (*PYTHON_FAMILIES, "search", "trivial")

PHRASINGS = {
    "multiply": ["What is {a} * {b}?", "What is {a} times {b}?", "Compute {a} * {b}.", "Multiply {a} by {b}.",
                 "How much is {a} * {b}?", "{a} * {b} = ?"],
    "add": ["What is {a} + {b}?", "What is {a} plus {b}?", "Compute {a} + {b}.", "Add {a} and {b}.",
            "How much is {a} + {b}?", "{a} + {b} = ?"],
    "count_letter": ['How many times does the letter "{letter}" appear in "{word}"?',
                     'Count the letter "{letter}" in "{word}".', 'How many "{letter}"s are in "{word}"?'],
    "compare": ["Which is bigger, {x} or {y}?", "Which number is larger: {x} or {y}?", "Is {x} or {y} greater?"],
}
GREETINGS = [("Hi!", "Hello! How can I help you today?"), ("Hello", "Hi! What can I do for you?"),
             ("Good morning!", "Good morning! How can I help?"), ("Thanks!", "You're welcome!"),
             ("Thank you very much.", "You're welcome! Happy to help."), ("How are you?", "I'm fine, thank you!"),
             ("Hey there", "Hello! What can I do for you?"), ("Bye!", "Goodbye! Have a nice day.")]
HELDOUT_GREETINGS = [("Good evening!", ""), ("Hey, how is it going?", ""), ("Nice to meet you.", ""),
                     ("See you later!", ""), ("Hello there!", ""), ("Thanks a lot!", "")]
SYLLABLES = ["ba", "ra", "ka", "lo", "mi", "ne", "sa", "to", "ru", "pe", "li", "da", "go", "fe", "ti", "mo", "na",
             "si", "ar", "el", "or", "an", "us", "er", "in", "ol", "te", "ku", "bo", "re"]
COUNT_LETTERS = "abdeiklmnorstu"  # each in some syllables (once) and missing from others


def heldout_key(text: str) -> bool:
    """Whether a task belongs to the held-out tenth (a stable hash of its question)."""
    return hashlib.blake2b(text.encode(), digest_size=8).digest()[0] % 10 == 0


def _call(start: str, end: str, call: str, output: str) -> str:
    return f"{start}{call}{end}{OUTPUT_START}{output}{OUTPUT_END}"


def python_task(family: str, rng: random.Random) -> dict:
    """One task: ``question``, ``code`` (the python call), ``output`` (what print writes), ``expected``, ``answer``
    (the sentence after the output)."""
    if family in ("multiply", "add"):
        a, b = rng.randint(2, 999), rng.randint(2, 999)
        sign = "*" if family == "multiply" else "+"
        value = a * b if family == "multiply" else a + b
        question = rng.choice(PHRASINGS[family]).format(a=a, b=b)
        code, expected = f"print({a} {sign} {b})", str(value)
        answer = f"The answer is {expected}."
    elif family == "count_letter":  # the count uniform in 0..9: a guess is right 1 time in 10
        letter = rng.choice(COUNT_LETTERS)
        want = rng.randint(0, 9)
        having = [s for s in SYLLABLES if s.count(letter) == 1]
        lacking = [s for s in SYLLABLES if letter not in s]
        parts = [rng.choice(having) for _ in range(want)] + [rng.choice(lacking) for _ in range(rng.randint(1, 3))]
        for _ in range(20):  # few repeats side by side ("sasasa" is hard to copy)
            rng.shuffle(parts)
            if all(a != b for a, b in zip(parts, parts[1:])):
                break
        word = "".join(parts)
        question = rng.choice(PHRASINGS[family]).format(letter=letter, word=word)
        code, expected = f'print("{word}".count("{letter}"))', str(word.count(letter))
        answer = f"The answer is {expected}."
    elif family == "compare":
        whole = rng.randint(0, 20)
        x = f"{whole}.{rng.randint(1, 9)}"
        y = f"{whole if rng.random() < 0.7 else rng.randint(0, 20)}.{rng.randint(10, 99)}"
        x, y = (x, y) if rng.random() < 0.5 else (y, x)
        if float(x) == float(y):
            return python_task(family, rng)
        question = rng.choice(PHRASINGS[family]).format(x=x, y=y)
        code, expected = f"print(max({x}, {y}))", str(max(float(x), float(y)))
        answer = f"The bigger number is {expected}."
    else:
        raise ValueError(f"not a python family: {family}")
    return {"family": family, "question": question, "code": code, "output": expected, "expected": expected,
            "answer": answer}


def draw(family: str, n: int, seed: int, heldout: bool) -> list[dict]:
    """``n`` distinct tasks of a python family from the training (``heldout`` False) or held-out tenth."""
    rng = random.Random(f"{family}/{seed}")
    out, seen = [], set()
    while len(out) < n:
        task = python_task(family, rng)
        if task["question"] in seen or heldout_key(task["question"]) != heldout:
            continue
        seen.add(task["question"])
        out.append(task)
    return out


def system_line(system: str | None, tools_on: bool) -> str:
    line = TOOLS_ON if tools_on else TOOLS_OFF
    return f"{system} {line}" if system else line


def python_conversation(task: dict, system: str | None, tools_on: bool) -> list[dict]:
    reply = (_call(PYTHON_START, PYTHON_END, task["code"], task["output"]) + task["answer"] if tools_on
             else task["answer"])
    return [{"role": "system", "content": system_line(system, tools_on)},
            {"role": "user", "content": task["question"]}, {"role": "assistant", "content": reply}]


def search_conversation(row: dict, output: str, system: str | None) -> list[dict]:
    reply = _call(SEARCH_START, SEARCH_END, row["question"], output) + f"{row['answer_prefix']} {row['answer']}."
    return [{"role": "system", "content": system_line(system, True)},
            {"role": "user", "content": row["question"]}, {"role": "assistant", "content": reply}]


def trivial_tasks(n: int, seed: int, heldout: bool) -> list[dict]:
    """Greetings and one-digit sums: ``question``, ``answer``, ``expected`` (None for greetings). The held-out ones
    are other greetings and other phrasings, never trained on, and unlike the add family's ("Add 5 and 9." is
    asked with a tool call in training)."""
    rng = random.Random(f"trivial/{seed}")
    sums = [(a, b) for a in range(10) for b in range(10)]
    greetings = HELDOUT_GREETINGS if heldout else GREETINGS
    phrasings = ("What's {a} + {b}?", "What does {a} + {b} make?") if heldout else ("What is {a} + {b}?",
                                                                                 "What is {a} plus {b}?")
    pool = [{"question": q, "answer": r, "expected": None} for q, r in greetings]
    pool += [{"question": p.format(a=a, b=b), "answer": f"{a} + {b} = {a + b}.", "expected": str(a + b)}
             for a, b in sums for p in phrasings]
    return [dict(rng.choice(pool), family="trivial") for _ in range(n)]


# --- GSM8K's calculator notes -> python calls ------------------------------------------------------------------

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.Pow: operator.pow, ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Mod: operator.mod,
        ast.FloorDiv: operator.floordiv}


def arithmetic(expr: str):
    """The value ``print(expr)`` shows for an arithmetic expression (numbers, + - * / // % **, parentheses); raises
    ValueError for anything else."""
    def value(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 100:
                raise ValueError("exponent too large")
            return _OPS[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.operand))
        raise ValueError(f"not arithmetic: {ast.dump(node)[:60]}")

    try:
        return value(ast.parse(expr, mode="eval").body)
    except (SyntaxError, ZeroDivisionError, OverflowError) as e:
        raise ValueError(str(e)) from None


NOTE = re.compile(r"<<([^<>=]*)=([^<>]*)>>")


def gsm8k_conversation(question: str, solution: str, system: str | None) -> list[dict] | None:
    """A GSM8K row with its ``<<expr=result>>`` notes as python calls; None when a call would not give the note's
    result (or the row has no note)."""
    parts, last = [], 0
    for match in NOTE.finditer(solution):
        expr, noted = match.group(1).replace(",", "").strip(), match.group(2).replace(",", "").strip()
        try:
            shown = arithmetic(expr)
            if abs(float(shown) - float(noted)) > 1e-6 * max(1.0, abs(float(noted))):
                return None
        except ValueError:
            return None
        parts.append(solution[last:match.start()])
        parts.append(_call(PYTHON_START, PYTHON_END, f"print({expr})", str(shown)))
        last = match.end()
    if not parts:
        return None
    parts.append(solution[last:])
    return [{"role": "system", "content": system_line(system, True)},
            {"role": "user", "content": question}, {"role": "assistant", "content": "".join(parts)}]


def build_traces(counts: dict, system: str | None, seed: int, off_share: float = 0.2, facts: str | None = None,
                 index: str | None = None, gsm8k: str | None = None, mirror: str | None = None,
                 search_k: int = 1, search_max_chars: int = 300) -> tuple[list[list[dict]], dict]:
    """The training conversations of ``counts`` ({family: n}) and their counts (``gsm8k_dropped_notes``...)."""
    rng = random.Random(seed)
    conversations, stats = [], {}
    for family in PYTHON_FAMILIES:
        for task in draw(family, counts.get(family, 0), seed, heldout=False):
            conversations.append(python_conversation(task, system, tools_on=rng.random() >= off_share))
    if counts.get("trivial"):
        for task in trivial_tasks(counts["trivial"], seed, heldout=False):
            conversations.append([{"role": "system", "content": system_line(system, True)},
                                  {"role": "user", "content": task["question"]},
                                  {"role": "assistant", "content": task["answer"]}])
    if counts.get("search"):
        from datasets import load_from_disk

        from .search import SearchIndex, SearchTool

        tool = SearchTool(SearchIndex.open(index), search_k, search_max_chars)
        splits = load_from_disk(facts)
        rows = list(splits["practice"] if "practice" in splits and len(splits["practice"]) else splits["probe"])
        rng.shuffle(rows)
        picked = [rows[i % len(rows)] for i in range(counts["search"])]  # more than the rows: seen again
        found = 0
        for row in picked:
            output = tool(row["question"])
            found += row["answer"] in output
            conversations.append(search_conversation(row, output, system))
        stats["search_answer_in_output"] = found / len(picked)
    if counts.get("gsm8k"):
        from ..config import Source
        from ..refs import open_dataset

        ds = open_dataset(Source(path=gsm8k or "openai/gsm8k", name="main", split="train"), mirror, what="gsm8k")
        kept = dropped = 0
        for row in ds:
            if kept >= counts["gsm8k"]:
                break
            conversation = gsm8k_conversation(row["question"], row["answer"], system)
            if conversation is None:
                dropped += 1
                continue
            conversations.append(conversation)
            kept += 1
        stats.update(gsm8k_traces=kept, gsm8k_dropped_notes=dropped)
    return conversations, stats
