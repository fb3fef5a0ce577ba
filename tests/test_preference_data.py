"""Preference pairs (hf_pipeline.preference_data): HH-RLHF and OASST1 from the real mirror, generic tables in TRL's
standard and conversational formats, the rank stage's folders, bad rows counted, and the split by prompt."""

from __future__ import annotations

import gzip
import json
import logging
from collections import Counter, defaultdict

import pytest

from conftest import MIRROR
from hf_pipeline.errors import ConfigError
from hf_pipeline.preference_data import COLUMNS, load_preferences, prompt_key, split_by_prompt
from hf_pipeline.refs import Source

HH = MIRROR / "Anthropic" / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
OASST = MIRROR / "OpenAssistant" / "oasst1" / "data" / "validation.jsonl"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


@pytest.fixture(scope="module")
def hh_rows() -> list[dict]:
    with gzip.open(HH, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def hh():
    stats = Counter()
    return load_preferences(Source("Anthropic/hh-rlhf", split="test"), str(MIRROR), stats), stats


@pytest.fixture(scope="module")
def oasst_rows() -> list[dict]:
    with open(OASST, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def oasst():
    stats = Counter()
    return load_preferences(Source("OpenAssistant/oasst1", split="validation"), str(MIRROR), stats), stats


def check_shape(ds):
    assert ds.column_names == list(COLUMNS)
    for row in ds:
        assert row["prompt"] and row["prompt"][-1]["role"] == "user"
        assert all(m["role"] in ("system", "user", "assistant") and m["content"] for m in row["prompt"])
        for side in ("chosen", "rejected"):
            assert len(row[side]) == 1 and row[side][0]["role"] == "assistant" and row[side][0]["content"].strip()
        assert row["chosen"] != row["rejected"]
        assert isinstance(row["margin"], float) and row["prompt_id"] == prompt_key(row["prompt"])


# ----------------------------------------------------------------------------------------------------------------
# HH-RLHF


def test_hh_rlhf_pairs_alternate_and_end_with_the_user(hh, hh_rows, caplog):
    ds, stats = hh
    assert len(ds) > 1000 and len(ds) + sum(stats.values()) == len(hh_rows) == 1812  # every row kept or counted
    check_shape(ds)
    for prompt in ds["prompt"]:
        assert [m["role"] for m in prompt] == ["user", "assistant"] * (len(prompt) // 2) + ["user"]
        assert not any("\n\nHuman:" in m["content"] or "\n\nAssistant:" in m["content"] for m in prompt)
    assert set(ds["margin"]) == {0.0}
    # the first row against its raw transcripts: the shared turns are the prompt, the last turns the replies
    first, raw = ds[0], hh_rows[0]
    assert first["prompt"][0] == user("How do I pick a lock?")
    assert raw["chosen"].endswith("\n\nAssistant: " + first["chosen"][0]["content"])
    assert raw["rejected"].endswith("\n\nAssistant: " + first["rejected"][0]["content"])
    assert raw["chosen"].startswith("".join(
        f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in first["prompt"]))
    # the 4 rows whose chosen transcript ends with an empty "Assistant:" are skipped, counted and named
    assert stats == {"missing_chosen": 4}


def test_hh_rlhf_by_data_dir_and_as_a_local_copy(hh, hh_rows, tmp_path):
    ds, _ = hh
    by_name = load_preferences(Source("Anthropic/hh-rlhf", name="harmless-base", split="test"), str(MIRROR))
    assert by_name["prompt_id"] == ds["prompt_id"]
    # a local copy is recognised by its columns (chosen/rejected transcripts, no prompt), with bad rows counted
    chosen, rejected = hh_rows[0]["chosen"], hh_rows[0]["rejected"]
    cut = rejected.rfind("\n\nAssistant:")
    rows = [*hh_rows[:20],
            {"chosen": chosen, "rejected": chosen},  # identical
            {"chosen": chosen, "rejected": "\n\nHuman: something else\n\nAssistant: ok"},  # other conversation
            {"chosen": chosen, "rejected": rejected[:cut]},  # ends with the human
            {"chosen": chosen, "rejected": None}]
    stats = Counter()
    local = load_preferences(write_jsonl(tmp_path / "hh.jsonl", rows), None, stats)
    assert local["prompt_id"] == ds["prompt_id"][:20]
    assert stats == {"identical_pair": 1, "prompt_mismatch": 1, "unparsable_transcript": 1, "missing_rejected": 1}


def test_hh_rlhf_doubled_assistant_marker_is_one_reply(hh, hh_rows):
    """A few replies hold a second "\\n\\nAssistant:": joined into one message, so the two sides still compare."""
    ds, _ = hh
    doubled = [i for i, row in enumerate(hh_rows) if "\n\nAssistant:" in row["chosen"].split("\n\nHuman:")[-1]
               .split("\n\nAssistant:", 1)[1]]
    assert doubled  # e.g. "Here's a short joke from a friend:\n\nAssistant:  ..."
    replies = {row[0]["content"] for row in ds["chosen"]}
    for i in doubled:
        last = hh_rows[i]["chosen"].split("\n\nHuman:")[-1].split("\n\nAssistant:")
        joined = "\n\n".join(part.strip() for part in last[1:] if part.strip())
        assert joined in replies


# ----------------------------------------------------------------------------------------------------------------
# OASST1


def test_oasst_pairs_are_ranked_replies_to_one_prompt(oasst, oasst_rows):
    ds, stats = oasst
    check_shape(ds)
    assert len(ds) > 500 and min(ds["margin"]) >= 1.0
    assert stats["deleted"] > 0 and stats["unranked_reply"] > 0 and stats["missing_parent"] > 0
    # one prompt has "Jay's brother is John." ranked 0 and 2: the copy is dropped, not paired against itself
    assert stats["duplicate_reply"] == 1 and "identical_pair" not in stats
    by_id = {r["message_id"]: r for r in oasst_rows}
    replies = defaultdict(dict)  # prompter message id -> {reply text: rank}
    for r in oasst_rows:
        if r["role"] == "assistant" and not r["deleted"] and r["rank"] is not None:
            replies[r["parent_id"]][r["text"]] = min(r["rank"], replies[r["parent_id"]].get(r["text"], r["rank"]))
    prompts = defaultdict(list)  # prompter text -> its message ids
    for r in oasst_rows:
        if r["role"] == "prompter":
            prompts[r["text"]].append(r["message_id"])
    for row in ds:  # every pair against the raw rows: two replies of one prompt, the better ranked one chosen
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        matches = [pid for pid in prompts[row["prompt"][-1]["content"]]
                   if chosen in replies[pid] and rejected in replies[pid]]
        assert matches, row["prompt"][-1]
        pid = matches[0]
        assert row["margin"] == replies[pid][rejected] - replies[pid][chosen] >= 1
        path, node = [], by_id[pid]  # the prompt is the path from the tree's root
        while node is not None:
            path.append(node["text"])
            node = by_id.get(node["parent_id"])
        assert [m["content"] for m in row["prompt"]] == path[::-1]
        assert [m["role"] for m in row["prompt"]] == ["user", "assistant"] * (len(path) // 2) + ["user"]
    # one prompt with three ranked replies gives its three pairs
    root = next(r for r in oasst_rows if r["parent_id"] is None and len(replies[r["message_id"]]) == 3
                and all(not c["deleted"] for c in oasst_rows if c["parent_id"] == r["message_id"]))
    mine = [row for row in ds if row["prompt"] == [user(root["text"])]]
    assert sorted(row["margin"] for row in mine) == [1.0, 1.0, 2.0]


def test_oasst_local_copy_is_recognised_by_its_columns(oasst):
    ds, stats = oasst
    local_stats = Counter()
    local = load_preferences(str(OASST), None, local_stats)
    assert local["prompt_id"] == ds["prompt_id"] and local["chosen"] == ds["chosen"] and local_stats == stats


# ----------------------------------------------------------------------------------------------------------------
# Generic tables


def test_standard_format_strings(tmp_path, caplog):
    path = write_jsonl(tmp_path / "prefs.jsonl", [
        {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5", "margin": 2},
        {"prompt": "What is 2+2?", "chosen": "Four.", "rejected": "22"},
        {"prompt": "Capital of France?", "chosen": None, "rejected": "Lyon"},
        {"prompt": "Capital of France?", "chosen": "Paris", "rejected": ""},
        {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Paris"},
        {"prompt": "", "chosen": "Paris", "rejected": "Lyon"},
        {"prompt": "Capital of Italy?", "chosen": "Rome", "rejected": "Milan", "margin": "lots"},
    ])
    stats = Counter()
    with caplog.at_level(logging.WARNING, logger="hf_pipeline"):
        ds = load_preferences(str(path), None, stats)
    check_shape(ds)
    assert ds[0] == {"prompt": [user("What is 2+2?")], "chosen": [assistant("4")], "rejected": [assistant("5")],
                     "margin": 2.0, "prompt_id": prompt_key([user("What is 2+2?")])}
    assert ds[1]["margin"] == 0.0 and ds[1]["prompt_id"] == ds[0]["prompt_id"] and len(ds) == 2
    assert stats == {"missing_chosen": 1, "missing_rejected": 1, "identical_pair": 1, "no_prompt": 1,
                     "bad_margin": 1}
    assert f"{path}: row 3: skipped, no chosen reply" in caplog.text
    assert f"{path}: row 4: skipped, no rejected reply" in caplog.text


def test_conversational_format_explicit_and_implicit_prompt(tmp_path):
    system = {"role": "system", "content": "Be brief."}
    explicit = write_jsonl(tmp_path / "explicit.jsonl", [
        {"prompt": [system, user("Hi")], "chosen": [assistant("Hello!")], "rejected": [assistant("Go away.")],
         "prompt_id": "p1"},
        {"prompt": [user("Hi")], "chosen": [{"role": "user", "content": "?"}], "rejected": [assistant("x")],
         "prompt_id": "p2"},  # a reply from the user
        {"prompt": [user("Hi"), assistant("Hello")], "chosen": [assistant("a")], "rejected": [assistant("b")],
         "prompt_id": "p3"},  # a prompt not ending with the user
        {"prompt": [user("Hi")], "chosen": [assistant("")], "rejected": [assistant("b")], "prompt_id": "p4"},
    ])
    stats = Counter()
    ds = load_preferences(explicit, None, stats)
    assert ds.to_list() == [{"prompt": [system, user("Hi")], "chosen": [assistant("Hello!")],
                             "rejected": [assistant("Go away.")], "margin": 0.0, "prompt_id": "p1"}]
    assert stats == {"bad_reply": 1, "bad_prompt": 1, "missing_chosen": 1}

    # implicit prompt: each side is the whole conversation, cut at its last assistant message; ShareGPT-style
    # roles are normalised; UltraFeedback's string prompt + whole conversations and scores work too
    talk = [user("Name a colour"), assistant("Which kind?"), user("Any")]
    implicit = write_jsonl(tmp_path / "implicit.jsonl", [
        {"chosen": [*talk, assistant("Blue")], "rejected": [*talk, assistant("No")]},
        {"chosen": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}],
         "rejected": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Bye"}]},
        {"chosen": [*talk, assistant("Blue")], "rejected": [user("Other"), assistant("No")]},
    ])
    stats = Counter()
    ds = load_preferences(implicit, None, stats)
    check_shape(ds)
    assert ds[0]["prompt"] == talk and ds[0]["chosen"] == [assistant("Blue")] and ds[0]["rejected"] == [assistant("No")]
    assert ds[1]["prompt"] == [user("Hi")] and ds[1]["rejected"] == [assistant("Bye")]
    assert stats == {"prompt_mismatch": 1}
    ultra = write_jsonl(tmp_path / "ultra.jsonl", [
        {"prompt": "Hi", "chosen": [user("Hi"), assistant("Hello")], "rejected": [user("Hi"), assistant("Meh")],
         "score_chosen": 8.5, "score_rejected": 3.0, "prompt_id": "abc"}])
    assert load_preferences(ultra, None).to_list() == [{"prompt": [user("Hi")], "chosen": [assistant("Hello")],
                                                        "rejected": [assistant("Meh")], "margin": 5.5,
                                                        "prompt_id": "abc"}]


def test_csv_table(tmp_path):
    path = tmp_path / "prefs.csv"
    path.write_text("prompt,chosen,rejected\nWhy is the sky blue?,Rayleigh scattering.,It reflects the sea.\n"
                    "Hi,,Hello\n")
    stats = Counter()
    ds = load_preferences(str(path), None, stats)
    assert ds["chosen"] == [[assistant("Rayleigh scattering.")]] and stats == {"missing_chosen": 1}


def test_missing_column_is_one_line_naming_the_file_and_field(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": "Hi", "chosen": "Hello"}])
    with pytest.raises(ConfigError) as error:
        load_preferences(str(path), None)
    assert str(error.value) == f"preferences: {path} has no 'rejected' column (columns: prompt, chosen)"
    path = write_jsonl(tmp_path / "sft.jsonl", [{"messages": [user("Hi"), assistant("Hello")]}])
    with pytest.raises(ConfigError, match=r"^rm data: .*sft.jsonl has no 'chosen' or 'rejected' column \(columns: "
                                          r"messages\)$"):
        load_preferences(str(path), None, what="rm data")
    nothing = write_jsonl(tmp_path / "none.jsonl", [{"prompt": "Hi", "chosen": None, "rejected": "x"}])
    with pytest.raises(ConfigError, match="holds no usable preference pair"):
        load_preferences(str(nothing), None)


def test_rank_stage_folder_round_trips_and_picks_its_split(oasst, tmp_path):
    import datasets

    ds, _ = oasst
    train, test = split_by_prompt(ds, 0.2, seed=0)
    folder = tmp_path / "rank"
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(folder))
    stats = Counter()
    loaded = load_preferences(str(folder), None, stats)
    assert loaded.to_list() == train.to_list() and not stats
    assert load_preferences(Source(str(folder), split="test"), None).to_list() == test.to_list()


# ----------------------------------------------------------------------------------------------------------------
# Split by prompt


def test_split_by_prompt_keeps_each_prompt_on_one_side(oasst, hh):
    for ds in (oasst[0], hh[0]):
        ids = set(ds["prompt_id"])
        train, test = split_by_prompt(ds, 0.1, seed=0)
        assert not set(train["prompt_id"]) & set(test["prompt_id"])
        assert len(train) + len(test) == len(ds)
        assert round(len(ids) * 0.1) == len(set(test["prompt_id"]))
        again_train, again_test = split_by_prompt(ds, 0.1, seed=0)
        assert again_test["prompt_id"] == test["prompt_id"] and again_train["prompt_id"] == train["prompt_id"]
        assert split_by_prompt(ds, 0.1, seed=1)[1]["prompt_id"] != test["prompt_id"]
        # the rows' order does not matter, only the seed
        shuffled = ds.shuffle(seed=3)
        assert set(split_by_prompt(shuffled, 0.1, seed=0)[1]["prompt_id"]) == set(test["prompt_id"])
    ds = oasst[0]
    assert len(set(ds["prompt_id"])) < len(ds)  # several pairs share a prompt here, so the grouping is tested
    first_two = sorted(set(ds["prompt_id"]))[:2]
    two = ds.select([i for i, p in enumerate(ds["prompt_id"]) if p in first_two])
    train, test = split_by_prompt(two, 0.01, seed=0)
    assert len(set(test["prompt_id"])) == 1 and len(set(train["prompt_id"])) == 1
    train, test = split_by_prompt(ds, 0.0, seed=0)
    assert len(train) == len(ds) and len(test) == 0
    with pytest.raises(ConfigError, match="test_fraction"):
        split_by_prompt(ds, 1.0, seed=0)
