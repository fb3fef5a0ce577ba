"""The RLHF stages on the tiny model trained here: rank (gold judge, an imported rankings file, a person in the
terminal, stopped and picked up again), reward (held-out accuracy, the distinct pad token), rlhf (the guard, its
curve, the kept weights) and dpo; the gold judge, degenerate replies and the guard's rule; bad rankings."""

from __future__ import annotations

import json
import shutil

import pytest
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from conftest import MIRROR, run_cli
from hf_pipeline import dpo, rank, reward_model, rlhf
from hf_pipeline.config import ConfigError, DPOStageConfig, RankConfig, RewardStageConfig, RLHFStageConfig
from hf_pipeline.preferences import (degenerate, generated_prompts, gold_judge, gold_parts, ranking_pairs,
                                     ranks_from_scores, read_rankings, repetition)
from hf_pipeline.rlhf import proxy_hacked

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --- the gold judge, degenerate replies, rankings -------------------------------------------------------------------

def test_gold_judge_rewards_each_property_of_a_good_reply():
    prompt = "Write a sentence about cats."
    good = "My cat sleeps on the warm kitchen floor every afternoon."
    assert gold_parts(prompt, good, True) == {"on_topic": 1.0, "finished": 1.0, "punctuated": 1.0, "length": 1.0,
                                              "no_repetition": 1.0}
    assert gold_judge([prompt], [good], [True]) == [1.0]
    off_topic = gold_parts(prompt, "The river runs past the old mill in the valley.", True)
    assert off_topic["on_topic"] == 0.0 and off_topic["length"] == 1.0
    cut_off = gold_parts(prompt, "My cat sleeps on the warm kitchen", False)
    assert cut_off["finished"] == 0.0 and cut_off["punctuated"] == 0.0
    assert gold_parts(prompt, "Cats.", True)["length"] < 1.0  # one word: below the window, partial credit
    assert gold_parts(prompt, "concatenate the catalogue.", True)["on_topic"] == 0.0  # a word, not a substring
    looped = "the cat the cat the cat the cat the cat the cat."
    assert gold_parts(prompt, looped, True)["no_repetition"] < 0.5
    assert gold_judge([prompt], [looped], [True])[0] < gold_judge([prompt], [good], [True])[0]


def test_degenerate_flags_repetition_truncation_and_empty_replies():
    assert repetition("the the the the the the") > 0.5 and repetition("a fine short reply") == 0.0
    assert degenerate("the the the the the the", True) == {"repetition": True, "truncated": False, "short": False,
                                                            "empty": False, "any": True}
    assert degenerate("Yes.", True)["short"] and not degenerate("Cats sleep a lot.", True)["short"]
    assert degenerate("a reply cut off at the", False)["truncated"]
    assert degenerate("  ", True)["empty"]
    assert not degenerate("A fine reply about cats.", True)["any"]


def test_rankings_become_pairs_with_margins_and_ties_left_out():
    assert ranks_from_scores([0.9, 0.2, 0.9, 0.5]) == [1, 4, 1, 3]
    pairs, ties = ranking_pairs(["a", "b", "c", "d"], [1, 4, 1, 3])
    assert ties == 1  # a and c share rank 1
    assert sorted(pairs) == [(0, 1, 3), (0, 3, 2), (2, 1, 3), (2, 3, 2), (3, 1, 1)]
    # two identical replies make no pair whatever their ranks
    assert ranking_pairs(["same", "same"], [1, 2]) == ([], 1)


def test_generated_prompts_hold_out_whole_topics():
    rows = generated_prompts(500, 0.25, seed=0)
    topic = {row["id"]: row["prompt"].split("about ")[1] for row in rows}
    train = {topic[r["id"]] for r in rows if r["split"] == "train"}
    test = {topic[r["id"]] for r in rows if r["split"] == "test"}
    assert train and test and not train & test
    assert 0.1 < len([r for r in rows if r["split"] == "test"]) / len(rows) < 0.4
    with pytest.raises(ConfigError, match="num_prompts: at most"):
        generated_prompts(10_000, 0.25, seed=0)


@pytest.mark.parametrize("line, message", [
    ('{"id": "nope", "ranks": [1, 2, 3, 4]}', "unknown prompt id 'nope'"),
    ('{"id": "p1", "ranks": [1, 2, 3]}', "expected 4 ranks"),  # a rollout is missing
    ('{"id": "p1", "ranks": [1, 2, 3, 5]}', "not between 1 and 4"),
    ('{"id": "p1", "ranks": [1, 1, 2, 4]}', "rank 2 should be 3"),
    ('{"id": "p1"}', "needs 'id' and 'ranks'"),
    ('{"id": "p1", "ranks": [1, 2', "not a JSON object"),
])
def test_a_bad_ranking_is_one_line_naming_the_file_and_line(tmp_path, line, message):
    from collections import Counter

    rollouts = {"p1": {"completions": ["a", "b", "c", "d"]}}
    path = tmp_path / "rankings.jsonl"
    path.write_text('{"id": "p1", "ranks": [1, 1, 3, 4]}\n' + line + "\n")  # the tie on line 1 is fine
    with pytest.raises(ConfigError, match=message) as error:
        read_rankings(path, rollouts, Counter())
    assert f"{path}:2:" in str(error.value) and "\n" not in str(error.value)


def test_the_guard_rule_fires_only_when_the_judge_falls_while_the_proxy_rises():
    def history(*points):
        return [{"step": 10 * i, "judge_score": j, "proxy_reward": p} for i, (j, p) in enumerate(points)]

    rising_both = history((0.5, 0.1), (0.6, 0.3), (0.7, 0.5), (0.8, 0.7))
    assert not proxy_hacked(rising_both, patience=2)
    hacked = history((0.5, 0.1), (0.7, 0.3), (0.6, 0.5), (0.5, 0.9))
    assert proxy_hacked(hacked, patience=2) and not proxy_hacked(hacked, patience=3)
    both_fall = history((0.5, 0.1), (0.7, 0.3), (0.6, 0.2), (0.5, 0.1))  # the proxy falls too: no hacking
    assert not proxy_hacked(both_fall, patience=2)


# --- the stages on the tiny model -----------------------------------------------------------------------------------

def rank_config(run_dir, model, **overrides) -> RankConfig:
    fields = dict(output_dir=str(run_dir), model=str(model), seed=0, num_proc=1, num_prompts=24, k=4,
                  max_new_tokens=16, batch_size=32, heldout_fraction=0.3, judge="gold")
    return RankConfig(**{**fields, **overrides})


@pytest.fixture(scope="module")
def rlhf_run(tiny_run, tmp_path_factory):
    """rank (gold judge) -> reward -> rlhf -> dpo on the tiny model, each a few steps."""
    run_dir = tmp_path_factory.mktemp("rlhf") / "run"
    shared = dict(output_dir=str(run_dir), seed=0, num_proc=1, logging_steps=1, mirror=str(MIRROR))
    rank.run(rank_config(run_dir, tiny_run))
    reward_model.run(RewardStageConfig(model=str(tiny_run), batch_size=8, max_steps=6, learning_rate=1e-3,
                                       save_steps=3, max_length=128, eval_limit=16,
                                       eval_preferences=[{"path": "Anthropic/hh-rlhf", "name": "harmless-base",
                                                          "split": "test"}], **shared))
    rlhf.run(RLHFStageConfig(model=str(tiny_run), batch_size=8, num_generations=4, max_completion_length=16,
                             max_steps=4, save_steps=2, learning_rate=1e-3, guard_steps=2, guard_prompts=4,
                             patience=1, judge_prompts=4, judge_samples=1, **shared))
    dpo.run(DPOStageConfig(model=str(tiny_run), batch_size=8, max_steps=3, save_steps=2, learning_rate=1e-3,
                           max_length=128, judge_prompts=4, judge_samples=1, max_new_tokens=16, **shared))
    return run_dir


def test_rank_writes_pairs_split_by_prompt(rlhf_run):
    from datasets import load_from_disk

    stage = rlhf_run / "rank"
    metrics = json.loads((stage / "metrics.json").read_text())
    assert metrics["prompts"] == 24 and metrics["ranked"] == 24 and metrics["rollouts"] == 96
    assert metrics["annotators"] == {"judge:gold": 24} and 0 <= metrics["judge_mean"] <= 1
    pairs = load_from_disk(str(stage))
    assert len(pairs["train"]) == metrics["pairs_train"] > 0 and len(pairs["test"]) == metrics["pairs_test"] > 0
    assert metrics["pairs_train"] + metrics["pairs_test"] + metrics["tied_pairs"] == 24 * 6  # C(4, 2) per prompt
    assert not set(pairs["train"]["prompt_id"]) & set(pairs["test"]["prompt_id"])
    row = pairs["train"][0]
    assert row["prompt"][-1]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
    assert row["chosen"] != row["rejected"] and row["margin"] >= 1
    # the chosen reply is the one the gold judge scored higher
    rollouts = {r["id"]: r for r in map(json.loads, (stage / "rollouts.jsonl").read_text().splitlines())}
    rankings = {r["id"]: r for r in map(json.loads, (stage / "rankings.jsonl").read_text().splitlines())}
    ranking, rollout = rankings[row["prompt_id"]], rollouts[row["prompt_id"]]
    score = dict(zip(rollout["completions"], ranking["scores"]))
    assert score[row["chosen"][0]["content"]] > score[row["rejected"][0]["content"]]


def test_reward_model_trains_and_reads_the_reward_at_the_last_real_token(rlhf_run):
    stage = rlhf_run / "reward"
    metrics = json.loads((stage / "metrics.json").read_text())
    for key in ("accuracy", "margin", "accuracy_hh-rlhf"):
        assert metrics[f"{key}_before"] is not None and metrics[f"{key}_after"] is not None
    assert 0 <= metrics["accuracy_after"] <= 1 and metrics["pairs_hh-rlhf_after"] == 16
    assert metrics["pad_token_id"] != metrics["eos_token_id"] and metrics["steps"] == 6
    model = AutoModelForSequenceClassification.from_pretrained(str(stage))  # an ordinary HF artifact
    tokenizer = AutoTokenizer.from_pretrained(str(stage))
    assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.pad_token_id
    # padding after the reply does not change its score: the score is read at the last non-pad token
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Write a sentence about cats."},
                                          {"role": "assistant", "content": "Cats sleep."}], tokenize=False)
    import torch

    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    padded = torch.cat([ids, torch.full((1, 5), tokenizer.pad_token_id)], dim=1)
    with torch.no_grad():
        plain, longer = model(ids).logits[0, 0], model(padded, attention_mask=(padded != tokenizer.pad_token_id)
                                                     .long()).logits[0, 0]
    assert torch.allclose(plain, longer, atol=1e-4)


def test_reward_stage_refuses_a_pad_token_equal_to_the_end_token(rlhf_run, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(rlhf_run / "reward", model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["pad_token"] = config.get("eos_token") or "<|endoftext|>"
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    result = run_cli("reward", "--model", model, "--preferences", rlhf_run / "rank", "--output_dir", tmp_path / "r",
                     "--max_steps", "1")
    assert result.returncode == 2
    assert "pad token" in result.stderr and "differ from its end token" in result.stderr
    assert "Traceback" not in result.stderr


def test_rlhf_guard_checks_keep_the_best_judged_weights(rlhf_run):
    stage = rlhf_run / "rlhf"
    metrics = json.loads((stage / "metrics.json").read_text())
    for key in ("judge_score", "proxy_reward", "degenerate_share", "truncated_share", "mean_tokens",
                "distinct_share", "judge_on_topic", "judge_finished", "judge_length"):  # the gold judge's checks
        assert metrics[f"{key}_before"] is not None and metrics[f"{key}_after"] is not None
    assert 0 < metrics["distinct_share_after"] <= 1
    assert 0 <= metrics["win_rate"] <= 1 and metrics["judge"] == "gold"
    guard = json.loads((stage / "guard.json").read_text())
    steps = [check["step"] for check in guard["checks"]]
    assert steps[0] == 0 and 2 in steps  # the start, then every guard_steps steps
    assert guard["best"]["judge_score"] == max(check["judge_score"] for check in guard["checks"])
    assert metrics["guard_best_step"] == guard["best"]["step"] and metrics["guard_checks"] == len(steps)
    if guard["stop"]:  # with patience 1 the guard may fire: then the training stopped there
        assert metrics["steps"] == guard["stop"]["step"] == metrics["guard_stopped_step"]
    assert (stage / "judge_curve.png").read_bytes()[:8] == PNG_MAGIC
    history = json.loads((stage / "log_history.json").read_text())["log_history"]
    assert any("rewards/reward/mean" in h and "rewards/unfinished/mean" in h for h in history)


def test_dpo_trains_on_the_pairs_and_is_judged_like_rlhf(rlhf_run):
    metrics = json.loads((rlhf_run / "dpo" / "metrics.json").read_text())
    assert metrics["steps"] == 3 and 0 <= metrics["win_rate"] <= 1
    assert metrics["judge_score_before"] is not None and metrics["judge_score_after"] is not None
    assert 0 <= metrics["heldout_pair_accuracy"] <= 1 and metrics["pairs_train"] > 0
    assert (rlhf_run / "dpo" / "model.safetensors").is_file()


# --- a person ranks, stops, picks up; rankings made elsewhere -------------------------------------------------------

def test_a_person_ranks_in_the_terminal_stops_and_picks_up_where_they_stopped(tiny_run, tmp_path):
    args = ("rank", "--model", tiny_run, "--output_dir", tmp_path, "--num_prompts", "3", "--max_new_tokens", "8",
            "--judge", "none", "--ui", "terminal", "--seed", "0")
    first = run_cli(*args, input="2 1 4 3\nnonsense\n1=2 3 4\n")  # 2 ranked (one after a bad line), then EOF
    assert first.returncode == 2 and "2 of 3 prompts ranked" in first.stderr and "Traceback" not in first.stderr
    work = tmp_path / "rank.incomplete"
    rollouts = (work / "rollouts.jsonl").read_text()
    kept = [json.loads(line) for line in (work / "rankings.jsonl").read_text().splitlines()]
    assert [r["ranks"] for r in kept] == [[2, 1, 4, 3], [1, 1, 3, 4]] and kept[0]["annotator"] == "human"
    second = run_cli(*args, input="4 3 2 1\n")  # the third prompt only
    assert second.returncode == 0, second.stderr[-2000:]
    assert "prompt 1 of 1" in second.stdout
    stage = tmp_path / "rank"
    assert (stage / "rollouts.jsonl").read_text() == rollouts  # the same rollouts, not sampled again
    metrics = json.loads((stage / "metrics.json").read_text())
    assert metrics["ranked"] == 3 and metrics["tied_pairs"] == 1 and metrics["annotators"] == {"human": 3}


def test_rankings_made_elsewhere_are_imported_and_checked(tiny_run, tmp_path):
    with pytest.raises(ConfigError, match="0 of 4 prompts ranked"):  # no one ranked: refused, rollouts kept
        _rank_with_closed_stdin(rank_config(tmp_path, tiny_run, num_prompts=4, judge=None))
    ids = [json.loads(line)["id"] for line in (tmp_path / "rank.incomplete" / "rollouts.jsonl").read_text()
           .splitlines()]
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"id": i, "ranks": [1, 2, 3, 4]}) + "\n" for i in ids[:3]))
    rank.run(rank_config(tmp_path, tiny_run, num_prompts=4, judge=None, rankings=str(good), skip_unranked=True))
    metrics = json.loads((tmp_path / "rank" / "metrics.json").read_text())
    assert metrics["ranked"] == 3 and metrics["skipped"] == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": ids[0], "ranks": [1, 2, 3]}) + "\n")
    result = run_cli("rank", "--model", tiny_run, "--output_dir", tmp_path / "other", "--num_prompts", "4",
                     "--max_new_tokens", "16", "--heldout_fraction", "0.3", "--seed", "0", "--rankings", bad)
    assert result.returncode == 2 and f"{bad}:1: prompt {ids[0]}: expected 4 ranks" in result.stderr


def _rank_with_closed_stdin(config):
    """The terminal ranker reading an empty standard input: the person stops before ranking anything."""
    import io
    import sys

    stdin, sys.stdin = sys.stdin, io.StringIO("")
    try:
        return rank.run(config)
    finally:
        sys.stdin = stdin


def test_a_lora_reward_model_scores_like_a_full_one(rlhf_run, tmp_path):
    """LoRA on a reward model: peft trains the score head in full (modules_to_save); the adapter folder loads as a
    reward model again (the rlhf stage's proxy, a judge)."""
    from hf_pipeline.evals.preference import RewardScorer

    config = RewardStageConfig(model=str(rlhf_run / "reward"), preferences=str(rlhf_run / "rank"),
                               output_dir=str(tmp_path), seed=0, num_proc=1, use_lora=True, lora_r=4, lora_alpha=8,
                               batch_size=8, max_steps=2, learning_rate=1e-3, max_length=128, logging_steps=1)
    reward_model.run(config)
    stage = tmp_path / "reward"
    metrics = json.loads((stage / "metrics.json").read_text())
    assert metrics["use_lora"] and metrics["trainable_params"] < metrics["num_params"]
    assert (stage / "adapter_config.json").is_file()
    scorer = RewardScorer.load(str(stage))
    scores = scorer.score([[{"role": "user", "content": "Write a sentence about cats."}]] * 2,
                          ["Cats sleep all day.", "the the the the"])
    assert len(scores) == 2 and all(isinstance(s, float) for s in scores)


def test_a_person_ranks_on_the_web_page_served_by_the_rank_command(tiny_run, tmp_path):
    """`hf-pipeline rank --ui web`: the page in headless Chromium, two prompts ranked by clicking, the server and the
    command end by themselves, and the stage is complete with the person's rankings."""
    import os
    import re
    import subprocess
    import sys

    from test_ranking_ui import CHROMIUM, CHROMIUM_ARGS

    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian's chromium package drives the browser test)")
    from playwright.sync_api import expect, sync_playwright

    command = [sys.executable, "-u", "-m", "hf_pipeline", "rank", "--model", str(tiny_run), "--output_dir",
               str(tmp_path), "--num_prompts", "2", "--max_new_tokens", "8", "--judge", "none", "--ui", "web",
               "--port", "0", "--annotator", "clicker", "--seed", "0", "--heldout_fraction", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    try:
        url = None
        for line in process.stdout:  # the rollouts first, then the page's address
            match = re.search(r"ranking page: (http://127\.0\.0\.1:\d+/)", line)
            if match:
                url = match.group(1)
                break
        assert url, "the rank command printed no address"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1200, "height": 900})
                page.set_default_timeout(20_000)
                page.goto(url)
                for item, order in ((1, (2, 1, 4, 3)), (2, (1, 2, 3, 4))):
                    expect(page.get_by_test_id("progress")).to_have_text(f"{item} / 2")
                    expect(page.get_by_test_id("prompt")).to_contain_text("about")  # a generated request
                    for position, n in enumerate(order, 1):
                        page.locator(f'[data-testid="rank-{n}"] button[data-rank="{position}"]').click()
                    if item == 1:
                        page.screenshot(path=str(tmp_path / "rank_page.png"), full_page=True)
                    page.get_by_test_id("submit").click()
                expect(page.get_by_test_id("done")).to_be_visible()
            finally:
                browser.close()
        output = process.communicate(timeout=120)[0]
    finally:
        process.kill()
    assert process.returncode == 0, output[-3000:]
    assert (tmp_path / "rank_page.png").read_bytes()[:8] == PNG_MAGIC
    rankings = [json.loads(line) for line in (tmp_path / "rank" / "rankings.jsonl").read_text().splitlines()]
    assert [r["ranks"] for r in rankings] == [[2, 1, 4, 3], [1, 2, 3, 4]]
    assert {r["annotator"] for r in rankings} == {"clicker"}
    metrics = json.loads((tmp_path / "rank" / "metrics.json").read_text())
    assert metrics["ranked"] == 2 and metrics["pairs_train"] == 12 and metrics["annotators"] == {"clicker": 2}


@pytest.mark.parametrize("stage, args, message", [
    ("rlhf", ["--judge", "gld"], "rlhf.judge: unknown judge 'gld' (did you mean 'gold'?)"),
    ("dpo", ["--judge", "runs/nope/reward"], "dpo.judge: runs/nope/reward does not exist"),
    ("rank", ["--judge", "glod"], "rank.judge: unknown judge 'glod' (did you mean 'gold'?)"),
    ("rank", ["--rankings", "no/such/rankings.jsonl"], "rank.rankings: no/such/rankings.jsonl is not a file"),
    ("rank", ["--k", "1"], "rank.k: must be >= 2"),
])
def test_a_bad_rlhf_setting_is_one_line(tmp_path, stage, args, message):
    result = run_cli(stage, "--output_dir", tmp_path, *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-1000:]
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
