"""Problem sets: the generator's determinism, split disjointness, worked solutions checked by arithmetic, the
difficulty dial; GSM8K loading from the real mirror, with bad rows skipped and counted."""

from __future__ import annotations

import ast
import json
import operator
import re
import shutil
import statistics
from collections import Counter
from fractions import Fraction

import pytest

from hf_pipeline.evals.problems import guess_accuracy
from hf_pipeline.problems import (
    ARITHMETIC_TEMPLATES, FORMAT_PROMPT, SYSTEM_PROMPT, WORD_TEMPLATES, generate_problems, load_gsm8k, make_prompt,
    problem_split, worked_problem_conversations,
)
from hf_pipeline.rewards import ANSWER_PREFIX, correctness_reward, format_reward, shows_work, worked_reward

from conftest import MIRROR

GSM8K_TRAIN = MIRROR / "openai" / "gsm8k" / "main" / "train.jsonl"

# "a op b (op c...) = result" as the generator writes them.
EQUATION_RE = re.compile(r"(\d+(?:\s*[-+*/]\s*\d+)+)\s*=\s*(\d+)")
NUMBER_RE = re.compile(r"\d+")
# Numbers that ages problems state in words.
WORD_NUMBERS = {"twice": 2, "three times": 3, "four times": 4, "five times": 5, "half": 2}
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def evaluate_expression(expr: str) -> Fraction:
    """Exact value of an expression of integers and + - * / (nothing else is accepted)."""

    def walk(node):
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return Fraction(node.value)
        raise ValueError(f"unexpected {ast.dump(node)} in {expr!r}")

    return walk(ast.parse(expr, mode="eval").body)


@pytest.fixture(scope="module")
def train_set():
    return generate_problems(2000, seed=0, split="train", steps=(1, 6))


@pytest.fixture(scope="module")
def test_set():
    return generate_problems(2000, seed=0, split="test", steps=(1, 6))


# ----------------------------------------------------------------------------------------------------------------
# Generator


def test_same_seed_same_dataset_and_different_seeds_differ():
    a = generate_problems(200, seed=3, steps=(1, 4))
    b = generate_problems(200, seed=3, steps=(1, 4))
    c = generate_problems(200, seed=4, steps=(1, 4))
    assert a.to_list() == b.to_list()
    assert generate_problems(50, seed=3, steps=(1, 4)).to_list() == a.to_list()[:50]  # more problems extend fewer
    assert a["question"] != c["question"]
    assert len(set(a["question"]) & set(c["question"])) < 10  # independent draws rarely collide


def test_columns_prompt_and_answer_types(train_set):
    assert set(train_set.column_names) == {"prompt", "question", "answer", "solution", "source", "steps"}
    row = train_set[0]
    assert row["prompt"] == [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": row["question"]}]
    assert ANSWER_PREFIX in SYSTEM_PROMPT
    suffix = generate_problems(3, seed=0, instruction="suffix")
    assert [m["role"] for m in suffix[0]["prompt"]] == ["user"]
    assert suffix[0]["prompt"][0]["content"].startswith(suffix[0]["question"])
    assert ANSWER_PREFIX in suffix[0]["prompt"][0]["content"]
    assert make_prompt("Q?", "none") == [{"role": "user", "content": "Q?"}]
    # Integer answers only, and every template is used.
    assert all(re.fullmatch(r"\d+", a) for a in train_set["answer"])
    assert {s.split("/", 1)[1] for s in train_set["source"]} == set(WORD_TEMPLATES)  # the default: word problems


def test_train_and_test_are_disjoint(train_set, test_set):
    train_q, test_q = set(train_set["question"]), set(test_set["question"])
    assert len(train_q) == len(train_set) == 2000  # no duplicates within a split either
    assert len(test_q) == len(test_set) == 2000
    assert not train_q & test_q
    # By construction: the hash of the text decides, whatever the seed.
    other_seed_test = set(generate_problems(2000, seed=1, split="test", steps=(1, 6))["question"])
    assert not train_q & other_seed_test
    assert all(problem_split(q) == "train" for q in train_q)
    assert all(problem_split(q) == "test" for q in test_q)


def test_worked_solutions_are_arithmetically_correct(train_set, test_set):
    for row in list(train_set) + list(test_set):
        lines = row["solution"].split("\n")
        assert lines[-1] == f"{ANSWER_PREFIX} {row['answer']}"
        question_numbers = {int(n) for n in NUMBER_RE.findall(row["question"])}
        question_numbers |= {v for word, v in WORD_NUMBERS.items() if word in row["question"]}
        results: list[int] = []
        for line in lines[:-1]:
            equations = EQUATION_RE.findall(line)
            assert len(equations) == 1, line  # one intermediate result per line
            expr, result = equations[0]
            assert evaluate_expression(expr) == int(result), f"{line!r} in\n{row['solution']}"
            # Every operand comes from the question or from an earlier line.
            for operand in map(int, NUMBER_RE.findall(expr)):
                assert operand in question_numbers or operand in results, f"{operand} in {line!r}: {row['question']}"
            results.append(int(result))
        assert len(results) == row["steps"]
        assert results[-1] == int(row["answer"])  # the last step computes the answer


def test_generated_solutions_earn_full_rewards(train_set):
    rows = train_set.select(range(300))
    completions = [[{"role": "assistant", "content": s}] for s in rows["solution"]]
    assert correctness_reward(completions, answer=rows["answer"]) == [1.0] * 300
    assert format_reward(completions) == [1.0] * 300
    shifted = rows["answer"][1:] + rows["answer"][:1]
    wrong = correctness_reward(completions, answer=shifted)
    assert sum(wrong) == sum(a == b for a, b in zip(rows["answer"], shifted))


def test_difficulty_dial_steps_and_numbers():
    easy = generate_problems(300, seed=0, steps=1)
    hard = generate_problems(300, seed=0, steps=5)
    assert set(easy["steps"]) == {1} and set(hard["steps"]) == {5}
    assert statistics.mean(map(len, hard["solution"])) > 2 * statistics.mean(map(len, easy["solution"]))
    assert statistics.mean(map(len, hard["question"])) > statistics.mean(map(len, easy["question"]))
    # steps=1 is supported by every template except the unknown unit price (which needs subtract + divide).
    assert {s.split("/")[1] for s in easy["source"]} == set(WORD_TEMPLATES) - {"unit_price"}

    small = generate_problems(300, seed=0, steps=(1, 3), max_number=10)
    big = generate_problems(300, seed=0, steps=(1, 3), max_number=1000)

    def numbers(ds):
        return [int(n) for q in ds["question"] for n in NUMBER_RE.findall(q)]

    assert max(numbers(small)) < max(numbers(big))
    assert statistics.median(numbers(small)) * 5 < statistics.median(numbers(big))
    assert statistics.median(map(int, small["answer"])) < statistics.median(map(int, big["answer"]))


def test_templates_filter_and_bad_arguments():
    only = generate_problems(50, seed=0, templates=["ages", "sharing"], steps=(2, 3))
    assert set(only["source"]) == {"generated/ages", "generated/sharing"}
    with pytest.raises(ValueError, match="steps"):
        generate_problems(5, steps=0)
    with pytest.raises(ValueError, match="unknown templates"):
        generate_problems(5, templates=["agez"])
    with pytest.raises(ValueError, match="split"):
        generate_problems(5, split="validation")
    with pytest.raises(ValueError, match="max_number"):
        generate_problems(5, max_number=1)


def test_worked_problem_conversations_match_the_rl_prompts():
    convs = worked_problem_conversations(40, seed=5, steps=(1, 2), max_number=10)
    problems = generate_problems(40, seed=5, steps=(1, 2), max_number=10)
    assert convs.column_names == ["messages"] and len(convs) == 40
    for messages, row in zip(convs["messages"], problems):
        # the prompt GRPO sends for the same problem, then the worked solution as the assistant's reply
        assert messages[:-1] == row["prompt"]
        assert messages[-1] == {"role": "assistant", "content": row["solution"]}
        assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert convs.to_list() == worked_problem_conversations(40, seed=5, steps=(1, 2), max_number=10).to_list()
    # train split by default: no question of the held-out problems the GRPO stage measures on
    test_questions = set(generate_problems(200, seed=5, split="test", steps=(1, 2), max_number=10)["question"])
    assert not {m[1]["content"] for m in convs["messages"]} & test_questions
    suffix = worked_problem_conversations(3, seed=0, instruction="suffix")
    assert [m["role"] for m in suffix[0]["messages"]] == ["user", "assistant"]


# ----------------------------------------------------------------------------------------------------------------
# GSM8K


def test_load_gsm8k_from_the_mirror():
    stats = Counter()
    ds = load_gsm8k(str(MIRROR), stats=stats)
    raw = [json.loads(line) for line in GSM8K_TRAIN.read_text().splitlines()]
    assert len(ds) == len(raw) == stats["kept"] == 7473
    assert set(stats) == {"kept"}
    for row, original in zip(ds.select(range(500)), raw):
        assert row["question"] == original["question"]
        assert row["answer"] == original["answer"].rsplit("####", 1)[1].strip().replace(",", "")
        assert "<<" not in row["solution"] and ">>" not in row["solution"]
        assert row["solution"].endswith(f"\n#### {row['answer']}")
        assert row["steps"] == original["answer"].count("<<")
        assert row["prompt"][-1] == {"role": "user", "content": original["question"]}
    # Row 1: "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute." loses only the annotation.
    assert ds[1]["solution"].startswith("Weng earns 12/60 = $0.2 per minute.\n")
    # Answers with thousands separators ("#### 1,000") are normalized, and negatives kept.
    assert any("," in a["answer"].rsplit("####", 1)[1] for a in raw)
    assert all("," not in a for a in ds["answer"])
    assert sum(a.startswith("-") for a in ds["answer"]) == 3
    # The reference solutions earn full correctness and format rewards.
    assert correctness_reward(ds["solution"], answer=ds["answer"]) == [1.0] * len(ds)
    assert format_reward(ds["solution"]) == [1.0] * len(ds)
    assert len(load_gsm8k(str(MIRROR), limit=25)) == 25


def test_load_gsm8k_skips_and_counts_bad_rows(tmp_path):
    source = MIRROR / "openai" / "gsm8k"
    copy = tmp_path / "hub" / "openai" / "gsm8k"
    (copy / "main").mkdir(parents=True)
    shutil.copy(source / "README.md", copy / "README.md")
    good = [json.loads(line) for line in GSM8K_TRAIN.read_text().splitlines()[:40]]
    bad = [
        {"question": "How many apples are left?", "answer": None},  # missing answer
        {"question": "What is 2 + 2?", "answer": "2 + 2 = 4, so four."},  # no #### line
        {"question": "What is 3 + 3?", "answer": "3 + 3 = 6\n#### "},  # nothing after ####
        {"question": "How far is it?", "answer": "It is far.\n#### about five"},  # not a number
        {"question": "", "answer": "#### 5"},  # missing question
    ]
    rows = good[:20] + bad + good[20:]
    (copy / "main" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    # A cache of its own: datasets would file this copy under the same cache key as the real mirror.
    cache = str(tmp_path / "cache")
    stats = Counter()
    ds = load_gsm8k(str(tmp_path / "hub"), stats=stats, cache_dir=cache)
    assert ds["question"] == [r["question"] for r in good]
    assert stats == Counter(kept=40, missing_answer=3, unparseable_answer=1, missing_question=1)
    # limit counts usable rows, after the bad ones are skipped
    limited = load_gsm8k(str(tmp_path / "hub"), limit=22, cache_dir=cache)
    assert limited["question"] == [r["question"] for r in good[:22]]
    # The same copy named as a local folder rather than through the mirror
    by_path = load_gsm8k(dataset=str(copy), cache_dir=cache)
    assert by_path["question"] == ds["question"] and set(by_path["source"]) == {str(copy)}
    # Editing the copy is seen at once (datasets' cache key ignores file content; load_gsm8k rebuilds local mirrors).
    (copy / "main" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in good[:5]))
    assert len(load_gsm8k(str(tmp_path / "hub"), cache_dir=cache)) == 5


# ----------------------------------------------------------------------------------------------------------------
# Column arithmetic: worked digit by digit, or answered directly


def test_column_arithmetic_is_worked_digit_by_digit_and_right():
    rows = generate_problems(600, seed=0, steps=(2, 4), max_number=9999, templates=list(ARITHMETIC_TEMPLATES))
    assert {s.split("/")[1] for s in rows["source"]} == set(ARITHMETIC_TEMPLATES)
    for row in rows:
        a, op, b = re.fullmatch(r"What is (\d+) ([+*]) (\d+)\?", row["question"]).groups()
        assert int(row["answer"]) == (int(a) + int(b) if op == "+" else int(a) * int(b))
        lines = row["solution"].split("\n")
        assert lines[-1] == f"{ANSWER_PREFIX} {row['answer']}" and len(lines) - 1 == row["steps"]
        assert len(a) == row["steps"] and (op == "*" and len(b) == 1 or len(b) == row["steps"])  # steps = digits
        written, carry = [], 0
        for i, line in enumerate(lines[:-1]):  # ones first: "x op y (+ carry) = v, write d(, carry c)."
            m = re.fullmatch(r"(\d) ([+*]) (\d)(?: \+ (\d))? = (\d+), write (\d+)(?:, carry (\d))?\.", line)
            assert m, line
            x, _, y, c, value, write, new_carry = m.groups()
            assert x == a[::-1][i] and y == (b[::-1][i] if op == "+" else b)  # the column's digits
            assert int(c or 0) == carry and evaluate_expression(line.split(" =")[0]) == int(value)
            last = i == len(lines) - 2
            assert int(write) == (int(value) if last else int(value) % 10)
            carry = int(new_carry or 0)
            assert carry == (0 if last else int(value) // 10)
            written.append(write)
        assert "".join(reversed(written)) == row["answer"]  # the written digits, read from the last line up
        assert shows_work(row["solution"]) and not shows_work(lines[-1])


def test_column_arithmetic_cannot_be_guessed_and_keeps_the_dial():
    dial = dict(steps=3, max_number=999, templates=["addition", "multiplication"], instruction="format")
    train, test = generate_problems(2000, seed=0, **dial), generate_problems(400, seed=0, split="test", **dial)
    assert not set(train["question"]) & set(test["question"])
    assert guess_accuracy(train["answer"], test["answer"]) < 0.01  # the best constant answer earns nothing
    assert len(set(test["answer"])) > 300
    assert test[0]["prompt"] == [{"role": "system", "content": FORMAT_PROMPT},
                                 {"role": "user", "content": test[0]["question"]}]
    assert ANSWER_PREFIX in FORMAT_PROMPT and "step" not in FORMAT_PROMPT  # the format, not a request to show work
    small = generate_problems(200, seed=0, steps=2, max_number=50, templates=["addition"])
    assert all(10 <= int(n) <= 50 for q in small["question"] for n in re.findall(r"\d+", q))
    with pytest.raises(ValueError, match="made only 0"):  # 3 digits cannot stay below 50: the dial says so
        generate_problems(5, seed=0, steps=3, max_number=50, templates=["addition"])
    assert guess_accuracy(["7", "7", "8"], ["7", "9"]) == 0.5


def test_worked_share_mixes_worked_and_direct_answers():
    dial = dict(steps=3, max_number=999, templates=["addition"], instruction="format")
    mixed = worked_problem_conversations(1000, seed=3, worked_share=0.3, **dial)
    replies = [m[-1]["content"] for m in mixed["messages"]]
    worked = worked_reward([[{"role": "assistant", "content": r}] for r in replies])
    assert 0.25 < sum(worked) / len(worked) < 0.35
    problems = generate_problems(1000, seed=3, **dial)
    for reply, w, solution, answer in zip(replies, worked, problems["solution"], problems["answer"]):
        assert reply == (solution if w else f"{ANSWER_PREFIX} {answer}")  # the direct form: the answer line alone
    assert all(shows_work(m[-1]["content"])
               for m in worked_problem_conversations(50, seed=3, **dial)["messages"])  # default: all worked
    assert not any(shows_work(m[-1]["content"])
                   for m in worked_problem_conversations(50, seed=3, worked_share=0.0, **dial)["messages"])
    with pytest.raises(ValueError, match="worked_share"):
        worked_problem_conversations(5, worked_share=1.5)
