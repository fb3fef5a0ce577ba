"""Answer extraction and the GRPO rewards on real GSM8K solutions and realistic model outputs, and the shipped
``gsm8k_accuracy`` evaluate metric."""

from __future__ import annotations

import json
import pickle
import threading
from pathlib import Path

import pytest

from hf_pipeline.rewards import (
    ANSWER_PREFIX, REWARD_FUNCTIONS, answer_line, build_rewards, checked_correctness_reward, completion_text,
    correctness_reward, equations, extract_answer, format_reward, is_correct, make_length_penalty,
    math_verify_available, normalize_number, numbers_equal, reference_answer, work_checks,
)

from conftest import MIRROR

GSM8K_TRAIN = MIRROR / "openai" / "gsm8k" / "main" / "train.jsonl"
METRICS = Path(__file__).resolve().parents[1] / "hf_pipeline" / "metrics"


@pytest.fixture(scope="module")
def gsm8k() -> list[dict]:
    return [json.loads(line) for line in GSM8K_TRAIN.read_text().splitlines()]


def final(row: dict) -> str:
    """The reference number of a GSM8K row, as written after ####."""
    return row["answer"].rsplit("####", 1)[1].strip()


# ----------------------------------------------------------------------------------------------------------------
# Numbers and extraction


@pytest.mark.parametrize("text, expected", [
    ("42", "42"), ("1,234", "1234"), ("1,234,567.50", "1234567.5"), ("$12", "12"), ("12 dollars", "12"),
    ("5 cm", "5"), ("-7", "-7"), ("−7", "-7"), ("-$5", "-5"), ("3.50", "3.5"), ("0.25", "0.25"), ("$.50", "0.5"),
    ("3/4", "0.75"), ("1/3", "1/3"), ("\\frac{3}{4}", "0.75"), ("\\dfrac{10}{4}", "2.5"), ("1{,}000", "1000"),
    ("50%", "50"), ("-0", "0"), ("007", "7"), ("no number", None), ("", None),
])
def test_normalize_number(text, expected):
    assert normalize_number(text) == expected


def test_numbers_equal():
    assert numbers_equal("3.50", "3.5") and numbers_equal("1,000", "1000") and numbers_equal("$18", "18.00")
    assert numbers_equal("0.333333", "1/3")  # a rounded decimal of a non-terminating answer
    assert not numbers_equal("0.33", "1/3") and not numbers_equal("18", "-18") and not numbers_equal(None, "1")
    assert not numbers_equal("12", "13")


@pytest.mark.parametrize("text, expected", [
    # the required format, alone or after reasoning
    ("#### 72", "72"),
    ("Natalia sold 48/2 = 24 clips in May.\nShe sold 48+24 = 72 clips.\n#### 72", "72"),
    # #### wins over numbers and other answer statements elsewhere
    ("First 3 + 4 = 7, the answer is 7.\n#### 8", "8"),
    ("#### 5\n\\boxed{7}", "5"),
    # text, units or $ after the answer on the #### line, or lines after it
    ("#### 18 dollars", "18"), ("#### $1,080.", "1080"), ("####72", "72"), ("#### 72\nI hope this helps! 100%", "72"),
    ("#### -3", "-3"), ("The temperature drops.\n#### −12 degrees", "-12"), ("#### 3.50", "3.5"),
    ("#### 3 + 4 = 7", "7"),  # an equation on the answer line: its result
    ("####\n42", "42"),  # the number on the next line
    # fallbacks, in order: \boxed{}, "answer is", last number
    ("So the total is \\boxed{1,234}.", "1234"), ("Thus $\\boxed{\\frac{1}{2}}$ of the pie.", "0.5"),
    ("The answer is 15 apples, since 3 * 5 = 15.", "15"), ("Final answer: $2,000", "2000"),
    ("The answer is: 10 - 4 = 6", "6"),
    ("He pays 3 * 4 = 12 dollars, then 12 + 8 = 20 dollars in total.", "20"),
    ("It got colder by 5 degrees, to -3.", "-3"), ("5-3 = 2", "2"),
    # nothing to extract
    ("I don't know.", None), ("", None), (None, None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_answer_strict_only_reads_the_answer_line():
    assert extract_answer("The answer is 7.", strict=True) is None
    assert extract_answer("\\boxed{7}", strict=True) is None
    assert extract_answer("blah\n#### 7", strict=True) == "7"


def test_extract_answer_on_every_real_gsm8k_solution(gsm8k):
    for row in gsm8k:
        expected = final(row).replace(",", "")
        assert extract_answer(row["answer"]) == expected
        assert extract_answer(row["answer"], strict=True) == expected
        assert reference_answer(row["answer"]) == expected == reference_answer(final(row))
    # GSM8K has commas and negatives among its answers: both exercised above
    assert any("," in final(r) for r in gsm8k) and any(final(r).startswith("-") for r in gsm8k)


def test_extract_answer_without_the_answer_line_falls_back_to_the_last_result(gsm8k):
    """Real GSM8K solutions with the #### line removed: the last calculator result is (almost always) the answer."""
    agree = 0
    rows = gsm8k[:1000]
    for row in rows:
        body = row["answer"].rsplit("####", 1)[0]
        agree += numbers_equal(extract_answer(body), final(row))
    assert agree / len(rows) > 0.9


# ----------------------------------------------------------------------------------------------------------------
# Rewards


def test_correctness_reward_on_real_solutions_and_chat_completions(gsm8k):
    rows = gsm8k[:200]
    solutions = [r["answer"] for r in rows]
    answers = [final(r) for r in rows]
    assert correctness_reward(solutions, answer=answers) == [1.0] * 200
    # conversational completions, as TRL passes them for chat prompts, and full GSM8K answers as references
    chats = [[{"role": "assistant", "content": s}] for s in solutions]
    assert correctness_reward(chats, answer=solutions) == [1.0] * 200
    # someone else's answer is wrong (unless it happens to be the same number)
    shifted = answers[1:] + answers[:1]
    expected = [1.0 if numbers_equal(a, b) else 0.0 for a, b in zip(answers, shifted)]
    assert correctness_reward(solutions, answer=shifted) == expected
    assert sum(expected) < 20


def test_correctness_reward_on_realistic_outputs():
    completions = [
        "She has 12 + 6 = 18 apples.\n#### 18",  # right
        "She has 12 + 6 = 18 apples.\n#### 18 apples\nLet me know if you need more help.",  # right, sloppy format
        "She has 12 + 6 = 18 apples. The answer is 18.",  # right, no #### line
        "She has 12 + 5 = 17 apples.\n#### 17",  # wrong
        "I think it's about eighteen.",  # no number
        [{"role": "assistant", "content": "Total: $1,250.00\n#### 1,250"}],  # chat, commas, decimals
        [{"role": "assistant", "content": [{"type": "text", "text": "#### -4"}]}],  # content parts
        "",  # empty completion
    ]
    answers = ["18", "18", "18", "18", "18", "1250", "-4", "3"]
    assert correctness_reward(completions, answer=answers) == [1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    # an unusable reference scores 0 rather than crashing a training step
    assert correctness_reward(["#### 3"], answer=["n/a"]) == [0.0]
    with pytest.raises(ValueError, match="completions"):
        correctness_reward(["#### 3", "#### 4"], answer=["3"])


@pytest.mark.parametrize("text, expected", [
    # replies of the tiny SFT model (runs/tiny/sft, greedy, held-out generated problems)
    ("Lucas is 5 * 3 = 15 years old.\n#### 15", True),
    ("Lucas is 5 * 3 = 10 years old.\n#### 15", False),  # right answer, wrong arithmetic: a lucky guess
    ("Lena is 4 + 4 = 8 years old.\n#### 6", False),  # the answer is not what the work reached
    ("Each gets 9 / 2 = 2 candies.\n#### 2", False),  # 9 / 2 is 4.5
    ("Lena is 1 * 1 = 1 year old.\n#### 1", True),  # consistent, whatever the question was
    # GSM8K-style work: several steps, $ and commas, x for times, fractions, prose between numbers
    ("5 - 2 = 3\n3 * 2 = 6\n#### 6", True),
    ("5 - 2 = 3\n3 * 2 = 7\n#### 7", False),  # the last step is wrong
    ("He pays $6 / 2 = $3 each.\n#### 3", True),
    ("1,000 * 2 = 2,000 grams\n#### 2000", True),
    ("(2 + 3) x 4 = 20\n#### 20", True),
    ("1/2 * 1/2 = 1/4 of the tank\n#### 0.25", True),
    ("There are 60 students x 2/3 = 40 students.\n#### 40", True),  # not the equation "2/3 = 40"
    ("5 snakes/jaguar * 6 jaguars = 30 snakes\n#### 30", True),  # prose: the result is still stated
    ("The answer is 15.\n#### 15", False),  # no work shown
    ("", False),
])
def test_work_checks(text, expected):
    assert work_checks(text) is expected


def test_work_checks_every_generated_solution_and_nearly_every_gsm8k_solution(gsm8k):
    from hf_pipeline.problems import generate_problems, strip_calculator_annotations

    for steps, max_number in [(1, 5), (2, 20), ((1, 3), 50)]:
        solutions = generate_problems(200, seed=0, split="train", steps=steps, max_number=max_number)["solution"]
        assert all(work_checks(s) for s in solutions)
    rows = gsm8k[:2000]
    passed = sum(work_checks(strip_calculator_annotations(r["answer"])) for r in rows) / len(rows)
    # the rest state the answer only in prose ("20 = A") or in other units than "####" (cents vs dollars)
    assert passed > 0.95


def test_equations_parse_expression_value_and_stated_result():
    from fractions import Fraction

    text = "He covers 3 *  5 = 15 km.\nEach gets 9 / 2 = 4.\n(2 + 3) x $4 = $20\nThere are 60 students x 2/3 = 40."
    assert equations(text) == [("3 * 5", 15, 15), ("9 / 2", Fraction(9, 2), 4), ("(2 + 3) x $4", 20, 20)]
    assert equations("The answer is 15.\n#### 15") == []


def test_checked_correctness_counts_only_answers_the_work_reaches():
    completions = ["Lucas is 5 * 3 = 15 years old.\n#### 15", "Lucas is 5 * 3 = 10 years old.\n#### 15",
                   [{"role": "assistant", "content": "He has 2 + 3 = 5 apples.\n#### 5"}], "#### 15"]
    answers = ["15", "15", "6", "15"]
    assert correctness_reward(completions, answer=answers) == [1.0, 1.0, 0.0, 1.0]
    assert checked_correctness_reward(completions, answer=answers) == [1.0, 0.0, 0.0, 0.0]


def test_correctness_logs_the_no_answer_rate_through_trl_log_metric():
    logged = {}
    correctness_reward(["#### 1", "nothing", "#### 3", "no"], answer=["1", "2", "3", "4"],
                       log_metric=lambda name, value: logged.__setitem__(name, value))
    assert logged == {"correctness/no_answer_frac": 0.5}


@pytest.mark.skipif(not math_verify_available(), reason="math-verify is not installed")
def test_math_verify_decides_only_latex_expressions():
    # LaTeX expressions our number parser cannot evaluate
    assert is_correct("So the answer is \\boxed{2^{3}}", "8")
    assert is_correct("#### \\sqrt{16}", "4")
    assert not is_correct("So the answer is \\boxed{2^{3}}", "9")
    assert not is_correct("So the answer is \\boxed{2^{3}}", "8", use_math_verify=False)
    # never consulted when the preferred answer is a plain number: #### 5 stays wrong even if \boxed{7} is right
    assert not is_correct("#### 5\n\\boxed{7}", "7")
    # off the main thread too (math-verify's own timeouts need SIGALRM, which only the main thread may set)
    results = []
    worker = threading.Thread(target=lambda: results.append(is_correct("\\boxed{2^{3}}", "8")))
    worker.start()
    worker.join()
    assert results == [True]


def test_format_reward_rules(gsm8k):
    cases = {
        "Reasoning 3 * 4 = 12.\n#### 12": 1.0,
        "#### 1,234": 1.0,
        "#### -3.5\n\n": 1.0,  # trailing whitespace is fine
        "#### 12\nHope that helps!": 0.5,  # text after the answer line
        "#### $12": 0.5, "#### 12 dollars": 0.5,  # units or $ on the answer line
        "#### 11\n#### 12": 0.5,  # two answer lines
        "The answer is 12.": 0.25, "Therefore \\boxed{12}.": 0.25,  # another explicit answer
        "12": 0.0, "He has 12 apples.": 0.0, "####": 0.0, "#### twelve": 0.0, "": 0.0,
    }
    completions = list(cases)
    assert format_reward(completions) == list(cases.values())
    assert format_reward([[{"role": "assistant", "content": c}] for c in completions]) == list(cases.values())
    # every real GSM8K solution follows the format
    assert format_reward([r["answer"] for r in gsm8k]) == [1.0] * len(gsm8k)


def test_length_penalty():
    penalty = make_length_penalty(target=100, alpha=0.5)
    assert penalty(["x" * 50, "x" * 100, "x" * 150, "x" * 200, "x" * 10_000]) == [0.0, 0.0, -0.25, -0.5, -0.5]
    assert penalty([[{"role": "assistant", "content": "x" * 150}]]) == [-0.25]
    tokens = make_length_penalty(target=4, unit="tokens")
    assert tokens(["ignored", "ignored"], completion_ids=[[1, 2, 3], [1, 2, 3, 4, 5, 6]]) == [0.0, -0.5]
    with pytest.raises(ValueError, match="completion_ids"):
        tokens(["abc"])
    with pytest.raises(ValueError, match="unit"):
        make_length_penalty(unit="words")
    with pytest.raises(ValueError, match="target"):
        make_length_penalty(target=0)


def test_registry_and_build_rewards_for_grpo():
    funcs, weights = build_rewards({"correctness": 1.0, "format": 0.25, "length": 0.1}, length_options={"target": 10})
    assert weights == [1.0, 0.25, 0.1]
    # GRPOTrainer logs each reward under its __name__ (trl.trainer.utils.get_callable_name)
    assert [f.__name__ for f in funcs] == ["correctness_reward", "format_reward", "length_penalty"]
    assert funcs[2](["x" * 20]) == [-1.0]  # the configured target, not the registry's default
    # TRL's async rollout worker pickles reward functions into a spawned process
    assert [pickle.loads(pickle.dumps(f))(["x" * 20], answer=["20"]) for f in funcs] == [[0.0], [0.0], [-1.0]]
    assert set(REWARD_FUNCTIONS) == {"correctness", "checked_correctness", "format", "length", "worked"}
    worked = [[{"role": "assistant", "content": "7 + 6 = 13, write 3.\n#### 13"}], "#### 13"]
    assert REWARD_FUNCTIONS["worked"](worked) == [1.0, 0.0]  # intermediate results shown / a direct answer
    assert REWARD_FUNCTIONS["length"](["x" * 20]) == [0.0]
    with pytest.raises(ValueError, match="did you mean 'correctness'"):
        build_rewards({"corectness": 1.0})
    with pytest.raises(ValueError, match="at least one"):
        build_rewards({})
    # all of them with TRL's calling convention: every column as keyword lists, plus prompts and completion_ids
    kwargs = dict(prompts=[[{"role": "user", "content": "Q"}]] * 2, completion_ids=[[1, 2], [3]],
                  answer=["4", "5"], question=["Q", "Q"], steps=[1, 1], source=["gsm8k"] * 2, trainer_state=None)
    completions = [[{"role": "assistant", "content": "2 + 2 = 4\n#### 4"}], [{"role": "assistant", "content": "6"}]]
    # (the first completion has 16 characters: 60% over the length target of 10)
    assert [f(completions=completions, **kwargs) for f in funcs] == [[1.0, 0.0], [1.0, 0.0], [-0.6, 0.0]]


def test_answer_line_and_completion_text():
    assert answer_line(42) == f"{ANSWER_PREFIX} 42" and answer_line("1,234.50") == "#### 1234.5"
    with pytest.raises(ValueError):
        answer_line("many")
    chat = [{"role": "user", "content": "Q 1"}, {"role": "assistant", "content": "A 2"}]
    assert completion_text(chat) == "A 2" and completion_text(None) == "" and completion_text("x") == "x"


# ----------------------------------------------------------------------------------------------------------------
# The evaluate metric


def test_gsm8k_accuracy_metric_loads_offline_from_the_package(gsm8k):
    import evaluate

    from hf_pipeline.metrics import load_metric

    metric = load_metric("gsm8k_accuracy")
    assert evaluate.load(str(METRICS / "gsm8k_accuracy")).name == metric.name
    rows = gsm8k[:100]
    predictions = [r["answer"] for r in rows]
    # 30 wrong answers (the right one plus 1), 10 without the #### line (right, lenient only), 60 untouched
    for i in range(30):
        predictions[i] = predictions[i].rsplit("####", 1)[0] + f"#### {int(final(rows[i]).replace(',', '')) + 1}"
    for i in range(30, 40):
        predictions[i] = predictions[i].rsplit("####", 1)[0] + f"The answer is {final(rows[i])}."
    # references: full GSM8K answers for half, bare numbers for the other half
    references = [r["answer"] if i % 2 else final(r) for i, r in enumerate(rows)]
    result = metric.compute(predictions=predictions, references=references)
    assert result == {"accuracy": 0.7, "n": 100, "no_answer_rate": 0.0, "strict_accuracy": 0.6}
    result = metric.compute(predictions=["no idea", "#### 3"], references=["3", "3"])
    assert result == {"accuracy": 0.5, "n": 2, "no_answer_rate": 0.5, "strict_accuracy": 0.5}
    with pytest.raises(ValueError, match="reference"):
        metric.compute(predictions=["#### 3"], references=["three"])
