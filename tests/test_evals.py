"""Evaluation: the shipped accuracy metric, MMLU from the mirror, its prompts, letter scoring with a tiny model, and
the ``eval`` verb on any model reference.

The scorer batches and pads; here every prediction is checked against log-probabilities computed independently,
one question and one letter at a time, with a plain forward pass over the whole unpadded sequence.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import evaluate
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import MIRROR, SHAKESPEARE, run_cli
from hf_pipeline.config import ConfigError
from hf_pipeline.evals.multiple_choice import format_mmlu_prompt, load_mmlu, score_multiple_choice
from hf_pipeline.metrics import load_metric

METRIC_DIR = Path(__file__).resolve().parents[1] / "hf_pipeline" / "metrics" / "multiple_choice_accuracy"


@pytest.fixture(scope="module")
def mmlu_validation():
    return load_mmlu(str(MIRROR), split="validation")


@pytest.fixture(scope="module")
def mmlu_dev():
    return load_mmlu(str(MIRROR), split="dev")


@pytest.fixture(scope="module")
def tiny_lm(tiny_run):
    tokenizer = AutoTokenizer.from_pretrained(tiny_run / "tokenizer")
    model = AutoModelForCausalLM.from_pretrained(tiny_run / "pretrain")
    model.eval()
    return model, tokenizer


# --- the metric module ------------------------------------------------------------------------------------------


def test_metric_module_loads_offline_from_the_package_folder():
    by_path = evaluate.load(str(METRIC_DIR))
    assert by_path.compute(predictions=[0, 1, 2, 3, 1], references=[0, 1, 3, 3, 0]) == {"accuracy": 0.6, "n": 5}
    by_name = load_metric("multiple_choice_accuracy")
    assert by_name.compute(predictions=[2, 2, 2, 2], references=[0, 1, 2, 3], num_choices=4) == {
        "accuracy": 0.25, "n": 4, "chance": 0.25,
    }
    assert by_name.compute(predictions=[1, 1], references=[0, 0])["accuracy"] == 0.0
    assert by_name.compute(predictions=[3], references=[3])["accuracy"] == 1.0


# --- MMLU data and prompts --------------------------------------------------------------------------------------


def test_mmlu_loads_from_the_mirror(mmlu_validation, mmlu_dev):
    assert len(mmlu_dev) == 285 and len(mmlu_validation) == 1531
    assert set(mmlu_validation.column_names) >= {"question", "subject", "choices", "answer"}
    assert all(len(c) == 4 for c in mmlu_dev["choices"]) and set(mmlu_dev["answer"]) <= {0, 1, 2, 3}
    # the dev split holds 5 solved examples per subject, 57 subjects
    assert len(set(mmlu_dev["subject"])) == 57
    algebra = load_mmlu(str(MIRROR), split="dev", subjects=["abstract_algebra"])
    assert len(algebra) == 5 and set(algebra["subject"]) == {"abstract_algebra"}
    assert len(load_mmlu(str(MIRROR), split="validation", limit=7)) == 7
    with pytest.raises(ConfigError, match="test"):
        load_mmlu(str(MIRROR), split="test")  # the mirror holds no test split
    with pytest.raises(ConfigError, match="no_such_subject"):
        load_mmlu(str(MIRROR), split="dev", subjects=["no_such_subject"])


def test_k_shot_prompt_holds_the_examples_with_their_answers(mmlu_validation, mmlu_dev):
    row = mmlu_validation[0]
    shots = [r for r in mmlu_dev if r["subject"] == row["subject"]][:5]
    prompt = format_mmlu_prompt(row, shots)
    subject = row["subject"].replace("_", " ")
    assert prompt.startswith(f"The following are multiple choice questions (with answers) about {subject}.\n\n")
    for shot in shots:
        letter = "ABCD"[shot["answer"]]
        block = shot["question"].strip() + "".join(f"\n{l}. {c}" for l, c in zip("ABCD", shot["choices"]))
        assert f"{block}\nAnswer: {letter}\n\n" in prompt
    # the question comes last, with its choices and no answer
    tail = row["question"].strip() + "".join(f"\n{l}. {c}" for l, c in zip("ABCD", row["choices"])) + "\nAnswer:"
    assert prompt.endswith("\n\n" + tail)
    assert prompt.count("Answer:") == 6
    assert format_mmlu_prompt(row) == prompt[: prompt.index("\n\n") + 2] + tail  # zero-shot: header + question


def test_chat_prompt_uses_the_template(tiny_lm, mmlu_validation, mmlu_dev):
    _, tokenizer = tiny_lm
    row, shot = mmlu_validation[0], mmlu_dev[0]
    prompt = format_mmlu_prompt(row, [shot], chat_tokenizer=tokenizer)
    assert prompt.startswith("<|im_start|>user<|im_sep|>The following are multiple choice questions")
    assert f"<|im_start|>assistant<|im_sep|>{'ABCD'[shot['answer']]}<|im_end|>" in prompt
    assert prompt.endswith("<|im_end|><|im_start|>assistant<|im_sep|>")  # the generation prompt
    assert row["question"].strip() in prompt and prompt.count("<|im_start|>user") == 2


# --- scoring ----------------------------------------------------------------------------------------------------


def reference_logprobs(model, tokenizer, prompt: str, letters: list[str], add_special_tokens: bool) -> list[float]:
    """log P(letter | prompt) for each letter, each from its own unbatched forward pass over prompt + letter."""
    context = tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]
    out = []
    for letter in letters:
        full = tokenizer(prompt + letter, add_special_tokens=add_special_tokens)["input_ids"]
        assert full[: len(context)] == context and len(full) > len(context)
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([full])).logits[0].float(), dim=-1)
        # the token at position t is predicted by the logits at t - 1
        out.append(sum(logprobs[t - 1, full[t]].item() for t in range(len(context), len(full))))
    return out


@pytest.mark.parametrize(
    "chat,k_shot,step", [(False, 0, 77), (True, 0, 77), (False, 1, 250)], ids=["plain", "chat", "plain-1shot"]
)
def test_predictions_match_unbatched_log_probs(tiny_lm, mmlu_validation, mmlu_dev, chat, k_shot, step):
    model, tokenizer = tiny_lm
    # questions across many subjects (20 for step 77), so prompt lengths differ and batches are padded
    questions = mmlu_validation.select(range(0, len(mmlu_validation), step))
    n = len(questions)
    assert n == len(range(0, 1531, step))
    result = score_multiple_choice(
        model, tokenizer, questions, k_shot=k_shot, batch_size=4, chat=chat, few_shot_dataset=mmlu_dev,
        max_length=100_000, show_progress=False,
    )
    assert result["n"] == n and result["truncated"] == 0 and result["chance"] == 0.25
    assert not model.training

    letters = list("ABCD") if chat else [" A", " B", " C", " D"]
    correct = 0
    for i, row in enumerate(questions):
        shots = [r for r in mmlu_dev if r["subject"] == row["subject"]][:k_shot]
        prompt = format_mmlu_prompt(row, shots, chat_tokenizer=tokenizer if chat else None)
        expected = reference_logprobs(model, tokenizer, prompt, letters, add_special_tokens=not chat)
        assert result["choice_logprobs"][i] == pytest.approx(expected, abs=1e-4), f"question {i}"
        assert result["predictions"][i] == max(range(4), key=lambda c: expected[c]), f"question {i}"
        correct += result["predictions"][i] == row["answer"]
    assert 0.0 <= result["accuracy"] <= 1.0 and result["accuracy"] == correct / n

    per_subject = result["per_subject"]
    assert set(per_subject) == set(questions["subject"])
    assert sum(s["n"] for s in per_subject.values()) == n
    assert sum(s["accuracy"] * s["n"] for s in per_subject.values()) == pytest.approx(correct)


def test_long_prompts_keep_their_end(tiny_lm, mmlu_validation, caplog):
    """Prompts over max_length lose their start; the letters are still scored right after the kept end."""
    model, tokenizer = tiny_lm
    questions = mmlu_validation.select(range(0, 100, 10))
    with caplog.at_level(logging.WARNING, logger="hf_pipeline"):
        result = score_multiple_choice(
            model, tokenizer, questions, chat=True, max_length=40, batch_size=4, show_progress=False
        )
    assert result["truncated"] == 10 and "10 of 10 prompts are longer than 40 tokens" in caplog.text
    for i, row in enumerate(questions):
        # chat letters are single tokens: all four are read off the last position of the prompt's last 40 tokens
        ids = tokenizer(format_mmlu_prompt(row, chat_tokenizer=tokenizer), add_special_tokens=False)["input_ids"]
        letter_ids = [tokenizer(l, add_special_tokens=False)["input_ids"][0] for l in "ABCD"]
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([ids[-40:]])).logits[0, -1].float(), dim=-1)
        assert result["choice_logprobs"][i] == pytest.approx([logprobs[t].item() for t in letter_ids], abs=1e-4)

    # by default the model's context length (64 for the tiny model) is the limit
    assert score_multiple_choice(model, tokenizer, questions, show_progress=False)["truncated"] == 10
    with pytest.raises(ConfigError, match="max_length"):
        score_multiple_choice(model, tokenizer, questions, max_length=1, show_progress=False)


def test_eval_verb_measures_any_model_and_writes_metrics(tiny_run, tmp_path):
    """bits per byte and pass@k on the tiny base model, by reference, with the functions the stages call; the
    problems are the column-addition practice family with the format-only instruction, as the grpo stage's."""
    out = run_cli("eval", tiny_run, "--suites", "bpb", "problems", "--bpb_texts", SHAKESPEARE, "--seq_len", "64",
                  "--bpb_max_windows", "8", "--num_problems", "4", "--k", "2", "--max_completion_length", "8",
                  "--problem_templates", "addition", "--problem_instruction", "format", "--problem_min_steps", "2",
                  "--problem_max_steps", "2", "--problem_max_number", "99", "--output_dir", tmp_path / "eval")
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["bpb_windows"] == 8 and metrics["bpb_seq_len"] == 64 and 0 < metrics["heldout_bpb"] < 8
    for key in ("pass1", "passk", "sample_accuracy", "stop_rate", "worked_share", "sample_worked_share"):
        assert 0 <= metrics[key] <= 1, key
    assert metrics["sample_mean_tokens"] > 0 and "accuracy_worked" in metrics and "accuracy_direct" in metrics
    samples = json.loads((tmp_path / "eval" / "samples.json").read_text())["problems"]
    assert len(samples) == 4 and all(re.fullmatch(r"What is \d\d \+ \d\d\?", s["question"]) for s in samples)
    assert metrics["suites"] == ["bpb", "problems"] and (tmp_path / "eval" / "config.yaml").is_file()
    printed = json.loads(out.stdout[: out.stdout.rindex("}") + 1])
    assert printed["heldout_bpb"] == metrics["heldout_bpb"]


def test_eval_verb_bad_suite_is_one_line(tiny_run, tmp_path):
    out = run_cli("eval", tiny_run, "--suite", "chatt", "--output_dir", tmp_path / "eval")
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "hf-pipeline: error: eval.suites: unknown suite 'chatt' (known: bpb, mmlu, chat, problems, honesty, tools)"]
    assert not (tmp_path / "eval").exists()
    out = run_cli("eval", tiny_run, "--suites", "problems", "--problem_templates", "adition",
                  "--output_dir", tmp_path / "eval")
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "hf-pipeline: error: eval.problem_templates: unknown template 'adition' (did you mean 'addition'?)"]
    assert not (tmp_path / "eval").exists()
