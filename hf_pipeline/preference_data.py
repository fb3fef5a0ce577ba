"""Preference pairs for reward modelling and DPO: any common source -> a Dataset of (prompt, chosen, rejected).

Every source becomes a ``datasets.Dataset`` in TRL's conversational preference format, which both ``RewardTrainer``
and ``DPOTrainer`` take, with exactly these columns:

``prompt``
    the conversation before the compared replies, ``[{"role": "system" | "user" | "assistant", "content": str}]``,
    ending with a user message;
``chosen`` / ``rejected``
    the better and the worse reply, each one assistant message ``[{"role": "assistant", "content": str}]``;
``margin``
    how much better ``chosen`` is (a float; 0.0 when the source does not grade its pairs);
``prompt_id``
    a stable id of the prompt: the source's own ``prompt_id`` if it has one, else a short sha1 of the prompt's
    messages (the same prompt, from any source, gets the same id). ``split_by_prompt`` keeps each id on one side.

A source (``refs.Source``, or a path or Hub id) is opened by ``refs.open_tables`` (local files, ``save_to_disk``
folders, mirror folders, Hub ids); its row format is recognised from its Hub id or its columns:

Anthropic HH-RLHF (``Anthropic/hh-rlhf``, or ``chosen``/``rejected`` transcripts without a ``prompt`` column)
    Each side is a whole ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` transcript. It is cut into turns at those
    markers (Human -> user, Assistant -> assistant; text before the first marker must be blank); consecutive turns of
    one speaker are joined into one message (a few replies contain a second ``\\n\\nAssistant:``). The last turn of
    each side is the reply, and the turns before it, which must be the same on both sides, are the prompt. A
    ``name`` such as ``harmless-base`` (the Hub's ``data_dir``) picks that folder of the mirror.
OASST message rows (``OpenAssistant/oasst1``, or ``message_id``, ``parent_id``, ``role``, ``text``, ``rank``)
    The message trees are rebuilt as ``conversations`` does (deleted messages dropped with their replies, and so are
    messages whose parent is missing). For each prompter message, every two of its ranked assistant replies with
    different ranks make a pair: the lower rank (better) is chosen, ``margin`` is the difference of the ranks, and the
    prompt is the path from the tree's root to that prompter message.
A table with ``chosen`` and ``rejected`` (and optional ``prompt``, ``margin``, ``prompt_id``)
    TRL's standard format (strings) and conversational format (lists of messages) alike: a string prompt becomes one
    user message, a string reply one assistant message. A conversational reply that carries the conversation before
    it (TRL's implicit prompt, or UltraFeedback's prompt + whole conversations) is cut at its last message: the
    turns before it are the prompt (equal on both sides, and to the ``prompt`` column if there is one). Without a
    ``margin`` column, ``score_chosen - score_rejected`` is the margin when both columns exist (UltraFeedback). A
    ``save_to_disk`` folder of the ``rank`` stage (splits ``train``/``test`` already in this format) is such a table:
    the source's ``split`` picks the split.

A source without a ``chosen`` or ``rejected`` column fails at once with one line naming it and the missing column.
Bad rows never stop a run: each is skipped and counted under a reason in a ``collections.Counter``:
``missing_chosen`` / ``missing_rejected`` (null, empty; the first few logged as ``file: row N``), ``identical_pair``
(both replies the same), ``no_prompt``, ``bad_prompt`` (not ending with a user message), ``bad_reply`` (a reply that
is not an assistant message), ``prompt_mismatch`` (the two sides continue different conversations),
``unparsable_transcript`` (HH-RLHF), ``bad_margin``, the message problems of ``conversations`` (``unknown_role``,
``missing_role``, ``empty_content``, ``non_text_content``) and ``bad_json_line``. OASST counts are of messages, as in
``conversations``: ``deleted``, ``missing_parent``, ``missing_message_id``, ``role_not_alternating``,
``unranked_reply`` (a usable reply without a rank), ``duplicate_reply`` (the same text as a better-ranked reply to
the same prompt: its pairs would contradict that one's) and ``single_ranked_reply`` (the only ranked reply to its
prompt, so compared with nothing); ``tied_rank`` counts pairs of replies with the same rank.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import re
from collections import Counter
from itertools import combinations, islice
from typing import Any

from .conversations import (
    OASST_COLUMNS,
    OASST_FIELDS,
    ROLE_ALIASES,
    _flatten_content,
    _select,
    oasst_trees,
)
from .errors import ConfigError
from .refs import MAX_WARNINGS_PER_FILE, Source, mirror_path, open_tables

logger = logging.getLogger("hf_pipeline")

Message = dict[str, str]
COLUMNS = ("prompt", "chosen", "rejected", "margin", "prompt_id")
HH_IDS = ("Anthropic/hh-rlhf",)
OASST_IDS = ("OpenAssistant/oasst1", "OpenAssistant/oasst2")
HH_TURN = re.compile(r"\n\n(Human|Assistant):")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}
FORMAT_NAMES = {"hh": "HH-RLHF transcript", "oasst": "OASST message", "table": "preference"}


class _Skip(Exception):
    """A row that cannot be used; ``args[0]`` is the reason it is counted under."""


def _features():
    import datasets

    messages = [{"role": datasets.Value("string"), "content": datasets.Value("string")}]
    return datasets.Features({"prompt": messages, "chosen": messages, "rejected": messages,
                              "margin": datasets.Value("float64"), "prompt_id": datasets.Value("string")})


# ----------------------------------------------------------------------------------------------------------------
# Loading


def load_preferences(source: Source | str, mirror: str | None, stats: Counter | None = None,
                     what: str = "preferences"):
    """Load one source as a Dataset of preference pairs (``COLUMNS``); skipped rows are added to ``stats`` by reason.

    ``what`` names the source in messages (``preferences: data/prefs.jsonl has no 'rejected' column ...``). Raises
    ConfigError for a source that cannot be found, lacks a ``chosen`` or ``rejected`` column, or yields no pair.
    """
    import datasets

    source = _as_source(source, mirror)
    skipped: Counter = Counter()
    tables = open_tables(source, mirror, what=what, stats=skipped)
    formats = {label: _detect_format(label, columns, table_rows, source, what) for label, columns, table_rows in tables}
    if len(set(formats.values())) > 1:
        found = ", ".join(f"{label}: {FORMAT_NAMES[fmt]}" for label, fmt in formats.items())
        raise ConfigError(f"{what}: '{source.path}' mixes row formats ({found}); list them separately")
    fmt = next(iter(formats.values()))
    n_rows = sum(len(table_rows) for _, _, table_rows in tables)

    if fmt == "oasst":  # a tree can only be rebuilt from all its messages (and the nested review fields are slow)
        rows = [row for _, columns, table_rows in tables
                for row in _select(table_rows, [c for c in OASST_FIELDS if c in columns])]
        pairs = _oasst_pairs(rows, skipped)
    else:
        convert = _from_transcripts if fmt == "hh" else _from_row
        pairs = [pair for label, _, table_rows in tables for pair in _table_pairs(label, table_rows, convert, skipped)]

    logger.info(
        "%s %s: %d %s rows -> %d pairs (%d prompts)%s", what, source.path, n_rows, FORMAT_NAMES[fmt], len(pairs),
        len({pair["prompt_id"] for pair in pairs}),
        f"; skipped: {', '.join(f'{k} {v}' for k, v in sorted(skipped.items()))}" if skipped else "",
    )
    if stats is not None:
        stats.update(skipped)
    if not pairs:
        raise ConfigError(f"{what}: '{source.path}' holds no usable preference pair (skipped: {dict(skipped)})")
    return datasets.Dataset.from_list(pairs, features=_features())


def _as_source(source: Source | str, mirror: str | None) -> Source:
    """A Source; HH-RLHF with a ``name`` (the Hub's ``data_dir``: ``harmless-base``) -> that folder of the mirror."""
    source = source if isinstance(source, Source) else Source(path=str(source))
    if source.path in HH_IDS and source.name:
        folder = mirror_path(source.path, mirror)
        if folder is not None and (folder / source.name).is_dir():
            return dataclasses.replace(source, path=str(folder / source.name), name=None)
    return source


def _detect_format(label: str, columns: list[str], rows, source: Source, what: str) -> str:
    names = set(columns)
    if OASST_COLUMNS <= names:
        if "rank" not in names:
            raise ConfigError(f"{what}: {label} holds OASST message rows without a 'rank' column: no preferences")
        return "oasst"
    missing = [c for c in ("chosen", "rejected") if c not in names]
    if missing:
        raise ConfigError(f"{what}: {label} has no {' or '.join(repr(c) for c in missing)} column (columns: "
                          f"{', '.join(columns) or 'none'})")
    if source.path in HH_IDS or ("prompt" not in names and _looks_like_transcripts(rows)):
        return "hh"
    return "table"


def _looks_like_transcripts(rows) -> bool:
    """Whether the first rows' ``chosen`` are HH-RLHF transcripts (``"\\n\\nHuman: ..."``)."""
    for row in islice(iter(rows), 20):
        chosen = row.get("chosen")
        if isinstance(chosen, str) and chosen.strip():
            return chosen.startswith("\n\nHuman:") or chosen.startswith("Human:")
    return False


def _table_pairs(label: str, rows, convert, skipped: Counter) -> list[dict]:
    """The pairs of one table's rows; a row without a chosen or rejected reply is logged (the first few)."""
    pairs, missing = [], 0
    for number, row in enumerate(rows, 1):
        try:
            pairs.append(convert(row))
        except _Skip as skip:
            reason = skip.args[0]
            skipped[reason] += 1
            if reason in ("missing_chosen", "missing_rejected"):
                missing += 1
                if missing <= MAX_WARNINGS_PER_FILE:
                    logger.warning("%s: row %d: skipped, no %s reply", label, number, reason.split("_")[1])
    if missing > MAX_WARNINGS_PER_FILE:
        logger.warning("%s: %d rows without a chosen or rejected reply skipped in all", label, missing)
    return pairs


def _pair(prompt: list[Message], chosen: Message, rejected: Message, margin: float = 0.0,
          prompt_id: str | None = None) -> dict:
    if chosen["content"].strip() == rejected["content"].strip():
        raise _Skip("identical_pair")
    return {"prompt": prompt, "chosen": [chosen], "rejected": [rejected], "margin": margin,
            "prompt_id": prompt_id or prompt_key(prompt)}


def prompt_key(prompt: list[Message]) -> str:
    """The ``prompt_id`` of a prompt without one: 16 hex digits of the sha1 of its roles and contents."""
    text = json.dumps([[m["role"], m["content"]] for m in prompt], ensure_ascii=False)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _is_empty(value: Any) -> bool:
    """None, a blank string, or an empty list or mapping."""
    if isinstance(value, str):
        return not value.strip()
    return value is None or (isinstance(value, (list, dict)) and not value)


# ----------------------------------------------------------------------------------------------------------------
# Row formats


def _from_row(row: dict) -> dict:
    """A row of a preference table (TRL's standard or conversational format) -> a pair."""
    if _is_empty(row.get("chosen")):
        raise _Skip("missing_chosen")
    if _is_empty(row.get("rejected")):
        raise _Skip("missing_rejected")
    before_chosen, chosen = _reply(row["chosen"], "chosen")
    before_rejected, rejected = _reply(row["rejected"], "rejected")
    prompt = None if _is_empty(row.get("prompt")) else _messages(row["prompt"])
    for before in (before_chosen, before_rejected):  # a reply that carries its conversation: the same on both sides
        if before:
            if prompt is not None and before != prompt:
                raise _Skip("prompt_mismatch")
            prompt = before
    if prompt is None:
        raise _Skip("no_prompt")
    if prompt[-1]["role"] != "user":
        raise _Skip("bad_prompt")
    prompt_id = row.get("prompt_id")
    return _pair(prompt, chosen, rejected, _margin(row), None if _is_empty(prompt_id) else str(prompt_id))


def _margin(row: dict) -> float:
    margin = row.get("margin")
    if margin is None and row.get("score_chosen") is not None and row.get("score_rejected") is not None:
        margin = (row["score_chosen"], row["score_rejected"])
    try:
        if isinstance(margin, tuple):
            return float(margin[0]) - float(margin[1])
        return 0.0 if margin is None else float(margin)
    except (TypeError, ValueError):
        raise _Skip("bad_margin") from None


def _messages(value: Any, side: str | None = None) -> list[Message]:
    """A prompt or reply as a list of messages: a string is one user message; roles and contents normalised.
    A reply's (``side``: chosen or rejected) empty last message is ``missing_<side>``."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise _Skip("non_text_content")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise _Skip("non_text_content")
        raw_role = message.get("role") or message.get("from")  # ``or``: Arrow rows have every key, unset ones None
        if not raw_role:
            raise _Skip("missing_role")
        role = ROLE_ALIASES.get(str(raw_role).strip().lower())
        if role is None:
            raise _Skip("unknown_role")
        content = message.get("content")
        content = _flatten_content(content if content is not None else message.get("value"))
        if content is None:
            raise _Skip("non_text_content")
        if not content.strip():
            raise _Skip(f"missing_{side}" if side and i == len(value) - 1 else "empty_content")
        out.append({"role": role, "content": content})
    return out


def _reply(value: Any, side: str) -> tuple[list[Message], Message]:
    """A reply column -> (the conversation it carries before its last message, that last assistant message)."""
    if isinstance(value, str):
        return [], {"role": "assistant", "content": value}
    messages = _messages(value, side)
    if messages[-1]["role"] != "assistant":
        raise _Skip("bad_reply")
    return messages[:-1], messages[-1]


def _from_transcripts(row: dict) -> dict:
    """An HH-RLHF row (two whole transcripts) -> a pair: the shared turns are the prompt, the last turns the replies."""
    if _is_empty(row.get("chosen")):
        raise _Skip("missing_chosen")
    if _is_empty(row.get("rejected")):
        raise _Skip("missing_rejected")
    chosen, rejected = _transcript_turns(row["chosen"]), _transcript_turns(row["rejected"])
    if not chosen[-1]["content"]:
        raise _Skip("missing_chosen")
    if not rejected[-1]["content"]:
        raise _Skip("missing_rejected")
    if chosen[:-1] != rejected[:-1]:
        raise _Skip("prompt_mismatch")
    return _pair(chosen[:-1], chosen[-1], rejected[-1])


def _transcript_turns(text: Any) -> list[Message]:
    """``"\\n\\nHuman: a\\n\\nAssistant: b"`` -> user/assistant messages (one speaker's consecutive turns joined),
    the last one from the assistant and the one before from the user; else ``unparsable_transcript``."""
    if not isinstance(text, str):
        raise _Skip("unparsable_transcript")
    if not text.startswith("\n\n"):
        text = "\n\n" + text
    marks = list(HH_TURN.finditer(text))
    if not marks or text[:marks[0].start()].strip():
        raise _Skip("unparsable_transcript")
    turns: list[Message] = []
    for mark, end in zip(marks, [m.start() for m in marks[1:]] + [len(text)]):
        role, content = HH_ROLES[mark.group(1)], text[mark.end():end].strip()
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] = "\n\n".join(part for part in (turns[-1]["content"], content) if part)
        else:
            turns.append({"role": role, "content": content})
    if len(turns) < 2 or turns[-1]["role"] != "assistant" or any(not m["content"] for m in turns[:-1]):
        raise _Skip("unparsable_transcript")
    return turns


def _oasst_pairs(rows: list[dict], skipped: Counter) -> list[dict]:
    """Pairs of differently ranked replies to each prompter message of the OASST trees in ``rows``."""
    def order(row: dict):  # best first; ties (not in OASST's data) by date, then id, to stay deterministic
        return row["rank"], row.get("created_date") or "", row["message_id"]

    pairs = []
    for root, children, usable in oasst_trees(rows, skipped):
        stack = [(root, [])] if root["message_id"] in usable else []
        while stack:  # depth first, in the rows' order
            node, before = stack.pop()
            path = [*before, {"role": "user" if node["role"] == "prompter" else "assistant", "content": node["text"]}]
            replies = [c for c in children.get(node["message_id"], []) if c["message_id"] in usable]
            if node["role"] == "prompter":
                ranked, texts = [], set()
                for reply in sorted((c for c in replies if c.get("rank") is not None), key=order):
                    if reply["text"].strip() in texts:  # a copy of a better-ranked reply: the pairs would contradict
                        skipped["duplicate_reply"] += 1
                    else:
                        texts.add(reply["text"].strip())
                        ranked.append(reply)
                skipped["unranked_reply"] += sum(c.get("rank") is None for c in replies)
                skipped["single_ranked_reply"] += len(ranked) == 1
                for better, worse in combinations(ranked, 2):
                    if better["rank"] == worse["rank"]:
                        skipped["tied_rank"] += 1
                        continue
                    pairs.append(_pair(path, {"role": "assistant", "content": better["text"]},
                                       {"role": "assistant", "content": worse["text"]},
                                       float(worse["rank"] - better["rank"])))
            stack.extend((child, path) for child in reversed(replies))
    return pairs


# ----------------------------------------------------------------------------------------------------------------
# Holding out


def split_by_prompt(dataset, test_fraction: float, seed: int):
    """Split pairs into ``(train, test)`` by ``prompt_id``: all pairs of one prompt land on the same side.

    The test side holds ``round(test_fraction * prompts)`` of the distinct prompt ids, chosen at random for ``seed``
    (at least one when ``test_fraction > 0`` and there are two prompts or more; never all of them). The choice does
    not depend on the rows' order. Rows keep their order on each side.
    """
    if not 0 <= test_fraction < 1:
        raise ConfigError(f"test_fraction must be in [0, 1), not {test_fraction}")
    ids = list(dataset["prompt_id"])
    distinct = sorted(set(ids))
    n_test = 0
    if test_fraction > 0 and len(distinct) >= 2:
        n_test = min(len(distinct) - 1, max(1, round(len(distinct) * test_fraction)))
    elif test_fraction > 0:
        logger.warning("split_by_prompt: %d prompt(s) are too few to hold any out; the test side is empty",
                       len(distinct))
    random.Random(seed).shuffle(distinct)
    held = set(distinct[:n_test])
    train = dataset.select([i for i, prompt_id in enumerate(ids) if prompt_id not in held])
    test = dataset.select([i for i, prompt_id in enumerate(ids) if prompt_id in held])
    return train, test
