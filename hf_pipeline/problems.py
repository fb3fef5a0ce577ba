"""Verifiable problem sets for SFT and RL: procedurally generated arithmetic word problems, and GSM8K.

Every set is a ``datasets.Dataset`` with the same columns, so sets can be concatenated:

* ``prompt``: the chat messages to send, in TRL's conversational format: a system message stating the answer format
  and ``{"role": "user", "content": question}`` (see ``make_prompt`` for the other styles);
* ``question``: the problem text;
* ``answer``: the canonical string of the numeric answer (``"42"``, ``"-7"``, ``"3.5"``), what
  ``hf_pipeline.rewards.correctness_reward`` compares against;
* ``solution``: a worked solution for SFT, one intermediate result per line, ending with the answer line ``#### 42``
  (``rewards.ANSWER_PREFIX``; the format is documented in ``hf_pipeline.rewards``);
* ``source``: ``"generated/<template>"`` or ``"gsm8k"``;
* ``steps``: the number of arithmetic steps of the solution (equation lines; for GSM8K, calculator annotations).

``generate_problems`` draws problems from templates (shopping totals, an unknown unit price, sharing, ages,
distances, items remaining) with a difficulty dial: ``steps`` (arithmetic operations, one per solution line) and
``max_number`` (the size of the numbers in the question). All answers and intermediate results are integers. The
same arguments always give the same dataset, and train and test never share a question: a hash of the question text
decides which split a question belongs to (``problem_split``), and each split keeps only its own questions.

``worked_problem_conversations`` turns generated problems into SFT conversations ("worked problems"): the same
prompt messages the RL stage sends, then the worked solution as the assistant's reply.

``load_gsm8k`` loads ``openai/gsm8k`` (config ``main``) from the mirror or the Hub, with the calculator annotations
``<<48/2=24>>`` stripped from the solutions; rows without a usable answer are skipped and counted.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

from .rewards import ANSWER_PREFIX, QUESTION_SUFFIX, SYSTEM_PROMPT, answer_line, normalize_number

logger = logging.getLogger("hf_pipeline")

__all__ = [
    "ANSWER_PREFIX", "ARITHMETIC_TEMPLATES", "FORMAT_PROMPT", "SYSTEM_PROMPT", "TEMPLATES", "TEST_FRACTION",
    "WORD_TEMPLATES", "generate_problems", "load_gsm8k", "make_prompt", "problem_split",
    "strip_calculator_annotations", "worked_problem_conversations",
]

Instruction = Literal["system", "format", "suffix", "none"]

# The answer format alone, with no request to show work: whether to show it is left to the model (and to RL).
FORMAT_PROMPT = (f"End with a final line of the form '{ANSWER_PREFIX} <number>' containing only the final numeric "
                 f"answer, e.g. '{ANSWER_PREFIX} 42'.")

# Fraction of all possible questions that belong to the test split (by hash of the text). Keep it fixed: train and
# test are disjoint only among sets made with the same value.
TEST_FRACTION = 0.2


def make_prompt(question: str, instruction: Instruction = "system") -> list[dict[str, str]]:
    """Chat messages for a question: ``"system"`` puts the answer format and a request to work step by step in a
    system message (``SYSTEM_PROMPT``), ``"format"`` the answer format alone (``FORMAT_PROMPT``), ``"suffix"``
    appends the request to the question (for chat templates without a system role), ``"none"`` sends the bare
    question."""
    if instruction in ("system", "format"):
        system = SYSTEM_PROMPT if instruction == "system" else FORMAT_PROMPT
        return [{"role": "system", "content": system}, {"role": "user", "content": question}]
    if instruction == "suffix":
        return [{"role": "user", "content": question + QUESTION_SUFFIX}]
    if instruction == "none":
        return [{"role": "user", "content": question}]
    raise ValueError(f"instruction must be 'system', 'format', 'suffix' or 'none', not {instruction!r}")


def problem_split(question: str, test_fraction: float = TEST_FRACTION) -> str:
    """``"test"`` or ``"train"``, decided by a hash of the question text alone (so never both)."""
    digest = hashlib.sha256(question.encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    return "test" if position < test_fraction else "train"


# ----------------------------------------------------------------------------------------------------------------
# Vocabulary

NAMES = [
    ("Emily", "she"), ("Liam", "he"), ("Olivia", "she"), ("Noah", "he"), ("Ava", "she"), ("Ethan", "he"),
    ("Sophia", "she"), ("Mason", "he"), ("Mia", "she"), ("Lucas", "he"), ("Isabella", "she"), ("James", "he"),
    ("Amelia", "she"), ("Benjamin", "he"), ("Harper", "she"), ("Elijah", "he"), ("Chloe", "she"), ("Daniel", "he"),
    ("Zoe", "she"), ("Samuel", "he"), ("Priya", "she"), ("Omar", "he"), ("Yuki", "she"), ("Carlos", "he"),
    ("Fatima", "she"), ("Mateo", "he"), ("Grace", "she"), ("Kwame", "he"), ("Lena", "she"), ("Ivan", "he"),
]
# subject, object, possessive
PRONOUNS = {"she": ("she", "her", "her"), "he": ("he", "him", "his")}

SHOP_ITEMS = [  # (singular, plural)
    ("apple", "apples"), ("orange", "oranges"), ("notebook", "notebooks"), ("pen", "pens"), ("pencil", "pencils"),
    ("book", "books"), ("toy car", "toy cars"), ("sandwich", "sandwiches"), ("cupcake", "cupcakes"),
    ("T-shirt", "T-shirts"), ("bottle of juice", "bottles of juice"), ("movie ticket", "movie tickets"),
    ("plant", "plants"), ("mug", "mugs"), ("candle", "candles"), ("puzzle", "puzzles"), ("comic book", "comic books"),
    ("muffin", "muffins"), ("basketball", "basketballs"), ("lemon", "lemons"), ("scarf", "scarves"),
    ("flower pot", "flower pots"),
]
COUNT_ITEMS = ["candies", "stickers", "marbles", "cookies", "pencils", "trading cards", "strawberries", "crayons",
               "beads", "stamps", "seashells", "balloons"]
CONTAINERS = ["bags", "boxes", "jars", "packs", "baskets"]
GROUPS = ["friends", "classmates", "cousins", "teammates", "neighbors"]
MOVES = [("drives", "drive"), ("cycles", "cycle"), ("runs", "run"), ("sails", "sail"), ("rides", "ride")]
DISTANCE_UNITS = ["kilometers", "miles"]
ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth"]
TIMES_AS_OLD = {2: "twice", 3: "three times", 4: "four times", 5: "five times"}
MAX_AGE = 120


class _Reject(Exception):
    """These random draws make no valid problem (a negative count, an inexact division...): draw again."""


@dataclass
class _Problem:
    question: str
    lines: list[str]  # the worked solution, one intermediate result per line, before the answer line
    answer: int


@dataclass
class _Person:
    name: str
    subj: str
    obj: str
    poss: str

    @property
    def Subj(self) -> str:  # noqa: N802 - sentence-initial pronoun
        return self.subj.capitalize()


def _person(rng: random.Random, exclude: Sequence[str] = ()) -> _Person:
    name, gender = rng.choice([n for n in NAMES if n[0] not in exclude])
    return _Person(name, *PRONOUNS[gender])


def _num(rng: random.Random, lo: int, hi: int) -> int:
    """A random integer in [lo, hi] (hi raised to lo when the dial is set below the template's minimum)."""
    return rng.randint(lo, max(lo, hi))


def _join(parts: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _money(x: int) -> str:
    return f"${x}"


def _years(x: int) -> str:
    return f"{x} year" if x == 1 else f"{x} years"


# ----------------------------------------------------------------------------------------------------------------
# Templates: each builds a problem whose solution has exactly `steps` equation lines, or raises _Reject.
# Every equation is written "a op b = c" (or "a + b + c = d") with op in + - * /, so it can be checked by parsing.


def _shopping_total(rng: random.Random, steps: int, max_number: int) -> _Problem:
    """Buy several kinds of items at unit prices; the total spent (and the change from a bill)."""
    # steps = k products + (1 sum if k >= 2) + (1 if change)
    options = [(k, change) for k in range(1, 9) for change in (False, True)
               if k + (k >= 2) + change == steps and k <= len(SHOP_ITEMS)]
    if not options:
        raise _Reject
    k, change = rng.choice(options)
    p = _person(rng)
    items = rng.sample(SHOP_ITEMS, k)
    quantities = [_num(rng, 2, max_number) for _ in items]
    prices = [_num(rng, 1, max_number) for _ in items]
    costs = [q * c for q, c in zip(quantities, prices)]
    total = sum(costs)

    bought = [f"{q} {plural} for {_money(c)} each" for q, c, (_, plural) in zip(quantities, prices, items)]
    question = f"{p.name} buys {_join(bought)}."
    lines = [f"{q} {plural} cost {q} * {c} = {cost} dollars."
             for q, c, cost, (_, plural) in zip(quantities, prices, costs, items)]
    if k >= 2:
        lines.append(f"Altogether {p.name} spends {' + '.join(map(str, costs))} = {total} dollars.")
    if not change:
        question += f" How much does {p.subj} spend in total?"
        return _Problem(question, lines, total)
    unit = 10 if total < 100 else 100 if total < 1000 else 1000
    bill = (total // unit + 1 + rng.randint(0, 1)) * unit
    question += f" {p.Subj} pays with {_money(bill)}. How much change does {p.subj} get back?"
    lines.append(f"The change is {bill} - {total} = {bill - total} dollars.")
    return _Problem(question, lines, bill - total)


def _unit_price(rng: random.Random, steps: int, max_number: int) -> _Problem:
    """Know the total and the other items' prices; find the price of one item of the remaining kind."""
    # steps = m unit-priced known items (a product each) + (1 sum if k >= 2 known items) + subtract + divide;
    # at most one known item priced as a group, so that the one sum line does not hide many additions.
    options = [(k, m) for k in range(1, 9) for m in range(max(0, k - 1), k + 1) if m + (k >= 2) + 2 == steps]
    if not options:
        raise _Reject
    k, m = rng.choice(options)
    p = _person(rng)
    target, *known = rng.sample(SHOP_ITEMS, k + 1)
    target_count = _num(rng, 2, max_number)
    target_price = _num(rng, 1, max_number)
    counts = [_num(rng, 2, max_number) for _ in known]
    prices = [_num(rng, 1, max_number) for _ in known]
    per_unit = [True] * m + [False] * (k - m)
    rng.shuffle(per_unit)
    costs = [q * c for q, c in zip(counts, prices)]
    total = target_count * target_price + sum(costs)

    listed = [f"{target_count} {target[1]}"] + [f"{q} {plural}" for q, (_, plural) in zip(counts, known)]
    price_sentences, lines = [], []
    for q, c, cost, unit, (singular, plural) in zip(counts, prices, costs, per_unit, known):
        if unit:
            price_sentences.append(f"Each {singular} costs {_money(c)}.")
            lines.append(f"{q} {plural} cost {q} * {c} = {cost} dollars.")
        else:
            price_sentences.append(f"The {q} {plural} cost {_money(cost)} together.")
    known_total = sum(costs)
    if k >= 2:
        lines.append(f"The other items cost {' + '.join(map(str, costs))} = {known_total} dollars.")
    rest = total - known_total
    lines.append(f"The {target[1]} cost {total} - {known_total} = {rest} dollars.")
    lines.append(f"One {target[0]} costs {rest} / {target_count} = {target_price} dollars.")
    question = (f"{p.name} buys {_join(listed)}. {' '.join(price_sentences)} {p.Subj} pays {_money(total)} in total. "
                f"How much does one {target[0]} cost?")
    return _Problem(question, lines, target_price)


def _sharing(rng: random.Random, steps: int, max_number: int) -> _Problem:
    """Start with some items (maybe in containers), gain or lose some, share the rest equally."""
    # steps = (1 if the start is containers * per container) + adjustments + the final division
    boxed = steps >= 2 and rng.random() < 0.5
    adjustments = steps - 1 - boxed
    p = _person(rng)
    other = _person(rng, exclude=[p.name])
    items, group = rng.choice(COUNT_ITEMS), rng.choice(GROUPS)

    lines = []
    if boxed:
        boxes, per_box = _num(rng, 2, max_number), _num(rng, 2, max_number)
        count = boxes * per_box
        container = rng.choice(CONTAINERS)
        question = f"{p.name} has {boxes} {container} with {per_box} {items} in each."
        lines.append(f"{p.name} has {boxes} * {per_box} = {count} {items}.")
    else:
        count = _num(rng, 4, 3 * max_number)
        question = f"{p.name} has {count} {items}."
    for _ in range(adjustments):
        amount = _num(rng, 1, max_number)
        if rng.random() < 0.5 and count - amount >= 2:
            question += rng.choice([f" {p.Subj} gives {amount} to {other.name}.", f" {p.Subj} loses {amount}."])
            lines.append(f"After that {p.subj} has {count} - {amount} = {count - amount} {items}.")
            count -= amount
        else:
            question += rng.choice([f" {other.name} gives {p.obj} {amount} more.", f" {p.Subj} buys {amount} more."])
            lines.append(f"Then {p.subj} has {count} + {amount} = {count + amount} {items}.")
            count += amount
    # The number of people sharing must divide the count exactly.
    divisors = [d for d in range(2, max(2, max_number) + 1) if count % d == 0 and count // d >= 1]
    if not divisors:
        raise _Reject
    people = rng.choice(divisors)
    question += (f" {p.Subj} shares all the {items} equally among {people} {group}. "
                 f"How many {items} does each of them get?")
    lines.append(f"Each gets {count} / {people} = {count // people} {items}.")
    return _Problem(question, lines, count // people)


def _ages(rng: random.Random, steps: int, max_number: int) -> _Problem:
    """A chain of people whose ages relate to each other's; one age now, in some years, or a sum of two."""
    # steps = relations + (1 if the question asks for a future age or a sum)
    final = "now" if steps == 1 else rng.choice(["now", "future", "sum"])
    relations = steps - (final != "now")
    if relations + 1 > len(NAMES):
        raise _Reject
    names = [n for n, _ in rng.sample(NAMES, relations + 1)]
    ages = [_num(rng, 2, min(max_number, 60))]
    question = f"{names[0]} is {_years(ages[0])} old."
    lines = []
    for i in range(1, relations + 1):
        ref = i - 1 if rng.random() < 0.7 else rng.randrange(i)  # usually the previous person
        base = ages[ref]
        kind = rng.choice(["older", "younger", "times", "half"])
        if kind == "older":
            d = _num(rng, 1, min(max_number, 40))
            age, relation, equation = base + d, f"{_years(d)} older than", f"{base} + {d}"
        elif kind == "younger" and base > 2:
            d = _num(rng, 1, min(max_number, base - 1))
            age, relation, equation = base - d, f"{_years(d)} younger than", f"{base} - {d}"
        elif kind == "half" and base % 2 == 0:
            age, relation, equation = base // 2, "half as old as", f"{base} / 2"
        else:
            factor = rng.choice(list(TIMES_AS_OLD))
            age, relation, equation = base * factor, f"{TIMES_AS_OLD[factor]} as old as", f"{base} * {factor}"
        if age > MAX_AGE:
            raise _Reject
        ages.append(age)
        question += f" {names[i]} is {relation} {names[ref]}."
        lines.append(f"{names[i]} is {equation} = {_years(age)} old.")
    last = names[-1]
    if final == "now":
        question += f" How old is {last}?"
        return _Problem(question, lines, ages[-1])
    if final == "future":
        years = _num(rng, 2, min(max_number, 30))
        question += f" How old will {last} be in {years} years?"
        lines.append(f"In {years} years {last} will be {ages[-1]} + {years} = {ages[-1] + years} years old.")
        return _Problem(question, lines, ages[-1] + years)
    other = rng.randrange(len(names) - 1)
    question += f" What is the sum of {names[other]}'s and {last}'s ages?"
    total = ages[other] + ages[-1]
    lines.append(f"Together they are {ages[other]} + {ages[-1]} = {total} years old.")
    return _Problem(question, lines, total)


def _distance(rng: random.Random, steps: int, max_number: int) -> _Problem:
    """A trip in legs at different speeds; the distance covered (and what is left of the whole trip)."""
    # steps = k legs (speed * hours each) + (1 sum if k >= 2) + (1 if the distance left is asked)
    options = [(k, left) for k in range(1, len(ORDINALS) + 1) for left in (False, True)
               if k + (k >= 2) + left == steps]
    if not options:
        raise _Reject
    k, left = rng.choice(options)
    p = _person(rng)
    moves, move = rng.choice(MOVES)
    unit = rng.choice(DISTANCE_UNITS)
    speeds = [_num(rng, 3, max_number) for _ in range(k)]
    hours = [_num(rng, 1, min(max_number, 10)) for _ in range(k)]
    legs = [v * t for v, t in zip(speeds, hours)]
    total = sum(legs)

    parts = [f"at {v} {unit} per hour for {t} hour{'s' if t > 1 else ''}" for v, t in zip(speeds, hours)]
    question = f"{p.name} {moves} {parts[0]}" + "".join(f", then {part}" for part in parts[1:]) + "."
    if k == 1:
        lines = [f"{p.Subj} covers {speeds[0]} * {hours[0]} = {legs[0]} {unit}."]
    else:
        lines = [f"In the {ORDINALS[i]} part {p.subj} covers {v} * {t} = {d} {unit}."
                 for i, (v, t, d) in enumerate(zip(speeds, hours, legs))]
        lines.append(f"In total {p.subj} covers {' + '.join(map(str, legs))} = {total} {unit}.")
    if not left:
        question += f" How many {unit} does {p.subj} {move}" + (" in total?" if k > 1 else "?")
        return _Problem(question, lines, total)
    trip = total + _num(rng, 1, 2 * max_number)
    question += f" The whole trip is {trip} {unit} long. How many {unit} are left?"
    lines.append(f"There are {trip} - {total} = {trip - total} {unit} left.")
    return _Problem(question, lines, trip - total)


def _remaining(rng: random.Random, steps: int, max_number: int) -> _Problem:
    """Start with a number of items; give some to each of several friends, buy packs, lose some, halve..."""
    p = _person(rng)
    other = _person(rng, exclude=[p.name])
    items = rng.choice(COUNT_ITEMS)
    count = _num(rng, max_number, 4 * max_number)
    question = f"{p.name} has {count} {items}."
    lines: list[str] = []
    left = steps
    while left > 0:
        # Events that fit in the steps left and keep the count positive.
        events = ["lose", "gain"]
        if count % 2 == 0:
            events.append("halve")
        if left >= 2:
            events += ["each", "packs"]
        event = rng.choice(events)
        if event == "each":
            friends = _num(rng, 2, min(max_number, 6))
            most = (count - 1) // friends  # keep at least one item
            if most < 1:
                continue  # too few items to give to everyone: pick another event
            each = _num(rng, 1, min(max_number, most))
            given = friends * each
            question += f" {p.Subj} gives {each} to each of {p.poss} {friends} {rng.choice(GROUPS)}."
            lines.append(f"{p.Subj} gives away {friends} * {each} = {given} {items}.")
            lines.append(f"{p.Subj} has {count} - {given} = {count - given} {items} left.")
            count, left = count - given, left - 2
        elif event == "packs":
            packs, per_pack = _num(rng, 2, max_number), _num(rng, 2, max_number)
            bought = packs * per_pack
            question += f" {p.Subj} buys {packs} packs with {per_pack} {items} in each."
            lines.append(f"The packs hold {packs} * {per_pack} = {bought} {items}.")
            lines.append(f"Now {p.subj} has {count} + {bought} = {count + bought} {items}.")
            count, left = count + bought, left - 2
        elif event == "lose":
            if count < 2:
                continue
            lost = _num(rng, 1, min(max_number, count - 1))
            question += rng.choice([f" {p.Subj} loses {lost} of them.", f" {p.Subj} gives {lost} to {other.name}.",
                                    f" {p.Subj} uses {lost} for a school project."])
            lines.append(f"After that {p.subj} has {count} - {lost} = {count - lost} {items}.")
            count, left = count - lost, left - 1
        elif event == "gain":
            found = _num(rng, 1, max_number)
            question += rng.choice([f" {other.name} gives {p.obj} {found} more.", f" {p.Subj} finds {found} more."])
            lines.append(f"Then {p.subj} has {count} + {found} = {count + found} {items}.")
            count, left = count + found, left - 1
        else:  # halve
            question += f" {p.Subj} gives half of {p.poss} {items} to {other.name}."
            lines.append(f"{p.Subj} keeps {count} / 2 = {count // 2} {items}.")
            count, left = count // 2, left - 1
    question += f" How many {items} does {p.subj} have now?"
    return _Problem(question, lines, count)


# Column arithmetic: a bare question ("What is 347 + 586?") whose worked solution goes digit by digit, from the
# ones up, one line per column with the carry ("7 + 6 = 13, write 3, carry 1."). `steps` is the number of digits of
# the operands (the number of lines), capped by `max_number`. The answers spread over hundreds of values, so a
# guess pays nothing (`guess_accuracy`), and the work is short steps a small model can learn.


def _digits_range(steps: int, max_number: int) -> tuple[int, int]:
    lo, hi = 10 ** (steps - 1) if steps > 1 else 2, min(10**steps - 1, max_number)
    if hi < lo:
        raise _Reject
    return lo, hi


def _column_lines(columns: list[tuple[str, int]]) -> list[str]:
    """One line per column, ones first: ``(expression without the carry, value)`` -> "e + carry = v, write d,
    carry c."; the last column writes its whole value."""
    lines, carry = [], 0
    for i, (expression, value) in enumerate(columns):
        total = value + carry
        expression += f" + {carry}" if carry else ""
        if i == len(columns) - 1:
            lines.append(f"{expression} = {total}, write {total}.")
        else:
            carry = total // 10
            lines.append(f"{expression} = {total}, write {total % 10}" + (f", carry {carry}." if carry else "."))
    return lines


def _addition(rng: random.Random, steps: int, max_number: int) -> _Problem:
    """Two numbers of `steps` digits added column by column."""
    lo, hi = _digits_range(steps, max_number)
    a, b = _num(rng, lo, hi), _num(rng, lo, hi)
    da, db = str(a).zfill(steps)[::-1], str(b).zfill(steps)[::-1]
    lines = _column_lines([(f"{x} + {y}", int(x) + int(y)) for x, y in zip(da, db)])
    return _Problem(f"What is {a} + {b}?", lines, a + b)


def _multiplication(rng: random.Random, steps: int, max_number: int) -> _Problem:
    """A number of `steps` digits times a digit from 2 to 9, digit by digit."""
    lo, hi = _digits_range(steps, max_number)
    a, b = _num(rng, lo, hi), rng.randint(2, 9)
    lines = _column_lines([(f"{x} * {b}", int(x) * b) for x in str(a)[::-1]])
    return _Problem(f"What is {a} * {b}?", lines, a * b)


# The word problems: the default set (``templates=None``).
WORD_TEMPLATES: dict[str, Callable[[random.Random, int, int], _Problem]] = {
    "shopping_total": _shopping_total,
    "unit_price": _unit_price,
    "sharing": _sharing,
    "ages": _ages,
    "distance": _distance,
    "remaining": _remaining,
}
ARITHMETIC_TEMPLATES: dict[str, Callable[[random.Random, int, int], _Problem]] = {
    "addition": _addition,
    "multiplication": _multiplication,
}
TEMPLATES = {**WORD_TEMPLATES, **ARITHMETIC_TEMPLATES}


# ----------------------------------------------------------------------------------------------------------------
# Generated problem sets


def _steps_range(steps: int | tuple[int, int]) -> tuple[int, int]:
    lo, hi = (steps, steps) if isinstance(steps, int) else tuple(steps)
    if not 1 <= lo <= hi:
        raise ValueError(f"steps must be an int >= 1 or a (low, high) range with 1 <= low <= high, not {steps!r}")
    return lo, hi


def generate_problems(
    n: int,
    seed: int = 0,
    split: Literal["train", "test"] = "train",
    steps: int | tuple[int, int] = (1, 3),
    max_number: int = 20,
    templates: Sequence[str] | None = None,
    instruction: Instruction = "system",
    test_fraction: float = TEST_FRACTION,
):
    """``n`` distinct arithmetic word problems of one split, as a ``datasets.Dataset`` (columns: module docstring).

    ``steps``: arithmetic operations per problem (an int, or an inclusive ``(low, high)`` range drawn uniformly);
    ``max_number``: the largest number drawn for quantities, prices, speeds... (answers can be larger);
    ``templates``: names in ``TEMPLATES`` (default: the word problems, ``WORD_TEMPLATES``; for the column arithmetic
    ones, ``steps`` is the number of digits); ``instruction``: how the prompt states the answer format
    (``make_prompt``). Deterministic: the same arguments give the same dataset, and a larger ``n`` extends a smaller
    one. Train and test never share a question, for any seeds, as long as ``test_fraction`` is the same.
    """
    import datasets

    if n < 0:
        raise ValueError(f"n must be >= 0, not {n}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    if max_number < 2:
        raise ValueError(f"max_number must be >= 2, not {max_number}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), not {test_fraction}")
    lo, hi = _steps_range(steps)
    names = list(templates) if templates is not None else list(WORD_TEMPLATES)
    unknown = [t for t in names if t not in TEMPLATES]
    if unknown or not names:
        raise ValueError(f"unknown templates {unknown}; known: {sorted(TEMPLATES)}")

    # A string seed is hashed with SHA-512 by `random`, so the stream is the same in every process and Python run.
    rng = random.Random(f"hf_pipeline.problems/{seed}/{split}")
    rows, seen = [], set()
    attempts, max_attempts = 0, 100 * n + 10_000
    while len(rows) < n:
        attempts += 1
        if attempts > max_attempts:
            raise ValueError(
                f"made only {len(rows)} of {n} distinct {split} problems in {max_attempts} draws "
                f"(steps={steps}, max_number={max_number}, templates={names}): widen the dial"
            )
        n_steps = rng.randint(lo, hi)
        name = rng.choice(names)
        try:
            problem = TEMPLATES[name](rng, n_steps, max_number)
        except _Reject:
            continue
        if problem.question in seen or problem_split(problem.question, test_fraction) != split:
            continue
        seen.add(problem.question)
        answer = str(problem.answer)
        rows.append({
            "prompt": make_prompt(problem.question, instruction),
            "question": problem.question,
            "answer": answer,
            "solution": "\n".join(problem.lines + [answer_line(answer)]),
            "source": f"generated/{name}",
            "steps": len(problem.lines),
        })
    logger.info("generated %d %s problems (steps %d-%d, max_number %d) in %d draws",
                n, split, lo, hi, max_number, attempts)
    return datasets.Dataset.from_list(rows) if rows else datasets.Dataset.from_dict(
        {k: [] for k in ("prompt", "question", "answer", "solution", "source", "steps")})


def worked_problem_conversations(
    n: int,
    seed: int = 0,
    steps: int | tuple[int, int] = (1, 3),
    max_number: int = 20,
    split: Literal["train", "test"] = "train",
    templates: Sequence[str] | None = None,
    instruction: Instruction = "system",
    worked_share: float = 1.0,
):
    """``n`` worked problems as SFT conversations: a ``datasets.Dataset`` with one ``messages`` column.

    Each conversation is exactly the prompt GRPO sends for the same problem (``make_prompt``: by default the system
    message ``SYSTEM_PROMPT`` and the question as the user turn), then the worked solution ending ``#### N`` as the
    assistant's reply, so SFT teaches the format the RL rewards check. The problems are ``generate_problems(n, seed,
    split, steps, max_number, templates, instruction)``: the train split by default, never a test-split question.

    ``worked_share`` < 1: only that share of the problems (drawn at random) shows the worked solution, the others
    answer directly (``#### N`` alone). The model then knows both forms: how often it picks each, and how often each
    is right, is what RL can change.
    """
    import datasets

    if not 0.0 <= worked_share <= 1.0:
        raise ValueError(f"worked_share must be in [0, 1], not {worked_share}")
    problems = generate_problems(n, seed=seed, split=split, steps=steps, max_number=max_number,
                                 templates=templates, instruction=instruction)
    rng = random.Random(f"hf_pipeline.problems/{seed}/{split}/forms")
    messages = [prompt + [{"role": "assistant", "content": solution if rng.random() < worked_share
                           else answer_line(answer)}]
                for prompt, solution, answer in zip(problems["prompt"], problems["solution"], problems["answer"])]
    features = datasets.Features(
        {"messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}]})
    return datasets.Dataset.from_dict({"messages": messages}, features=features)


# ----------------------------------------------------------------------------------------------------------------
# GSM8K

GSM8K_ID = "openai/gsm8k"
GSM8K_CONFIG = "main"

_CALCULATOR_RE = re.compile(r"<<[^<>]*>>")
# A reference answer must be exactly one number: optional minus and $, thousands commas, an optional decimal part.
_PLAIN_NUMBER_RE = re.compile(r"-?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def strip_calculator_annotations(text: str) -> str:
    """``"48/2 = <<48/2=24>>24"`` -> ``"48/2 = 24"``."""
    return _CALCULATOR_RE.sub("", text)


def load_gsm8k(
    mirror: str | None = None,
    split: str = "train",
    limit: int | None = None,
    stats: Counter | None = None,
    instruction: Instruction = "system",
    cache_dir: str | None = None,
    dataset: str = GSM8K_ID,
    name: str | None = GSM8K_CONFIG,
):
    """GSM8K (``openai/gsm8k``, config ``main``) as a problem set (columns: module docstring).

    Read from ``<mirror>/openai/gsm8k`` when the mirror holds it, else from the Hub; ``dataset`` and ``name`` load
    another dataset in GSM8K's format (``question``, ``answer`` ending ``#### N``): a Hub id, tried in the mirror
    first, a local folder, or local ``.jsonl``/``.json``/``.parquet``/``.csv`` files (a path or glob; ``name`` and
    ``split`` are then ignored). ``answer`` is the number after
    ``####`` without commas; ``solution`` is GSM8K's worked answer without the ``<<...>>`` calculator annotations,
    ending with the answer line. Rows are skipped and counted in ``stats`` under ``missing_question``,
    ``missing_answer`` (no ``####`` or nothing after it) or ``unparseable_answer`` (not a single number), a local
    JSON file's broken lines under ``bad_json_line``; kept rows are counted under ``kept``. ``limit`` keeps the first
    N usable rows. ``cache_dir`` is passed to ``datasets`` (the source is opened by ``refs.open_dataset``).
    """
    import datasets

    from .refs import Source, open_dataset

    logger.info("loading %s (%s) %s split (mirror: %s)", dataset, name, split, mirror)
    stats = stats if stats is not None else Counter()
    raw = open_dataset(Source(dataset, name=name, split=split), mirror, what="problems", stats=stats,
                       cache_dir=cache_dir)
    rows = []
    for row in raw:
        if limit is not None and len(rows) >= limit:
            break
        question = (row.get("question") or "").strip()
        full = row.get("answer") or ""
        if not question:
            stats["missing_question"] += 1
            continue
        if ANSWER_PREFIX not in full or not full.rsplit(ANSWER_PREFIX, 1)[1].strip():
            stats["missing_answer"] += 1
            continue
        worked, final = full.rsplit(ANSWER_PREFIX, 1)
        final = final.strip()
        if not _PLAIN_NUMBER_RE.fullmatch(final):
            stats["unparseable_answer"] += 1
            continue
        answer = normalize_number(final)
        worked = strip_calculator_annotations(worked).strip()
        rows.append({
            "prompt": make_prompt(question, instruction),
            "question": question,
            "answer": answer,
            "solution": f"{worked}\n{answer_line(answer)}" if worked else answer_line(answer),
            "source": "gsm8k" if dataset == GSM8K_ID else dataset,
            "steps": len(_CALCULATOR_RE.findall(full)),
        })
        stats["kept"] += 1
    skipped = {k: v for k, v in stats.items() if k != "kept"}
    if skipped:
        logger.warning("%s %s: skipped rows %s", dataset, split, skipped)
    return datasets.Dataset.from_list(rows)
