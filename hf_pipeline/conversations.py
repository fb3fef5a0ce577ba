"""Conversations for supervised fine-tuning: any common row format -> a Dataset with one ``messages`` column.

Every source becomes a ``datasets.Dataset`` whose single column ``messages`` holds a list of
``{"role": "system" | "user" | "assistant", "content": str}``: the conversational format TRL's ``SFTTrainer`` takes
and our chat template (``hf_pipeline.tokenizer.CHAT_TEMPLATE``) renders. A source (``config.Source``) is a local
``.json``/``.jsonl`` (optionally compressed), ``.parquet`` or ``.csv`` file, a glob, a folder, or a Hub dataset id
(looked up in the mirror as ``<mirror>/<org>/<name>`` first), opened by ``refs.open_tables``: JSON files are read
line by line, a broken line skipped. The row format is recognised from the columns:

OASST message rows (``message_id``, ``parent_id``, ``role`` prompter/assistant, ``text``, ``rank``, ``deleted``...)
    One row per message; ``parent_id`` links a reply to the message it answers, so each tree of replies is rebuilt.
    Deleted messages are dropped with all their replies, and so are messages whose parent is not in the data. From
    each root we follow the best-ranked reply (lowest ``rank``; an unranked reply comes after every ranked one; ties
    go to the earliest ``created_date``, then the smallest ``message_id``) down to a leaf: one conversation per tree.
    A trailing prompter turn is trimmed, so that every conversation ends with the assistant.
Alpaca rows (``instruction``, ``input``, ``output``; LLaMA-Factory's optional ``system`` and ``history``)
    user = instruction + "\\n\\n" + input (input only when not empty), assistant = output. ``history`` is a list of
    earlier ``[user, assistant]`` pairs, put before that turn; ``system`` becomes a first system message.
``messages`` rows (OpenAI / TRL style) and ``conversations`` rows (ShareGPT style, ``from``/``value``)
    Roles are normalised (human/user/prompter -> user, gpt/assistant/bot/model -> assistant, system); a content
    given as a list of parts (``[{"type": "text", "text": ...}]`` or LLaMA-Factory's ``{"type": "text",
    "value": ...}``) is flattened to a string. An optional ``system`` column becomes a first system message. Trailing
    non-assistant turns are trimmed. Extra keys (``loss_weight``...) are dropped: the chat template's
    ``{% generation %}`` mask already limits the loss to the assistant's turns.

Bad rows never stop a run: each is skipped and counted under a reason in a ``collections.Counter``
(``missing_role``, ``unknown_role``, ``empty_content``, ``non_text_content``, ``no_messages``, ``bad_history``,
``no_assistant_turn``, ``bad_json_line``; for OASST also ``deleted``, ``missing_parent``, ``missing_message_id``
and ``role_not_alternating``). Skip counts are of rows (conversations), except OASST's, which are of messages: a dropped
message's replies are counted under the same reason as the message. Tool roles (ShareGPT's ``function_call``,
``observation``) are counted as ``unknown_role``: tool use has its own stage. A source whose columns match no format
fails at once with a one-line error naming the source and its columns.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter, defaultdict
from typing import Any

from .config import ConfigError, Source, as_sources
from .corpus import _repeat
from .refs import open_tables

logger = logging.getLogger("hf_pipeline")

Message = dict[str, str]
Conversation = list[Message]

ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "prompter": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
}
OASST_COLUMNS = {"message_id", "parent_id", "role", "text"}
OASST_FIELDS = ["message_id", "parent_id", "role", "text", "rank", "deleted", "created_date"]  # all we read


def _features():
    import datasets

    return datasets.Features({"messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}]})


# ----------------------------------------------------------------------------------------------------------------
# Loading


def load_conversations(
    source: Source | str,
    mirror: str | None = None,
    stats: Counter | None = None,
    name: str | None = None,
    split: str | None = None,
):
    """Load one source as a Dataset with a ``messages`` column; skipped rows are added to ``stats`` by reason.

    ``source`` is a Source, or a path or id whose Hub config and split are ``name`` and ``split`` (ignored for local
    files). Without a split, a dataset with a ``train`` split gives that split, else its only split. Raises
    ConfigError (a ValueError) for a source that cannot be found, whose format is unknown, or that yields no
    conversation at all.
    """
    import datasets

    if not isinstance(source, Source):
        source = Source(path=str(source), name=name, split=split)
    skipped: Counter = Counter()
    tables = open_tables(source, mirror, what="conversations", stats=skipped)

    # One format per source: a glob over files of different formats is a mistake (list them separately).
    formats = {label: _detect_format(label, columns) for label, columns, _ in tables}
    if len(set(formats.values())) > 1:
        found = ", ".join(f"{label}: {fmt}" for label, fmt in formats.items())
        raise ConfigError(f"conversations: '{source.path}' mixes row formats ({found}); list them separately")
    fmt = next(iter(formats.values()))
    if fmt == "oasst":  # reading a dataset's nested review fields (detoxify, labels...) is slow: skip them
        tables = [(label, columns, _select(table_rows, [c for c in OASST_FIELDS if c in columns]))
                  for label, columns, table_rows in tables]
    n_rows = sum(len(table_rows) for _, _, table_rows in tables)
    rows = (row for _, _, table_rows in tables for row in table_rows)

    if fmt == "oasst":  # a tree can only be rebuilt from all its messages
        conversations = _oasst_conversations(list(rows), skipped)
    else:  # one row, one conversation
        convert = {"messages": _from_messages, "conversations": _from_messages, "alpaca": _from_alpaca}[fmt]
        conversations = [conv for row in rows if (conv := convert(row, fmt, skipped)) is not None]

    logger.info(
        "conversations %s: %d %s rows -> %d conversations%s",
        source.path, n_rows, fmt, len(conversations),
        f"; skipped: {', '.join(f'{k} {v}' for k, v in sorted(skipped.items()))}" if skipped else "",
    )
    if stats is not None:
        stats.update(skipped)
    if not conversations:
        raise ConfigError(f"conversations: '{source.path}' holds no usable conversation (skipped: {dict(skipped)})")
    return datasets.Dataset.from_dict({"messages": conversations}, features=_features())


def _select(rows, columns: list[str]):
    """Only ``columns`` of a Dataset's rows (a list of dicts is left as it is)."""
    return rows.select_columns(columns) if hasattr(rows, "select_columns") else rows


def _detect_format(label: str, columns: list[str]) -> str:
    names = set(columns)
    if OASST_COLUMNS <= names:
        return "oasst"
    if "messages" in names:
        return "messages"
    if "conversations" in names:
        return "conversations"
    if {"instruction", "output"} <= names:
        return "alpaca"
    raise ConfigError(
        f"conversations: '{label}' has an unknown row format (columns: {', '.join(columns) or 'none'}); expected "
        f"messages, conversations, instruction/output or OASST message rows (message_id, parent_id, role, text)"
    )


# ----------------------------------------------------------------------------------------------------------------
# Row formats


def _flatten_content(content: Any) -> str | None:
    """A message content as one string: a string, or the text parts of a list joined; None if a part is not text."""
    if content is None or isinstance(content, str):
        return content or ""
    parts = [content] if isinstance(content, dict) else content
    if not isinstance(parts, list):
        return None
    texts = []
    for part in parts:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and part.get("type") in (None, "text"):
            texts.append(part.get("text") or part.get("value") or "")
        else:  # an image, audio...: this model reads text only
            return None
    return "".join(texts)


def _clean(messages: Any, skipped: Counter, system: Any = None) -> Conversation | None:
    """Normalise roles and contents; None (and one count) for a conversation that cannot be used.

    ``system`` (a row's ``system`` column) becomes the first message unless the conversation already starts with one.
    """
    if not isinstance(messages, list) or not messages:
        skipped["no_messages"] += 1
        return None
    out: Conversation = []
    for message in messages:
        if not isinstance(message, dict):
            skipped["no_messages"] += 1
            return None
        # (``or``, not a default: a Hub dataset's Arrow rows have every key, missing ones set to None)
        raw_role = message.get("role") or message.get("from")
        if not raw_role:
            skipped["missing_role"] += 1
            return None
        role = ROLE_ALIASES.get(str(raw_role).strip().lower())
        if role is None:
            skipped["unknown_role"] += 1
            return None
        content = message.get("content")
        content = _flatten_content(content if content is not None else message.get("value"))
        if content is None:
            skipped["non_text_content"] += 1
            return None
        if not content.strip():
            skipped["empty_content"] += 1
            return None
        out.append({"role": role, "content": content})
    while out and out[-1]["role"] != "assistant":  # the model must have the last word
        out.pop()
    if not any(m["role"] == "assistant" for m in out):
        skipped["no_assistant_turn"] += 1
        return None
    if isinstance(system, str) and system.strip() and out[0]["role"] != "system":
        out.insert(0, {"role": "system", "content": system})
    return out


def _from_messages(row: dict, column: str, skipped: Counter) -> Conversation | None:
    return _clean(row.get(column), skipped, system=row.get("system"))


def _from_alpaca(row: dict, _: str, skipped: Counter) -> Conversation | None:
    messages = []
    history = row.get("history") or []
    if not isinstance(history, list) or not all(isinstance(h, (list, tuple)) and len(h) == 2 for h in history):
        skipped["bad_history"] += 1
        return None
    for question, answer in history:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    instruction, extra = row.get("instruction"), row.get("input")
    if not all(x is None or isinstance(x, str) for x in (instruction, extra, row.get("output"))):
        skipped["non_text_content"] += 1  # e.g. a list of outputs: a ranking (preference) file, not SFT
        return None
    user = "\n\n".join(part for part in (instruction, extra) if part and part.strip())
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": row.get("output")}]
    return _clean(messages, skipped, system=row.get("system"))


def oasst_trees(rows: list[dict], skipped: Counter):
    """The OASST message trees of ``rows``: ``(root, children, usable)`` per tree (``children``: parent id -> its
    replies; ``usable``: the ids of the tree's usable messages). Every dropped message is counted in ``skipped``
    under its reason (``oasst_problem``; a missing id or parent)."""
    by_id: dict[str, dict] = {}
    for row in rows:
        if row.get("message_id"):
            by_id[row["message_id"]] = row
        else:
            skipped["missing_message_id"] += 1
    children: dict[str, list[dict]] = defaultdict(list)  # parent id -> its replies
    for row in by_id.values():
        if row.get("parent_id") is not None:
            children[row["parent_id"]].append(row)
    for row in by_id.values():
        if row.get("parent_id") is not None and row["parent_id"] not in by_id:
            # its parent was filtered out of this copy (another language, another split): drop the whole subtree
            skipped["missing_parent"] += _subtree_size(row, children)
    for root in (row for row in by_id.values() if row.get("parent_id") is None):
        yield root, children, _usable_messages(root, children, oasst_problem, skipped)


def oasst_problem(row: dict, parent_role: str) -> str | None:
    """Why an OASST message (and so its replies) cannot be used, or None."""
    if not row.get("role"):
        return "missing_role"
    if row["role"] not in ("prompter", "assistant"):
        return "unknown_role"
    if row.get("deleted"):
        return "deleted"
    if not (row.get("text") or "").strip():
        return "empty_content"
    if row["role"] == parent_role:  # a tree alternates prompter / assistant, starting with the prompter
        return "role_not_alternating"
    return None


def _oasst_conversations(rows: list[dict], skipped: Counter) -> list[Conversation]:
    """One conversation per OASST message tree: the best-ranked path from the root prompt to a leaf."""
    def rank_key(row: dict):  # best first: ranked before unranked, then lowest rank, earliest, smallest id
        rank = row.get("rank")
        return (rank is None, rank if rank is not None else 0, row.get("created_date") or "", row["message_id"])

    conversations = []
    for root, children, usable in oasst_trees(rows, skipped):
        # The unusable messages of the tree are dropped (and counted); walk the best path through the rest.
        path, node = [], root if root["message_id"] in usable else None
        while node is not None:
            path.append({"role": "user" if node["role"] == "prompter" else "assistant", "content": node["text"]})
            replies = [c for c in children.get(node["message_id"], []) if c["message_id"] in usable]
            node = min(replies, key=rank_key) if replies else None
        while path and path[-1]["role"] != "assistant":  # a prompt nobody answered is no training example
            path.pop()
        if path:
            conversations.append(path)
        elif root["message_id"] in usable:
            skipped["no_assistant_turn"] += 1
    return conversations


def _usable_messages(root: dict, children: dict, problem, skipped: Counter) -> set[str]:
    """The ids of a tree's usable messages; every dropped message is counted under its own or its ancestor's reason."""
    usable, stack = set(), [(root, "assistant")]  # the root prompt must come from the prompter
    while stack:
        node, parent_role = stack.pop()
        reason = problem(node, parent_role)
        if reason:
            skipped[reason] += _subtree_size(node, children)
            continue
        usable.add(node["message_id"])
        stack.extend((child, node["role"]) for child in children.get(node["message_id"], []))
    return usable


def _subtree_size(node: dict, children: dict) -> int:
    """How many messages the subtree under ``node`` holds, itself included."""
    count, stack = 0, [node]
    while stack:
        current = stack.pop()
        count += 1
        stack.extend(children.get(current["message_id"], []))
    return count


# ----------------------------------------------------------------------------------------------------------------
# Editing conversations


def _map_messages(data, edit):
    """Apply ``edit(conversation) -> conversation`` to a Dataset's ``messages``, or to one conversation (a list)."""
    if isinstance(data, list):
        return edit(data)
    return data.map(lambda row: {"messages": edit(row["messages"])}, desc="editing conversations")


PLACEHOLDER = re.compile(r"\{\{\s*(name|author)\s*\}\}")


def fill_placeholders(messages_or_dataset, name: str, author: str):
    """Replace ``{{name}}`` and ``{{author}}`` (LLaMA-Factory's identity data) in every message content.

    Takes a Dataset with a ``messages`` column or one conversation (a list of messages); returns the same kind.
    """
    values = {"name": name, "author": author}

    def fill(conversation: Conversation) -> Conversation:
        return [{**m, "content": PLACEHOLDER.sub(lambda hit: values[hit.group(1)], m["content"])} for m in conversation]

    return _map_messages(messages_or_dataset, fill)


def add_system_message(dataset, system: str | None):
    """Prepend a system message to the conversations that do not start with one (None or "" changes nothing)."""
    if not system:
        return dataset

    def add(conversation: Conversation) -> Conversation:
        if conversation and conversation[0]["role"] == "system":
            return conversation
        return [{"role": "system", "content": system}, *conversation]

    return _map_messages(dataset, add)


def filter_languages(dataset, languages: list[str], threshold: float = 0.65):
    """Keep the conversations written in one of ``languages`` (ISO codes: ``["en"]``): ``(kept, dropped)``.

    The language is the data stage's (``hf_pipeline.data.lid.BundledFastTextLID``, the bundled fastText model) on the
    conversation's text (all turns but the system message); a conversation is kept when its score for one of
    the languages is above ``threshold`` (FineWeb's 0.65 for English). A base model pretrained on English-only pages
    gains nothing from replies in scripts its tokenizer barely covers, and its held-out prompts should match.
    """
    if not languages:
        return dataset, 0
    from datatrove.data import Document

    from .data.lid import BundledFastTextLID

    lid = BundledFastTextLID(languages)
    known = {label.split("__")[2] for label in lid.model.predict("", k=-1)[0]}  # every language the model knows
    unknown = sorted(set(languages) - known)
    if unknown:
        raise ConfigError(f"languages: {unknown} are not language codes of the language-ID model (e.g. en, de, zh)")

    def keep(conversation: Conversation) -> bool:
        text = " ".join(m["content"] for m in conversation if m["role"] != "system")
        _, scores = lid.predict(Document(text=text, id=""))  # {language: score} for the wanted languages
        return any(score > threshold for score in scores.values())

    rows = [i for i, conv in enumerate(dataset["messages"]) if keep(conv)]
    return dataset.select(rows), len(dataset) - len(rows)


# ----------------------------------------------------------------------------------------------------------------
# Mixing and holding out


def mix_conversations(sources: list[Source], mirror: str | None, seed: int, languages: list[str] | None = None,
                      language_threshold: float = 0.65):
    """Load sources, repeat each by its ``weight`` and shuffle them together. Returns ``(dataset, stats)``.

    With ``languages``, each source keeps only its conversations in those languages (``filter_languages``); the
    others are counted as skipped ``language``, before the weight repeats anything.

    Each source is a ``Source`` (or what ``config.as_sources`` takes: a path, ``{"path": ..., "split": ...,
    "weight": 2.0}``). ``weight`` is the number of passes over the source: 2.0 takes it twice, 0.5 a random half (the
    fractions of alignment-handbook's ``dataset_mixture``). ``stats`` holds the total ``conversations``, the summed
    ``skipped`` Counter, and per source its ``conversations`` loaded, ``mixed`` (after the weight) and ``skipped``.
    """
    import datasets

    if not sources:
        raise ConfigError("conversations: no sources given")
    parts, stats = [], {"conversations": 0, "skipped": Counter(), "sources": []}
    try:
        sources = as_sources(sources)
    except ConfigError as e:
        raise ConfigError(f"conversations: {e}") from None
    for source in sources:
        skipped: Counter = Counter()
        ds = load_conversations(source, mirror, skipped)
        if languages:
            ds, skipped["language"] = filter_languages(ds, languages, language_threshold)
        mixed = _repeat(ds, source.weight, seed)
        parts.append(mixed)
        stats["skipped"].update(skipped)
        stats["sources"].append(
            {"path": source.path, "name": source.name, "split": source.split, "weight": source.weight,
             "conversations": len(ds), "mixed": len(mixed), "skipped": skipped}
        )
        logger.info("conversations %s: %d -> %d in the mixture (weight %g)", source.path, len(ds), len(mixed),
                    source.weight)
    mixture = datasets.concatenate_datasets(parts).shuffle(seed=seed).flatten_indices()
    stats["conversations"] = len(mixture)
    return mixture, stats


def split_heldout(dataset, fraction: float, seed: int):
    """Split off ``fraction`` of the distinct conversations (at least one if fraction > 0): ``(train, heldout)``.

    Copies of one conversation (a source repeated by its weight, or duplicates in the data) all go to the same
    side, so nothing held out is ever trained on; the held-out part keeps one copy of each.
    """
    import datasets

    if not 0 <= fraction < 1:
        raise ConfigError(f"heldout fraction: must be in [0, 1), not {fraction}")
    if fraction == 0:
        return dataset, dataset.select([])
    keys = [_conversation_key(conv) for conv in dataset["messages"]]
    first_row: dict[bytes, int] = {}
    for i, key in enumerate(keys):
        first_row.setdefault(key, i)
    n_held = max(1, int(len(first_row) * fraction))
    if n_held >= len(first_row):
        raise ConfigError(f"heldout fraction {fraction}: {len(first_row)} distinct conversations are too few to split")
    distinct = datasets.Dataset.from_dict({"row": list(first_row.values())})
    held_rows = distinct.train_test_split(test_size=n_held, seed=seed, shuffle=True)["test"]["row"]
    held_keys = {keys[i] for i in held_rows}
    train = dataset.select([i for i, key in enumerate(keys) if key not in held_keys])
    return train, dataset.select(list(held_rows))


def _conversation_key(conversation: Conversation) -> bytes:
    text = json.dumps([[m["role"], m["content"]] for m in conversation], ensure_ascii=False)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
