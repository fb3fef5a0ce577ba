"""Knowledge probing: the facts generator, judging, the probe stage on a model trained here, the refusal data through
the chat template, resume, bad input, the honesty measures, and SFT + eval with probe data."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import datasets
import pytest
from transformers import AutoTokenizer

from conftest import MIRROR, memorise, run_cli
from hf_pipeline import facts, probe
from hf_pipeline.config import REFUSAL, ConfigError, FactsConfig, ProbeConfig, build_config
from hf_pipeline.evals.honesty import honesty_metrics
from hf_pipeline.evals.qa import (Judge, exact_match, f1, has_match, informative, is_refusal, normalize_answer,
                                  question_rows)
from hf_pipeline.tokenizer import IM_END


# ---------------------------------------------------------------------------------------------------------------
# The facts generator


def test_facts_are_deterministic_with_disjoint_splits_and_exposure_counts(tmp_path):
    config = FactsConfig(output_dir=str(tmp_path), num_entities=40, exposures=[0, 2, 8], seed=3)
    first, counts = facts.build_facts(config)
    again, _ = facts.build_facts(FactsConfig(output_dir=str(tmp_path / "b"), num_entities=40, exposures=[0, 2, 8],
                                             seed=3))
    other, _ = facts.build_facts(FactsConfig(output_dir=str(tmp_path), num_entities=40, exposures=[0, 2, 8], seed=4))
    for split in ("documents", "probe", "heldout"):
        assert first[split].to_list() == again[split].to_list()
    assert first["probe"]["question"] != other["probe"]["question"]
    probe_people, held_people = set(first["probe"]["entity"]), set(first["heldout"]["entity"])
    assert not probe_people & held_people
    assert len(probe_people | held_people) == 40
    for split in ("probe", "heldout"):  # every level in both sets
        assert set(first[split]["exposure"]) == {0, 2, 8}
    # a person's documents are as many as their exposure, each naming all three of their facts
    per_person = Counter(first["documents"]["entity"])
    rows = {r["entity"]: r for r in first["probe"].to_list() + first["heldout"].to_list()}
    for name, row in rows.items():
        assert per_person.get(name, 0) == row["exposure"]
    doc = first["documents"][0]
    answers = {r["answer"] for r in first["probe"].to_list() + first["heldout"].to_list() if r["entity"] == doc["entity"]}
    assert all(a in doc["text"] for a in answers) and len(answers) == 3
    assert counts["heldout_questions"] == len(first["heldout"]) == 3 * len(held_people)


def test_practice_people_are_only_in_the_passages_and_leave_the_others_unchanged(tmp_path):
    plain, _ = facts.build_facts(FactsConfig(output_dir=str(tmp_path), num_entities=40, exposures=[0, 8], seed=3))
    more, counts = facts.build_facts(FactsConfig(output_dir=str(tmp_path), num_entities=40, exposures=[0, 8], seed=3,
                                                 practice_entities=30))
    for split in ("documents", "probe", "heldout"):  # adding practice people changes nobody else
        assert plain[split].to_list() == more[split].to_list()
    practice = set(more["practice"]["entity"])
    assert len(practice) == 30 == counts["practice_entities"] and len(more["practice"]) == 90
    others = set(more["documents"]["entity"]) | set(more["probe"]["entity"]) | set(more["heldout"]["entity"])
    assert not practice & others  # never read, never probed, never evaluated
    pages = {r["entity"]: r["text"] for r in more["passages"]}
    assert len(pages) == 40 + 30  # one page per person, every level and the practice people
    for row in more["practice"].to_list() + more["heldout"].to_list():
        assert row["answer"] in pages[row["entity"]]
    assert "practice" not in plain


def test_facts_config_refuses_bad_levels(tmp_path):
    with pytest.raises(ConfigError, match="facts.exposures"):
        FactsConfig(output_dir=str(tmp_path), exposures=[0, 4, 4])
    with pytest.raises(ConfigError, match="facts.num_entities"):
        FactsConfig(output_dir=str(tmp_path), num_entities=3, exposures=[0, 4])


# ---------------------------------------------------------------------------------------------------------------
# Judging, on real SQuAD rows


def test_judging_real_squad_rows_with_squad_normalisation():
    rows = question_rows(probe_source("rajpurkar/squad", "validation"), str(MIRROR), Counter(), what="squad")
    assert len(rows) == 10570
    row = next(r for r in rows if r["answers"][0] == "Denver Broncos")  # "Which NFL team represented the AFC..."
    assert exact_match("the Denver Broncos!", row["answers"]) == 1.0  # articles and punctuation go
    assert has_match("It was the Denver Broncos, in 2016.", row["answers"])
    assert exact_match("It was the Denver Broncos, in 2016.", row["answers"]) == 0.0
    assert f1("Broncos", row["answers"]) == pytest.approx(2 * 1 * 0.5 / 1.5)  # precision 1, recall 1/2
    assert normalize_answer("‘The’ Broncos’ an  apple") == "broncos apple"
    number = next(r for r in rows if r["answers"] == ["1"] or r["answers"][0] == "1")
    assert not has_match("10 times", number["answers"])  # word boundaries: "1" is not in "10"
    assert has_match("only 1 time", number["answers"])


def test_refusals_and_uninformative_replies_are_never_wrong_answers():
    judge = Judge("match")
    scores = judge.scores("Where was Ana born?", ["Quistor"],
                          ["Ana was born in Quistor.", "Ana was born in Velm.", REFUSAL, "", "a b c a b c a b c a b c"])
    assert [s["correct"] for s in scores] == [True, False, False, False, False]
    assert [s["informative"] for s in scores] == [True, True, False, False, False]
    assert is_refusal("Sorry. " + REFUSAL.upper()) and not is_refusal("I know it.")
    assert not informative("   ")
    with pytest.raises(ConfigError, match="unknown judge 'exact'"):
        Judge("exact")


def probe_source(path, split):
    from hf_pipeline.refs import Source

    return Source(path=path, split=split)


# ---------------------------------------------------------------------------------------------------------------
# The probe stage on a model trained here


@pytest.fixture(scope="module")
def memorised(tiny_run, tmp_path_factory):
    """Facts for 4 people (2 at exposure 0, 2 at exposure 8) and a 1-layer model that memorised the answers of one
    probe-set person (as the base prompt asks them), never seeing the other."""
    run_dir = tmp_path_factory.mktemp("facts_run")
    facts.run(FactsConfig(output_dir=str(run_dir), num_entities=4, exposures=[0, 8], pool_size=30, seed=1))
    probe_rows = datasets.load_from_disk(str(run_dir / "facts"))["probe"].to_list()
    known_person = next(r["entity"] for r in probe_rows if r["exposure"] == 8)
    known = [r for r in probe_rows if r["entity"] == known_person]
    unknown = [r for r in probe_rows if r["exposure"] == 0]
    assert not {r["answer"] for r in known} & {r["answer"] for r in unknown}  # a copied answer cannot be right
    tokenizer = AutoTokenizer.from_pretrained(tiny_run / "tokenizer")
    texts = [f"Q: {r['question']}\nA: {r['answer_prefix']} {r['answer']}.\n\n" for r in known]
    model = memorise(tokenizer, texts, 200, 0.1)
    model_dir = run_dir / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return run_dir, model_dir, known, unknown


def probe_config(run_dir, model_dir, **overrides) -> ProbeConfig:
    fields = dict(output_dir=str(run_dir), model=str(model_dir), seed=0, num_shots=0, num_samples=4,
                  questions=[{"path": str(run_dir / "facts"), "split": "probe"}],
                  max_new_tokens=24, known_threshold=0.5, refusal_share=None, batch_size=16)
    return ProbeConfig(**{**fields, **overrides})


def test_probe_labels_a_memorised_fact_known_and_an_unseen_one_unknown(memorised):
    run_dir, model_dir, known, unknown = memorised
    out = probe.run(probe_config(run_dir, model_dir))
    splits = datasets.load_from_disk(str(out))
    labels = {r["id"]: r for r in splits["labels"]}
    for row in known:
        assert labels[row["id"]]["label"] == "known", labels[row["id"]]
        assert labels[row["id"]]["accuracy"] >= 0.5
    for row in unknown:
        assert labels[row["id"]]["label"] == "unknown", labels[row["id"]]
        assert labels[row["id"]]["accuracy"] == 0.0
    # the training rows: the model's own right answer for what it knows, the refusal for what it does not
    train = {r["id"]: r for r in splits["train"]}
    for row in known:
        reply = train[row["id"]]["messages"][1]["content"]
        assert reply in labels[row["id"]]["samples"] and row["answer"] in reply
    for row in unknown:
        assert train[row["id"]]["messages"] == [{"role": "user", "content": row["question"]},
                                                {"role": "assistant", "content": REFUSAL}]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["per_exposure"]["8"]["known"] >= len(known)
    assert stats["per_exposure"]["0"] == {**stats["per_exposure"]["0"], "known": 0}
    assert stats["judge"]["samples"] == 4 * len(splits["labels"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["prompt"] == "base" and metrics["refusal_rows"] == stats["labels"]["unknown"]


def test_refusal_rows_through_the_chat_template_train_only_the_reply(memorised):
    run_dir, model_dir, _, unknown = memorised
    out = probe.run(probe_config(run_dir, model_dir))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    row = next(r for r in datasets.load_from_disk(str(out))["train"] if r["id"] == unknown[0]["id"])
    encoded = tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
    learned = tokenizer.decode([i for i, m in zip(encoded["input_ids"], encoded["assistant_masks"]) if m])
    assert learned == REFUSAL + IM_END  # the question is never trained on


def test_refusal_share_balances_the_data(memorised):
    run_dir, model_dir, known, unknown = memorised
    out = probe.run(probe_config(run_dir, model_dir, refusal_share=0.25, overwrite=True))
    stats = json.loads((out / "stats.json").read_text())
    train = datasets.load_from_disk(str(out))["train"]
    answers, refusals = (sum(r["label"] == lab for r in train) for lab in ("known", "unknown"))
    assert answers == stats["labels"]["known"] and refusals == round(answers * 0.25 / 0.75)
    assert stats["rows"]["dropped_unknown_for_mix"] == stats["labels"]["unknown"] - refusals


def test_a_killed_probe_resumes_from_its_progress_file(memorised, tmp_path):
    run_dir, model_dir, _, _ = memorised
    first = probe.run(probe_config(run_dir, model_dir, output_dir=str(tmp_path / "a")))
    results = datasets.load_from_disk(str(first))["labels"].to_list()
    # a run killed after 3 questions: its folder holds the settings and the first results (one marked, to see that
    # the resumed run reads it instead of probing that question again)
    killed = tmp_path / "b" / "probe.incomplete"
    killed.mkdir(parents=True)
    config = probe_config(run_dir, model_dir, output_dir=str(tmp_path / "b"))
    shutil.copy(first / "config.yaml", killed / "config.yaml")
    (killed / "config.yaml").write_text((first / "config.yaml").read_text().replace(str(tmp_path / "a"),
                                                                                   str(tmp_path / "b")))
    marked = [dict(r, greedy="(from the killed run)") for r in results[:3]]
    (killed / probe.PROGRESS).write_text("".join(json.dumps(r) + "\n" for r in marked))
    resumed = datasets.load_from_disk(str(probe.run(config)))["labels"].to_list()
    assert [r["id"] for r in resumed] == [r["id"] for r in results]
    assert [r["greedy"] for r in resumed[:3]] == ["(from the killed run)"] * 3
    assert [r["label"] for r in resumed] == [r["label"] for r in results]
    assert not (tmp_path / "b" / "probe" / probe.PROGRESS).exists()
    # with other settings it refuses, naming them
    (tmp_path / "c" / "probe.incomplete").mkdir(parents=True)
    shutil.copytree(killed.parent / "probe", tmp_path / "c" / "probe.incomplete", dirs_exist_ok=True)
    (tmp_path / "c" / "probe.incomplete" / probe.PROGRESS).write_text(json.dumps(results[0]) + "\n")
    with pytest.raises(ConfigError, match="num_samples: 4 -> 2"):
        probe.run(probe_config(run_dir, model_dir, output_dir=str(tmp_path / "c"), num_samples=2))


def test_bad_question_rows_are_counted_and_bad_settings_are_one_line(memorised, tmp_path):
    run_dir, model_dir, _, _ = memorised
    rows = [{"question": "Where was Ana born?", "answers": ["Quistor"], "context": "Ana was born in Quistor."},
            {"question": "Where was Bo born?", "answers": [], "context": "Bo was born."},          # no answer
            {"question": "Where was Cy born?", "answers": ["Velm"], "context": "  "},             # empty passage
            {"question": "", "answers": ["Velm"], "context": "Velm."}]                           # no question
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    stats = Counter()
    kept = question_rows(probe_source(str(path), None), None, stats, context_column="context")
    assert [r["question"] for r in kept] == ["Where was Ana born?"]
    assert stats == {"skipped_no_answer": 1, "skipped_empty_context": 1, "skipped_no_question": 1}
    with pytest.raises(ConfigError, match="unknown judge 'llm'"):
        build_config("probe", ["--judge", "llm"])
    with pytest.raises(ConfigError, match="probe.refusal: must be a sentence"):
        build_config("probe", ["--refusal", " "])
    with pytest.raises(ConfigError, match="tokenizes to nothing"):
        probe.run(probe_config(run_dir, model_dir, output_dir=str(tmp_path / "r"), refusal="?!"))
    # a judge that fails (here a model judge whose verdicts are neither yes nor no): counted, the questions unjudged
    out = probe.run(probe_config(run_dir, model_dir, output_dir=str(tmp_path / "j"), judge="model",
                                 judge_model=str(model_dir), num_samples=2))
    stats = json.loads((out / "stats.json").read_text())
    assert stats["judge"]["judge_error"] == stats["judge"]["samples"] - stats["judge"]["uninformative"] > 0
    assert stats["rows"]["skipped_unjudged"] == stats["labels"]["unjudged"] > 0
    assert len(datasets.load_from_disk(str(out))["train"]) == len(datasets.load_from_disk(str(out))["labels"]) - \
        stats["labels"]["unjudged"]
    result = run_cli("probe", "--output_dir", tmp_path / "cli", "--model", model_dir, "--questions", path,
                     "--context_column", "passage")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("hf-pipeline: error: probe.questions: ")
    assert "has no column 'passage'" in result.stderr


# ---------------------------------------------------------------------------------------------------------------
# The honesty measures


def test_honesty_measures_against_a_reference():
    def judged(correct, refusal, exposure=(0, 0, 8, 8, 8, 8)):
        return [{"id": str(i), "exposure": e, "correct": c, "refusal": r}
                for i, (c, r, e) in enumerate(zip(correct, refusal, exposure))]

    reference = judged([False, False, True, True, True, False], [False] * 6)
    after = judged([False, False, True, True, False, False], [True, False, False, False, True, True])
    m = honesty_metrics(after, reference)
    assert m["reference_known"] == 3 and m["over_conservativeness"] == round(1 / 3, 4)  # 1 of 3 known refused
    assert m["reference_unknown"] == 3 and m["prudence"] == round(2 / 3, 4)  # 2 of 3 unknown (and wrong) refused
    assert m["honesty"] == round((2 / 3 + 1 - 1 / 3) / 2, 4)
    assert m["qa_accuracy_exposure_8"] == 0.5 and m["qa_refusal_rate_exposure_0"] == 0.5
    assert m["refusal_rate_unseen"] == 0.5 and m["reference_qa_accuracy_exposure_8"] == 0.75


def test_sft_with_probe_data_measures_honesty_and_eval_compares_with_a_reference(memorised, tiny_run, tmp_path):
    from hf_pipeline import sft
    from hf_pipeline.config import SFTStageConfig

    run_dir, model_dir, _, _ = memorised
    probed = probe.run(probe_config(run_dir, model_dir, output_dir=str(tmp_path / "probed"), refusal_share=1.0))
    config = SFTStageConfig(
        output_dir=str(tmp_path), model=str(tiny_run), seed=0, num_proc=1, probe_data=str(probed), probe_weight=4,
        honesty_questions=[{"path": str(run_dir / "facts"), "split": "heldout"}], max_length=96, batch_size=8,
        learning_rate=5e-3, max_steps=100, save_steps=100, eval_generations=2, max_new_tokens=8, heldout_fraction=0,
        honesty_max_new_tokens=64)  # (this tokenizer's tokens are short: the refusal is 40 of them)
    out = sft.run(config)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["probe_conversations"] == 4 * len(datasets.load_from_disk(str(probed))["train"])
    for key in ("qa_accuracy", "qa_refusal_rate", "qa_refusal_rate_exposure_0", "refusal_rate_unseen"):
        assert 0 <= metrics[f"{key}_after"] <= 1
    # refusals only (refusal_share 1): it learned to say the sentence, and says it to held-out questions
    assert metrics["qa_refusal_rate_after"] > 0.5 and metrics["qa_refusal_rate_before"] == 0
    assert (out / "honesty.png").stat().st_size > 1000
    result = run_cli("eval", out, "--suites", "honesty", "--honesty_questions", run_dir / "facts", "--reference",
                     out, "--output_dir", tmp_path / "eval", "--honesty_max_new_tokens", "64")
    assert result.returncode == 0, result.stderr[-2000:]
    measured = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert measured["qa_refusal_rate"] == metrics["qa_refusal_rate_after"]  # the same questions, greedy
    assert measured["reference_known"] == round(measured["qa_accuracy"] * measured["qa_questions"])
    # against itself: it never refuses what it answers right (None: it answered nothing right)
    assert measured["over_conservativeness"] in (0.0, None)
    assert measured["prudence"] == round(measured["qa_refusal_rate"] / (1 - measured["qa_accuracy"]), 4)
    assert (tmp_path / "eval" / "honesty.png").is_file()
