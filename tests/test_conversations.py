"""Conversations for SFT: OASST trees, alpaca, messages and ShareGPT rows from the real files; bad rows counted; mixing,
held-out split, placeholders, system messages; the assistant-only mask of our chat template on real conversations."""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict

import pytest
from conftest import MIRROR, SHAKESPEARE, SHARED_DATA

from hf_pipeline.config import ConfigError
from hf_pipeline.conversations import (
    add_system_message,
    fill_placeholders,
    filter_languages,
    load_conversations,
    mix_conversations,
    split_heldout,
)

OASST = MIRROR / "OpenAssistant" / "oasst1" / "data" / "validation.jsonl"
ALPACA = SHARED_DATA / "conversations" / "alpaca_en_demo.json"
IDENTITY = SHARED_DATA / "conversations" / "identity.json"
V1_SFT = SHARED_DATA / "conversations" / "v1_sft_demo.jsonl"
GLAIVE = SHARED_DATA / "tool_use" / "glaive_toolcall_en_demo.json"


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_jsonl(path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def oasst_rows() -> list[dict]:
    return read_jsonl(OASST)


@pytest.fixture(scope="module")
def oasst(oasst_rows):
    stats = Counter()
    return load_conversations(str(OASST), stats=stats), stats


# --- OASST trees ---------------------------------------------------------------------------------------------------


def raw_paths(conversation, children, parent_id=None) -> list[list[dict]]:
    """Every path of raw rows, from a root down, whose texts are the conversation's turns (a reply's text can repeat
    among its siblings: the real file has two replies "Jay's brother is John.", ranked 0 and 2)."""
    if not conversation:
        return [[]]
    return [
        [row, *rest]
        for row in children[parent_id]
        if row["text"] == conversation[0]["content"]
        for rest in raw_paths(conversation[1:], children, row["message_id"])
    ]


def rank_violations(path, children) -> int:
    """Turns of a raw path where a better-ranked (or, unranked, earlier) reply was passed over."""
    bad = 0
    for parent, chosen in zip(path, path[1:]):
        siblings = [r for r in children[parent["message_id"]] if not r["deleted"]]
        ranks = [r["rank"] for r in siblings if r["rank"] is not None]
        if ranks:
            bad += chosen["rank"] != min(ranks)
        else:
            bad += chosen is not min(siblings, key=lambda r: (r["created_date"], r["message_id"]))
    return bad


def test_oasst_one_conversation_per_tree_alternating_and_ending_with_assistant(oasst, oasst_rows):
    ds, stats = oasst
    ids = {r["message_id"] for r in oasst_rows}
    roots = [r for r in oasst_rows if r["parent_id"] is None]
    orphans = [r for r in oasst_rows if r["parent_id"] is not None and r["parent_id"] not in ids]
    answered = {r["parent_id"] for r in oasst_rows if r["role"] == "assistant" and not r["deleted"]}
    # 191 trees in the file; 3 of them lost their root (non-English parents filtered out of this copy)
    assert len({r["message_tree_id"] for r in oasst_rows}) == 191
    assert len(roots) == 188 and len(orphans) == 3
    assert len(ds) == sum(1 for r in roots if r["message_id"] in answered) == 188
    assert stats == Counter({"deleted": 40, "missing_parent": 3})  # no orphan has replies; deleted subtrees: 40
    for conversation in ds["messages"]:
        roles = [m["role"] for m in conversation]
        assert roles == ["user", "assistant"] * (len(roles) // 2), roles
        assert all(m["content"].strip() for m in conversation)
    assert max(len(c) for c in ds["messages"]) > 2  # multi-turn trees are followed past the first reply


def test_oasst_follows_the_best_ranked_reply(oasst, oasst_rows):
    ds, _ = oasst
    children = defaultdict(list)
    for row in oasst_rows:
        children[row["parent_id"]].append(row)
    choices = 0
    for conversation in ds["messages"]:
        paths = [p for p in raw_paths(conversation, children) if not any(r["deleted"] for r in p)]
        (path,) = [p for p in paths if rank_violations(p, children) == 0]
        choices += sum(len([r for r in children[p["message_id"]] if not r["deleted"]]) > 1 for p in path[:-1])
        # the walk went down to a leaf; only an unanswered last prompt (the best-placed reply) was trimmed
        rest = [r for r in children[path[-1]["message_id"]] if not r["deleted"]]
        if rest:
            best = min(rest, key=lambda r: (r["rank"] is None, r["rank"] or 0, r["created_date"], r["message_id"]))
            assert best["role"] == "prompter"
            assert not [r for r in children[best["message_id"]] if not r["deleted"]]
    assert choices > 100  # most steps chose among several ranked replies


def test_oasst_rank_fallbacks_and_bad_messages(oasst_rows, tmp_path):
    """Edits of one real tree: rank-0 reply deleted -> rank 1; unranked replies -> earliest; broken rows counted."""
    children = defaultdict(list)
    for row in oasst_rows:
        children[row["parent_id"]].append(row)
    root = next(r for r in oasst_rows if r["parent_id"] is None
                and {0, 1} <= {c["rank"] for c in children[r["message_id"]] if not c["deleted"]})
    tree = [dict(r) for r in oasst_rows if r["message_tree_id"] == root["message_tree_id"]]
    by_id = {r["message_id"]: r for r in tree}
    replies = [r for r in tree if r["parent_id"] == root["message_id"]]
    rank0, rank1 = (next(r for r in replies if r["rank"] == k and not r["deleted"]) for k in (0, 1))

    (conv,) = load_conversations(write_jsonl(tmp_path / "as_is.jsonl", tree))["messages"]
    assert conv[1]["content"] == rank0["text"]

    # 1. The rank-0 reply (and its subtree) deleted: the rank-1 reply is followed.
    by_id[rank0["message_id"]]["deleted"] = True
    stats = Counter()
    (conv,) = load_conversations(write_jsonl(tmp_path / "a.jsonl", tree), stats=stats)["messages"]
    assert conv[1]["content"] == rank1["text"]
    subtree = {rank0["message_id"]}
    for r in sorted(tree, key=lambda r: r["created_date"]):  # replies are created after what they answer
        if r["parent_id"] in subtree:
            subtree.add(r["message_id"])
    assert stats["deleted"] == len(subtree) + sum(1 for r in tree if r["deleted"] and r["message_id"] not in subtree)

    # 2. No ranks at all among the root's replies: the earliest one is followed.
    for r in replies:
        by_id[r["message_id"]].update(rank=None, deleted=False)
    (conv,) = load_conversations(write_jsonl(tmp_path / "b.jsonl", tree))["messages"]
    assert conv[1]["content"] == min(replies, key=lambda r: r["created_date"])["text"]

    # 3. Broken rows, in another real tree appended: missing role, empty text, a reply whose parent is gone.
    other_root = next(r for r in children[None] if r["message_tree_id"] != root["message_tree_id"]
                      and sum(not c["deleted"] for c in children[r["message_id"]]) >= 4)
    other = [dict(r) for r in oasst_rows if r["message_tree_id"] == other_root["message_tree_id"] and not r["deleted"]]
    first_replies = [r for r in other if r["parent_id"] == other_root["message_id"]]
    del first_replies[0]["role"]
    first_replies[1]["text"] = "   "
    first_replies[2]["parent_id"] = "no-such-message"
    sizes = []
    for broken in first_replies[:3]:
        ids = {broken["message_id"]}
        for r in sorted(other, key=lambda r: r["created_date"]):
            if r["parent_id"] in ids:
                ids.add(r["message_id"])
        sizes.append(len(ids))
    stats = Counter()
    ds = load_conversations(write_jsonl(tmp_path / "c.jsonl", tree + other), stats=stats)
    assert stats["missing_role"] == sizes[0] and stats["empty_content"] == sizes[1]
    assert stats["missing_parent"] == sizes[2]
    # the tree still gives a conversation, through a reply that was not broken
    assert len(ds) == 2 and ds[1]["messages"][1]["content"] in {r["text"] for r in first_replies[3:]}


def test_hub_id_resolves_in_the_mirror(oasst):
    ds, _ = oasst
    stats = Counter()
    from_mirror = load_conversations("OpenAssistant/oasst1", mirror=str(MIRROR), stats=stats, split="validation")
    assert from_mirror["messages"] == ds["messages"]
    assert stats == Counter({"deleted": 40, "missing_parent": 3})


# --- alpaca, messages, ShareGPT --------------------------------------------------------------------------------------


def test_alpaca_rows_on_the_real_file():
    raw = json.loads(ALPACA.read_text(encoding="utf-8"))
    stats = Counter()
    ds = load_conversations(str(ALPACA), stats=stats)
    assert len(ds) == len(raw) == 999 and not stats
    with_input = 0
    for row, conversation in zip(raw, ds["messages"]):
        user = row["instruction"] + ("\n\n" + row["input"] if row["input"] else "")
        assert conversation == [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]
        with_input += bool(row["input"])
    assert with_input == 412


def test_alpaca_system_and_history_columns(tmp_path):
    raw = json.loads(ALPACA.read_text(encoding="utf-8"))[:3]
    rows = [
        {**raw[0], "system": "You are terse.", "history": [[raw[1]["instruction"], raw[1]["output"]]]},
        {**raw[2], "history": [["only one half"]]},  # a broken history entry
    ]
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    stats = Counter()
    (conversation,) = load_conversations(str(path), stats=stats)["messages"]
    assert [m["role"] for m in conversation] == ["system", "user", "assistant", "user", "assistant"]
    assert conversation[0]["content"] == "You are terse."
    assert conversation[1]["content"] == raw[1]["instruction"] and conversation[2]["content"] == raw[1]["output"]
    assert conversation[4]["content"] == raw[0]["output"]
    assert stats == Counter({"bad_history": 1})


def test_messages_rows_with_content_parts_on_the_real_file():
    raw = read_jsonl(V1_SFT)
    stats = Counter()
    ds = load_conversations(str(V1_SFT), stats=stats)
    assert len(ds) == len(raw) == 500 and not stats
    for row, conversation in zip(raw, ds["messages"]):
        assert [m["role"] for m in conversation] == [m["role"] for m in row["messages"]]
        assert [m["content"] for m in conversation] == [m["content"][0]["value"] for m in row["messages"]]


def test_openai_parts_sharegpt_rows_and_role_aliases(tmp_path):
    raw = read_jsonl(V1_SFT)[:2]
    question, answer = (m["content"][0]["value"] for m in raw[0]["messages"])
    rows = [
        {"messages": [{"role": "human", "content": [{"type": "text", "text": question},
                                                   {"type": "text", "text": " (twice)"}]},
                      {"role": "bot", "content": answer}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}}]},
                      {"role": "assistant", "content": "A cat."}]},
    ]
    ds = load_conversations(write_jsonl(tmp_path / "openai.jsonl", rows), stats=(stats := Counter()))
    assert ds[0]["messages"] == [{"role": "user", "content": question + " (twice)"},
                                 {"role": "assistant", "content": answer}]
    assert len(ds) == 1 and stats == Counter({"non_text_content": 1})

    # ShareGPT: the real glaive file; its tool turns (function_call, observation) are not chat roles
    glaive = json.loads(GLAIVE.read_text(encoding="utf-8"))
    plain = [r for r in glaive if all(m["from"] in ("human", "gpt") for m in r["conversations"])]
    stats = Counter()
    ds = load_conversations(str(GLAIVE), stats=stats)
    assert len(ds) == len(plain) == 147 and stats == Counter({"unknown_role": 300 - 147})
    roles = {"human": "user", "gpt": "assistant"}
    assert ds[0]["messages"] == [{"role": roles[m["from"]], "content": m["value"]} for m in plain[0]["conversations"]]


def test_bad_rows_are_skipped_and_counted(tmp_path, caplog):
    raw = read_jsonl(V1_SFT)[:9]
    raw[0]["messages"][0].pop("role")  # missing role
    raw[1]["messages"][1]["content"][0]["value"] = " \n"  # empty content
    raw[2]["messages"][0]["role"] = "narrator"  # unknown role
    raw[3]["messages"] = raw[3]["messages"][:1]  # a prompt nobody answered
    raw[4]["messages"] = raw[4]["messages"] + raw[4]["messages"][:1]  # a trailing prompt: trimmed, row kept
    lines = [json.dumps(row) for row in raw]
    lines.insert(6, lines[6][: len(lines[6]) // 2])  # a truncated line, as a killed writer leaves it: line 7
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    stats = Counter({"bad_json_line": 2})  # a Counter passed in is added to
    with caplog.at_level(logging.WARNING, logger="hf_pipeline"):
        ds = load_conversations(str(path), stats=stats)
    assert stats == Counter(
        {"missing_role": 1, "empty_content": 1, "unknown_role": 1, "no_assistant_turn": 1, "bad_json_line": 3}
    )
    assert len(ds) == 5
    assert ds[0]["messages"] == [
        {"role": m["role"], "content": m["content"][0]["value"]} for m in raw[4]["messages"][:2]
    ]
    assert f"{path}:7:" in caplog.text


def test_folder_and_glob_sources(tmp_path):
    raw = read_jsonl(V1_SFT)
    raw[0]["messages"][1]["content"][0]["value"] += "\u2028and a line separator inside the text"
    folder = tmp_path / "shards"
    folder.mkdir()
    for i in range(2):  # written as UTF-8 (ensure_ascii=False): U+2028 is raw in the file, and is no line break
        lines = (json.dumps(row, ensure_ascii=False) for row in raw[i * 250 : (i + 1) * 250])
        (folder / f"part-{i}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    from_folder = load_conversations(str(folder))
    from_glob = load_conversations(str(folder / "part-*.jsonl"))
    assert len(from_folder) == 500 and from_folder["messages"] == from_glob["messages"]
    assert from_folder[0]["messages"][1]["content"].endswith("\u2028and a line separator inside the text")
    (folder / "alpaca.json").write_text(ALPACA.read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(ConfigError, match="mixes row formats"):
        load_conversations(str(folder))


def test_unknown_format_fails_with_one_line_naming_source_and_columns():
    with pytest.raises(ValueError) as err:
        load_conversations("openai/gsm8k", mirror=str(MIRROR), name="main")
    message = str(err.value)
    assert isinstance(err.value, ConfigError) and "\n" not in message
    assert "openai/gsm8k" in message and "columns: question, answer" in message


# --- editing, mixing, held out --------------------------------------------------------------------------------------


def test_identity_placeholders_are_filled():
    raw = json.loads(IDENTITY.read_text(encoding="utf-8"))
    ds = fill_placeholders(load_conversations(str(IDENTITY)), name="Nano", author="the hf-pipeline team")
    texts = [m["content"] for conversation in ds["messages"] for m in conversation]
    assert not any("{{" in t or "}}" in t for t in texts)
    assert sum("Nano" in c[1]["content"] for c in ds["messages"]) == sum("{{name}}" in r["output"] for r in raw) == 77
    assert sum("the hf-pipeline team" in t for t in texts) == sum("{{author}}" in r["output"] for r in raw)
    one = fill_placeholders([{"role": "assistant", "content": raw[0]["output"]}], "Nano", "us")
    assert one[0]["content"] == "Hello! I am Nano, an AI assistant developed by us. How can I assist you today?"


def test_add_system_message():
    ds = load_conversations(str(V1_SFT)).select(range(20))
    with_system = add_system_message(ds, "You are helpful.")
    assert all(c[0] == {"role": "system", "content": "You are helpful."} for c in with_system["messages"])
    assert all(c[1:] == d for c, d in zip(with_system["messages"], ds["messages"]))
    again = add_system_message(with_system, "Another system prompt.")  # already has one: left alone
    assert again["messages"] == with_system["messages"]
    assert add_system_message(ds, None) is ds and add_system_message(ds, "") is ds


def test_mixture_weights_repeat_and_subsample():
    sources = [
        {"path": str(ALPACA), "weight": 2.0},
        {"path": str(IDENTITY), "weight": 0.5},
        {"path": "OpenAssistant/oasst1", "split": "validation"},
    ]
    mixture, stats = mix_conversations(sources, mirror=str(MIRROR), seed=0)
    counts = Counter(json.dumps(c) for c in mixture["messages"])
    alpaca = Counter(json.dumps(c) for c in load_conversations(str(ALPACA))["messages"])  # 13 rows appear twice
    identity = {json.dumps(c) for c in load_conversations(str(IDENTITY))["messages"]}
    assert all(counts[key] == 2 * n for key, n in alpaca.items())  # 2.0: every row exactly twice
    picked = [key for key in counts if key in identity]
    assert len(picked) in (45, 46) and all(counts[key] == 1 for key in picked)  # 0.5: a random half, no repeats
    assert len(mixture) == 2 * 999 + len(picked) + 188 == stats["conversations"]
    assert [(s["conversations"], s["mixed"]) for s in stats["sources"]] == [(999, 1998), (91, len(picked)), (188, 188)]
    assert stats["skipped"] == Counter({"deleted": 40, "missing_parent": 3})
    # shuffled together, the same way for the same seed
    first = [json.dumps(c) in identity for c in mixture["messages"][:400]]
    assert 0 < sum(first) < 400
    again, _ = mix_conversations(sources, mirror=str(MIRROR), seed=0)
    other, _ = mix_conversations(sources, mirror=str(MIRROR), seed=1)
    assert again["messages"][:50] == mixture["messages"][:50] != other["messages"][:50]


def test_language_filter_keeps_the_english_rows_of_the_real_identity_file():
    """identity.json: 16 English rows, 75 Chinese; the data stage's fastText model tells them apart."""
    identity = load_conversations(str(IDENTITY))
    english, dropped = filter_languages(identity, ["en"])
    assert (len(english), dropped) == (16, 75)
    assert all(conv[0]["content"].isascii() for conv in english["messages"])
    chinese, _ = filter_languages(identity, ["zh"])
    assert len(chinese) == 75 and not any(conv[0]["content"].isascii() for conv in chinese["messages"])
    assert filter_languages(identity, []) == (identity, 0)  # no languages: everything kept
    with pytest.raises(ConfigError, match=r"^languages: \['english'\] are not language codes"):
        filter_languages(identity, ["en", "english"])


def test_mixture_language_filter_counts_before_the_weight():
    sources = [{"path": str(IDENTITY), "weight": 3.0}, {"path": str(ALPACA)}]
    mixture, stats = mix_conversations(sources, mirror=None, seed=0, languages=["en"])
    identity_stats, alpaca_stats = stats["sources"]
    assert identity_stats["skipped"]["language"] == 75 and identity_stats["mixed"] == 3 * 16
    assert alpaca_stats["skipped"]["language"] == 999 - alpaca_stats["conversations"] > 0
    assert stats["skipped"]["language"] == 75 + alpaca_stats["skipped"]["language"]
    assert len(mixture) == 48 + alpaca_stats["conversations"]


def test_split_heldout_keeps_copies_together():
    mixture, _ = mix_conversations([{"path": str(IDENTITY), "weight": 3.0}], mirror=None, seed=0)
    train, heldout = split_heldout(mixture, 0.1, seed=0)
    held = {json.dumps(c) for c in heldout["messages"]}
    assert len(heldout) == len(held) == 9  # 10% of the 91 distinct conversations, one copy each
    assert not held & {json.dumps(c) for c in train["messages"]}
    assert len(train) == len(mixture) - 3 * 9
    _, tiny = split_heldout(mixture, 0.001, seed=0)
    assert len(tiny) == 1
    train, none = split_heldout(mixture, 0.0, seed=0)
    assert len(none) == 0 and len(train) == len(mixture)


# --- the assistant-only mask on rendered conversations ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tok():
    from hf_pipeline.tokenizer import to_transformers, train_bpe

    paragraphs = [p for p in SHAKESPEARE.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    return to_transformers(train_bpe([paragraphs], vocab_size=512))


def test_assistant_mask_covers_exactly_the_assistant_replies(tok, oasst):
    from hf_pipeline.tokenizer import IM_END, IM_SEP, IM_START

    ds, _ = oasst
    longest = max(range(len(ds)), key=lambda i: len(ds[i]["messages"]))
    conversations = add_system_message(ds.select([0, longest]), "You are a helpful assistant.")["messages"]
    assert len(conversations[1]) >= 5
    start, sep, end = tok.convert_tokens_to_ids([IM_START, IM_SEP, IM_END])
    for conversation in conversations:
        out = tok.apply_chat_template(conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        # The expected tokens, built turn by turn (special tokens are atomic, so the text between them encodes alone):
        # <|im_start|>ROLE<|im_sep|> is never learned; an assistant's CONTENT<|im_end|> always is.
        ids, mask = [], []
        for message in conversation:
            header = [start, *tok.encode(message["role"], add_special_tokens=False), sep]
            body = [*tok.encode(message["content"], add_special_tokens=False), end]
            ids += header + body
            mask += [0] * len(header) + [int(message["role"] == "assistant")] * len(body)
        assert out["input_ids"] == ids
        assert out["assistant_masks"] == mask
        learned = tok.decode([i for i, m in zip(ids, out["assistant_masks"]) if m])
        assert learned == "".join(m["content"] + IM_END for m in conversation if m["role"] == "assistant")
