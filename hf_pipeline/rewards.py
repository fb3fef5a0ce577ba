"""Rewards for RL on verifiable problems: answer extraction, correctness, format and length, for TRL's GRPOTrainer.

The answer format
-----------------
Every problem set in ``hf_pipeline.problems`` asks for, and every worked solution ends with, one final line::

    #### 42

that is ``ANSWER_PREFIX`` (four hashes, the GSM8K convention), a space and the number: no units, no ``$``, digits
with an optional leading ``-``, optional ``,`` thousands separators and an optional decimal part. GSM8K's own
reference answers already end this way, so SFT on GSM8K and RL on our generated problems train one format.

Extraction (``extract_answer``) is deliberately more lenient than the format, so that correctness and format are
separate signals: it prefers the ``####`` line, then falls back to ``\\boxed{N}``, then to "the answer is N", then to
the last number in the text; it reads ``1,234``, ``$12``, ``12 dollars``, ``5 cm``, ``-7``, ``3.50`` (== ``3.5``),
``3/4`` and ``\\frac{3}{4}``. Numbers are compared exactly as fractions (with a 1e-6 relative tolerance for
rounded decimals). Where the final answer is a LaTeX expression our number parser cannot evaluate (``\\boxed{2^{3}}``,
``\\sqrt{16}``), ``math-verify`` decides, if installed; it is never consulted for plain numbers.

Reward functions
----------------
All have TRL's signature ``fn(completions, answer, **kwargs) -> list[float]``: ``completions`` are strings or
conversational message lists (``[{"role": "assistant", "content": "..."}]``); the dataset's extra columns (here
``answer``) arrive as keyword lists; TRL also passes ``prompts``, ``completion_ids`` and more, which are ignored
unless used. ``checked_correctness`` is ``correctness`` that counts only answers the reply's own arithmetic
reaches (``work_checks``): a guard against a small policy that learns to guess frequent answers.
``REWARD_FUNCTIONS`` names them and ``build_rewards({"correctness": 1.0, "format": 0.2})`` returns
``(reward_funcs, reward_weights)`` for ``GRPOTrainer(reward_funcs=...)`` and ``GRPOConfig(reward_weights=...)``.
"""

from __future__ import annotations

import ast
import difflib
import logging
import re
import threading
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Any, Callable, Mapping, Sequence

logger = logging.getLogger("hf_pipeline")

# ----------------------------------------------------------------------------------------------------------------
# The answer format

ANSWER_PREFIX = "####"
SYSTEM_PROMPT = (
    "Solve the math problem step by step, writing each intermediate result on its own line. "
    f"End with a final line of the form '{ANSWER_PREFIX} <number>' containing only the final numeric answer, "
    f"e.g. '{ANSWER_PREFIX} 42'."
)
# The same instruction, for prompts without a system message (appended to the question).
QUESTION_SUFFIX = f"\n\nShow your work, then give the final answer on the last line as '{ANSWER_PREFIX} <number>'."


def answer_line(answer: str | int | float | Fraction) -> str:
    """The required final line for an answer, e.g. ``answer_line(42) == "#### 42"``."""
    normalized = normalize_number(str(answer))
    if normalized is None:
        raise ValueError(f"not a number: {answer!r}")
    return f"{ANSWER_PREFIX} {normalized}"


# ----------------------------------------------------------------------------------------------------------------
# Numbers

# One number as written in prose or LaTeX-free math: an optional minus (not a subtraction: not right after a word,
# digit or bracket), an optional $, digits with proper thousands commas or plain digits, an optional decimal part,
# and an optional "/denominator".
_NUMBER_RE = re.compile(
    r"""
    (?:(?<![\w)\]}])(?P<sign>[-−–])\s?)?      # minus sign (unicode minus and en dash too)
    \$?\s?                                      # $12, -$12, $ 12
    (?<![\w.])                                  # not glued to a word or a decimal point
    (?P<int>\d{1,3}(?:,\d{3})+(?!\d)|\d+)       # 1,234,567 or 1234567
    (?P<dec>\.\d+)?                             # .5 (a sentence's full stop is not a decimal part)
    (?:\s?/\s?(?P<den>\d+)(?!\d))?                # 3/4
    """,
    re.VERBOSE,
)
# "$.50" style decimals without an integer part.
_BARE_DECIMAL_RE = re.compile(r"(?<![\w.])(?P<sign>-)?\$?\.(?P<dec>\d+)")

_LATEX_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]+?)\s*\}\s*\{\s*([^{}]+?)\s*\}")
_LATEX_TEXT_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")


def _clean_latex(text: str) -> str:
    """LaTeX spellings of plain numbers as plain text: ``\\frac{3}{4}`` -> ``3/4``, ``1{,}234`` -> ``1,234``."""
    text = _LATEX_FRAC_RE.sub(r"\1/\2", text)
    text = _LATEX_TEXT_RE.sub(r"\1", text)
    text = text.replace("{,}", ",").replace("\\$", "$").replace("\\%", "%").replace("\\!", "").replace("\\,", "")
    return text


def _match_to_fraction(m: re.Match) -> Fraction | None:
    value = Fraction(m.group("int").replace(",", "") + (m.group("dec") or ""))
    if m.group("den") is not None:
        den = int(m.group("den"))
        if den == 0:
            return None
        value /= den
    return -value if m.group("sign") else value


def _numbers(text: str) -> list[Fraction]:
    """Every number in ``text``, in order."""
    found = []
    for m in _NUMBER_RE.finditer(text):
        value = _match_to_fraction(m)
        if value is not None:
            found.append((m.start(), value))
    for m in _BARE_DECIMAL_RE.finditer(text):
        value = Fraction("0." + m.group("dec"))
        found.append((m.start(), -value if m.group("sign") else value))
    return [value for _, value in sorted(found, key=lambda pair: pair[0])]


def to_fraction(text: str | int | float | Fraction) -> Fraction | None:
    """The first number in ``text`` as an exact fraction, or None. ``"$1,234.50 total"`` -> ``Fraction(2469, 2)``."""
    if isinstance(text, (int, Fraction)):
        return Fraction(text)
    if isinstance(text, float):
        return Fraction(str(text))
    numbers = _numbers(_clean_latex(str(text)))
    return numbers[0] if numbers else None


def format_number(value: Fraction) -> str:
    """Canonical text of a number: ``42``, ``-7``, ``3.5``, or ``1/3`` when the decimal expansion does not end."""
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    while den % 2 == 0:
        den //= 2
    while den % 5 == 0:
        den //= 5
    if den != 1:  # 1/3, 2/7: no finite decimal, keep the fraction
        return f"{value.numerator}/{value.denominator}"
    with localcontext() as ctx:
        ctx.prec = 100  # exact for any terminating decimal of realistic size
        text = format((Decimal(value.numerator) / Decimal(value.denominator)).normalize(), "f")
    return text


def normalize_number(text: str | int | float | Fraction) -> str | None:
    """Canonical string of the first number in ``text`` (``"1,234"`` -> ``"1234"``, ``"$3.50"`` -> ``"3.5"``,
    ``"12 dollars"`` -> ``"12"``, ``"\\frac{1}{2}"`` -> ``"0.5"``), or None when there is no number."""
    value = to_fraction(text)
    return None if value is None else format_number(value)


def numbers_equal(a: str | Fraction | None, b: str | Fraction | None, rel_tol: float = 1e-6) -> bool:
    """Numeric equality of two answers (strings are parsed with ``to_fraction``); None never equals anything."""
    fa = a if isinstance(a, Fraction) else (to_fraction(a) if a is not None else None)
    fb = b if isinstance(b, Fraction) else (to_fraction(b) if b is not None else None)
    if fa is None or fb is None:
        return False
    if fa == fb:
        return True
    # Rounded decimals of non-terminating answers (0.333333 for 1/3).
    return abs(fa - fb) <= Fraction(rel_tol) * max(1, abs(fb))


# ----------------------------------------------------------------------------------------------------------------
# Extraction

_HASHES_RE = re.compile(re.escape(ANSWER_PREFIX) + r"[ \t]*(?P<rest>[^\n]*)")
_ANSWER_IS_RE = re.compile(r"(?:final\s+answer|answer)\s*(?:is|:|=|was)\s*:?\s*(?P<rest>[^\n]*)", re.IGNORECASE)
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")


def _last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (braces balanced), or None."""
    starts = [m.end() for m in _BOXED_RE.finditer(text)]
    if not starts:
        return None
    start = starts[-1]
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return text[start:]  # unclosed: whatever follows


def answer_segments(text: str) -> list[tuple[str, str]]:
    """The places that state a final answer, most preferred first: ``[("hashes", "42"), ("boxed", ...), ...]``.

    ``hashes``: the rest of the line after the last ``####`` (or the next non-empty line when it is empty);
    ``boxed``: the content of the last ``\\boxed{}``; ``answer_is``: the rest of the line after the last
    "answer is" / "answer:". Kinds that do not occur are left out.
    """
    segments = []
    hashes = list(_HASHES_RE.finditer(text))
    if hashes:
        rest = hashes[-1].group("rest").strip()
        if not rest:
            following = [line.strip() for line in text[hashes[-1].end():].splitlines() if line.strip()]
            rest = following[0] if following else ""
        segments.append(("hashes", rest))
    boxed = _last_boxed(text)
    if boxed is not None:
        segments.append(("boxed", boxed.strip()))
    answer_is = list(_ANSWER_IS_RE.finditer(text))
    if answer_is:
        segments.append(("answer_is", answer_is[-1].group("rest").strip()))
    return segments


def _segment_number(segment: str) -> Fraction | None:
    """The number a final-answer segment states: the first one, or the result when it is an equation (``3 + 4 = 7``)."""
    segment = _clean_latex(segment)
    if "=" in segment:
        segment = segment.rsplit("=", 1)[1]
    numbers = _numbers(segment)
    return numbers[0] if numbers else None


def extract_answer(text: str | None, strict: bool = False) -> str | None:
    """The final numeric answer of a model output or reference solution, normalized (``normalize_number``), or None.

    Prefers the ``#### N`` line; else ``\\boxed{N}``; else "the answer is N"; else the last number in the text.
    ``strict=True`` accepts only the ``#### N`` form (no fallbacks).
    """
    if not text:
        return None
    for kind, segment in answer_segments(text):
        if strict and kind != "hashes":
            continue
        value = _segment_number(segment)
        if value is not None:
            return format_number(value)
    if strict:
        return None
    numbers = _numbers(_clean_latex(text))
    return format_number(numbers[-1]) if numbers else None


def reference_answer(reference: str | int | float | None) -> str | None:
    """A reference as a normalized number: a bare answer (``"1,234"``, ``72``) or a GSM8K solution (``... #### 72``)."""
    if reference is None:
        return None
    if isinstance(reference, str) and ANSWER_PREFIX in reference:
        return extract_answer(reference, strict=True)
    return normalize_number(reference)


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or a conversational list of messages (the assistant turns, joined).

    Message ``content`` may be a string or a list of parts (``[{"type": "text", "text": ...}]``).
    """
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    messages = list(completion)
    assistant = [m for m in messages if isinstance(m, dict) and m.get("role", "assistant") == "assistant"]
    parts = []
    for message in assistant or messages:
        content = message.get("content") if isinstance(message, dict) else message
        if isinstance(content, list):
            content = "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
        parts.append(content or "")
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------------------------
# math-verify, where it fits: final answers that are LaTeX expressions rather than numbers

# A LaTeX command (other than the number spellings _clean_latex rewrites), a power, or braces.
_EXPRESSION_RE = re.compile(r"\\(?!d?frac\b|tfrac\b|text\b|\$|%|,|!)[a-zA-Z]+|\^|[{}]")

try:  # optional: setup.cfg lists it, but the plain-number path never needs it
    import math_verify as _math_verify
except ImportError:  # pragma: no cover - depends on the environment
    _math_verify = None
else:
    # Off the main thread we turn math-verify's SIGALRM timeouts off on purpose (below); it would warn on every call.
    for _name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(_name).addFilter(lambda record: "Timeout is disabled" not in record.getMessage())

# Longer final-answer segments are not expressions worth a symbolic check (and bound its time without a timeout).
_MATH_VERIFY_MAX_CHARS = 200


def math_verify_available() -> bool:
    return _math_verify is not None


def _math_verify_equal(gold: str, expression: str) -> bool:
    """Whether the LaTeX ``expression`` equals ``gold`` according to math-verify (False if it is not installed)."""
    if _math_verify is None or len(expression) > _MATH_VERIFY_MAX_CHARS:
        return False
    # math-verify's timeouts use SIGALRM, which only the main thread may set: no timeout elsewhere.
    in_main = threading.current_thread() is threading.main_thread()
    timeout = 5 if in_main else None
    try:
        gold_parsed = _math_verify.parse(gold, parsing_timeout=timeout)
        pred_parsed = _math_verify.parse(f"${expression}$", parsing_timeout=timeout)
        return bool(pred_parsed) and bool(_math_verify.verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except Exception as e:  # a parser crash is a wrong answer, not a failed training step
        logger.debug("math-verify failed on %r: %s", expression, e)
        return False


def is_correct(text: str, reference: str | int | float | None, use_math_verify: bool = True) -> bool:
    """Whether the final answer in ``text`` equals ``reference`` (a number or a full GSM8K solution)."""
    gold = reference_answer(reference)
    if gold is None:
        return False
    if numbers_equal(extract_answer(text), gold):
        return True
    if use_math_verify and _math_verify is not None:
        segments = answer_segments(text)
        if segments and _EXPRESSION_RE.search(segments[0][1]):
            return _math_verify_equal(gold, segments[0][1])
    return False


# ----------------------------------------------------------------------------------------------------------------
# Reward functions (TRL signature)

_warned_bad_reference = False


def correctness_reward(completions: Sequence[Any], answer: Sequence[Any], **kwargs) -> list[float]:
    """1.0 where the completion's final answer equals the reference ``answer`` numerically, else 0.0.

    Extraction is lenient (see ``extract_answer``); the format is rewarded separately by ``format_reward``.
    When TRL passes ``log_metric``, the fraction of completions with no extractable answer is logged too.
    """
    global _warned_bad_reference
    if len(completions) != len(answer):
        raise ValueError(f"{len(completions)} completions but {len(answer)} answers")
    rewards, no_answer = [], 0
    for completion, reference in zip(completions, answer):
        text = completion_text(completion)
        if reference_answer(reference) is None and not _warned_bad_reference:
            logger.warning("correctness_reward: reference answer %r is not a number; scored 0", reference)
            _warned_bad_reference = True
        no_answer += extract_answer(text) is None
        rewards.append(1.0 if is_correct(text, reference) else 0.0)
    log_metric = kwargs.get("log_metric")
    if callable(log_metric) and rewards:
        log_metric("correctness/no_answer_frac", no_answer / len(rewards))
    return rewards


# The required last line: "#### " and a plain number (digits, thousands commas, decimals, a leading minus).
_STRICT_LINE_RE = re.compile(re.escape(ANSWER_PREFIX) + r" ?-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def format_score(text: str) -> float:
    """How well ``text`` follows the answer format (the rules of ``format_reward``)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    hash_lines = [line for line in lines if ANSWER_PREFIX in line]
    # 1.0: the last line is exactly "#### N", and it is the only answer line.
    if lines and _STRICT_LINE_RE.fullmatch(lines[-1]) and len(hash_lines) == 1:
        return 1.0
    # 0.5: a "####" line with a number, but not clean: text after it, units or $, several answer lines.
    if extract_answer(text, strict=True) is not None:
        return 0.5
    # 0.25: no usable "####" line, but another explicit final answer (\boxed{N}, "the answer is N").
    if any(kind != "hashes" and _segment_number(segment) is not None for kind, segment in answer_segments(text)):
        return 0.25
    return 0.0


def format_reward(completions: Sequence[Any], **kwargs) -> list[float]:
    """Reward for the answer format, independent of correctness.

    1.0: the completion ends with the line ``#### N`` (a plain number) and has no other ``####`` line;
    0.5: there is a ``####`` line with a number but it is not clean (text after it, ``$``/units on it, several);
    0.25: no usable ``####`` line, but ``\\boxed{N}`` or "the answer is N" states an answer;
    0.0: no explicit final answer (a number merely somewhere in the text does not count).
    """
    return [format_score(completion_text(c)) for c in completions]


# "a op b = c" in a reply: an expression of numbers (optionally $-prefixed, with thousands commas) joined by
# + - * / x and parentheses, then "=" and a number or fraction; not part of a longer expression with words in it
# ("60 students x 2/3 = 40" is prose, not the equation "2/3 = 40"). Evaluated exactly with fractions.
_NUM = r"\$?\d[\d,]*(?:\.\d+)?"
_NOT_AFTER = r"(?<![\w.,$*/+×÷(=-])(?<![*/+×÷(=-] )(?<!\sx )"
_EQUATION_RE = re.compile(
    rf"{_NOT_AFTER}((?:\(\s*)*{_NUM}(?:\s*\)*\s*[-+*/x×÷]\s*(?:\(\s*)*{_NUM}\s*\)*)+)\s*=\s*"
    rf"(-?{_NUM}(?:/\d+)?)(?![\w.]*\w)"
)


def _evaluate(expression: str) -> Fraction | None:
    """The value of an arithmetic expression of numbers, + - * / (x, × and ÷ too) and parentheses, or None."""
    text = expression.replace("$", "").replace(",", "").replace("×", "*").replace("÷", "/")
    text = re.sub(r"(?<=[\d)\s])x(?=[\s\d(])", "*", text)
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return None
    ops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Div: lambda a, b: a / b}

    def value(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return Fraction(str(node.value))
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return ops[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        raise ValueError(node)

    try:
        return value(tree.body)
    except (ValueError, ZeroDivisionError):
        return None


_RESULT_RE = re.compile(rf"=\s*(-?{_NUM}(?:/\d+)?)")


def equations(text: str) -> list[tuple[str, Fraction | None, Fraction | None]]:
    """The bare equations ``a op b = c`` in ``text``, in order: ``(expression, its value, the stated result)``,
    the expression with single spaces (``"5 * 3"``), a value ``None`` where it cannot be evaluated."""
    return [(" ".join(m.group(1).split()), _evaluate(m.group(1)), _evaluate(m.group(2)))
            for m in _EQUATION_RE.finditer(text)]


def work_checks(text: str) -> bool:
    """Whether the shown work supports the final answer: the final answer (``extract_answer``) is the result of a
    computation written in the text (``... = N``), and every bare equation ``a op b = c`` in it is right.

    Prose between the numbers ("5 snakes/jaguar * 6 jaguars = 30 snakes", GSM8K's style) is not parsed; the
    equations that are pure arithmetic (all of ours, most of GSM8K's) are checked exactly.
    """
    for _, value, stated in equations(text):
        if value is None or stated is None or not numbers_equal(value, stated):
            return False
    final_answer = to_fraction(extract_answer(text) or "")
    results = (_evaluate(m.group(1)) for m in _RESULT_RE.finditer(text))
    return final_answer is not None and any(numbers_equal(final_answer, r) for r in results if r is not None)


def shows_work(text: str) -> bool:
    """Whether a reply shows intermediate results: an equation ``a op b = c`` before its final answer line (a
    direct answer, ``#### 933`` alone, shows none)."""
    before = text.split(ANSWER_PREFIX, 1)[0]
    return bool(_EQUATION_RE.search(before))


def worked_reward(completions: Sequence[Any], **kwargs) -> list[float]:
    """1.0 where the completion shows intermediate results (``shows_work``), else 0.0. With weight 0 it rewards
    nothing and its logged mean (``rewards/worked_reward/mean``) is the share of worked replies over training."""
    return [float(shows_work(completion_text(c))) for c in completions]


def checked_correctness_reward(completions: Sequence[Any], answer: Sequence[Any], **kwargs) -> list[float]:
    """1.0 where the final answer is right *and* the work shown reaches it (``work_checks``), else 0.0.

    A guard against the cheapest reward hack of a small policy: on problems with small answers, a reply that
    guesses a frequent answer after wrong arithmetic ("3 * 3 = 15 ... #### 15") is often right by luck, and
    ``correctness_reward`` reinforces the guess; here only answers the written arithmetic arrives at count.
    """
    right = correctness_reward(completions, answer)
    return [r if r and work_checks(completion_text(c)) else 0.0 for r, c in zip(right, completions)]


class LengthPenalty:
    """A reward that penalises completions longer than ``target`` ``unit``s (``"chars"`` or ``"tokens"``).

    reward = -alpha * min(max_penalty, max(0, length - target) / target): 0 up to the target, -alpha at twice it,
    never below -alpha * max_penalty. ``"tokens"`` counts the ``completion_ids`` TRL passes to reward functions.
    A class rather than a closure so that it pickles (TRL's async GRPO rollout worker sends reward functions to a
    spawned process), with a ``__name__`` for TRL's logs (``rewards/length_penalty/mean``).
    """

    __name__ = "length_penalty"

    def __init__(self, target: int = 1000, unit: str = "chars", alpha: float = 1.0, max_penalty: float = 1.0):
        if unit not in ("chars", "tokens"):
            raise ValueError(f"unit must be 'chars' or 'tokens', not {unit!r}")
        if target <= 0:
            raise ValueError(f"target must be positive, not {target}")
        self.target, self.unit, self.alpha, self.max_penalty = target, unit, alpha, max_penalty

    def __call__(self, completions: Sequence[Any], completion_ids: Sequence[Sequence[int]] | None = None,
                 **kwargs) -> list[float]:
        if self.unit == "tokens":
            if completion_ids is None:
                raise ValueError("length_penalty(unit='tokens') needs completion_ids (TRL passes them)")
            lengths = [len(ids) for ids in completion_ids]
        else:
            lengths = [len(completion_text(c)) for c in completions]
        return [-self.alpha * min(self.max_penalty, (n - self.target) / self.target) if n > self.target else 0.0
                for n in lengths]

    def __repr__(self) -> str:
        return (f"LengthPenalty(target={self.target}, unit={self.unit!r}, alpha={self.alpha}, "
                f"max_penalty={self.max_penalty})")


def make_length_penalty(
    target: int = 1000, unit: str = "chars", alpha: float = 1.0, max_penalty: float = 1.0
) -> LengthPenalty:
    """A length-penalty reward function (see ``LengthPenalty``), e.g. ``make_length_penalty(400, alpha=0.5)``."""
    return LengthPenalty(target=target, unit=unit, alpha=alpha, max_penalty=max_penalty)


length_penalty = make_length_penalty()

REWARD_FUNCTIONS: dict[str, Callable[..., list[float]]] = {
    "correctness": correctness_reward,
    "checked_correctness": checked_correctness_reward,
    "format": format_reward,
    "length": length_penalty,
    "worked": worked_reward,
}


def build_rewards(
    weights: Mapping[str, float], length_options: Mapping[str, Any] | None = None
) -> tuple[list[Callable[..., list[float]]], list[float]]:
    """Reward functions and their weights for GRPO, from ``{name: weight}`` (names in ``REWARD_FUNCTIONS``).

    ``length_options`` holds ``make_length_penalty`` arguments for ``"length"`` (e.g. ``{"target": 400}``).
    A weight of 0 keeps a function for logging only. Returns ``(funcs, weights)`` for
    ``GRPOTrainer(reward_funcs=funcs)`` and ``GRPOConfig(reward_weights=weights)``.
    """
    if not weights:
        raise ValueError(f"name at least one reward function: {sorted(REWARD_FUNCTIONS)}")
    funcs, weight_list = [], []
    for name, weight in weights.items():
        if name not in REWARD_FUNCTIONS:
            close = difflib.get_close_matches(name, list(REWARD_FUNCTIONS), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"unknown reward function '{name}'{hint}; known: {sorted(REWARD_FUNCTIONS)}")
        func = REWARD_FUNCTIONS[name]
        if name == "length" and length_options:
            func = make_length_penalty(**length_options)
        funcs.append(func)
        weight_list.append(float(weight))
    return funcs, weight_list
