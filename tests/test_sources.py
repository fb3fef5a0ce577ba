"""One Source type for every dataset field, and one opener (refs.open_dataset / open_tables) for every loader: RUN/
expansion, one-line errors, one file-type map, the tolerant JSON reader, split choice, and no stale cached rows."""

from __future__ import annotations

import gzip
import json
import logging
import shutil
from collections import Counter

import datasets
import pytest
import yaml
from conftest import MIRROR, SHAKESPEARE, SHARED_DATA

from hf_pipeline.config import ConfigError, Source, as_sources, build_config
from hf_pipeline.conversations import load_conversations, mix_conversations
from hf_pipeline.corpus import load_source
from hf_pipeline.evals.multiple_choice import load_mmlu
from hf_pipeline.refs import open_dataset, open_tables

C4 = SHARED_DATA / "text" / "c4_200.jsonl"
V1_SFT = SHARED_DATA / "conversations" / "v1_sft_demo.jsonl"
MMLU = MIRROR / "cais" / "mmlu"


def write_jsonl(path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """A datasets cache of the test's own: a copy of a mirror folder must not overwrite the real mirror's cached rows
    that other processes read (datasets files both under the same key)."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))


# --- one Source type ------------------------------------------------------------------------------------------------


def test_sources_parse_from_yaml_mappings_and_strings_with_run_expansion(tmp_path):
    run = tmp_path / "run"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "output_dir": str(run),
        "tokenizer": {"corpus": [str(SHAKESPEARE), {"path": "RUN/data", "weight": 3}]},
        "pretrain": {"corpus": ["RUN/data", {"path": str(C4), "sample_by": "line", "text_column": "text"}]},
        "sft": {"datasets": [{"path": "OpenAssistant/oasst1", "split": "validation"}, "RUN/chats/*.jsonl",
                             {"path": "RUN/more.json", "weight": 0.5}],
                "identity_data": "RUN/identity.json"},
    }))
    tokenizer = build_config("tokenizer", ["--config", str(recipe)])
    assert tokenizer.corpus == [Source(str(SHAKESPEARE)), Source(str(run / "data"), weight=3.0)]
    pretrain = build_config("pretrain", ["--config", str(recipe)])
    assert pretrain.corpus == [Source(str(run / "data")), Source(str(C4), sample_by="line")]
    sft = build_config("sft", ["--config", str(recipe)])
    assert sft.datasets == [Source("OpenAssistant/oasst1", split="validation"), Source(str(run / "chats" / "*.jsonl")),
                            Source(str(run / "more.json"), weight=0.5)]
    assert all(type(s) is Source for s in tokenizer.corpus + pretrain.corpus + sft.datasets)
    assert sft.identity_data == str(run / "identity.json")
    # The command line gives paths; RUN/ is expanded there too. Python callers get the same conversion.
    assert build_config("sft", ["--output_dir", str(run), "--datasets", "RUN/a.jsonl", "b.jsonl"]).datasets == [
        Source(str(run / "a.jsonl")), Source("b.jsonl")]
    given = Source("RUN/x.txt", weight=2)
    assert as_sources([given, "y.txt", {"path": "RUN/z", "split": "test"}], output_dir="out") == [
        Source("out/x.txt", weight=2.0), Source("y.txt"), Source("out/z", split="test")]
    assert given.path == "RUN/x.txt"  # the caller's object is left as it was
    assert as_sources("a.txt") == [Source("a.txt")] and as_sources(None) == []


@pytest.mark.parametrize(
    "section, entry, message",
    [
        ("pretrain", "corpus", "pretrain.corpus: unknown key 'colour' (keys: path, name, split, text_column, "
                               "sample_by, weight, heldout)"),
        ("tokenizer", "corpus", "tokenizer.corpus: unknown key 'colour'"),
        ("sft", "datasets", "sft.datasets: unknown key 'colour'"),
    ],
)
def test_unknown_key_in_a_source_mapping_is_a_one_line_error(tmp_path, section, entry, message):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({section: {entry: [{"path": "a.jsonl", "colour": "red"}]}}))
    with pytest.raises(ConfigError) as err:
        build_config(section, ["--config", str(recipe)])
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "item, message",
    [
        ({"path": "a.jsonl", "wieght": 2}, "unknown key 'wieght' (did you mean 'weight'?)"),
        ({"weight": 2}, "missing key 'path'"),
        ({"path": "a.jsonl", "weight": 0}, "weight must be > 0, not 0.0"),
        ({"path": "a.jsonl", "weight": "lots"}, "weight must be a number, not 'lots'"),
        ({"path": "a.txt", "sample_by": "word"}, "sample_by must be line, paragraph or document, not 'word'"),
        (3, "source 3 is neither a path nor a mapping"),
    ],
)
def test_bad_source_values_are_one_line_config_errors(item, message):
    with pytest.raises(ConfigError) as err:
        as_sources([item])
    assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="^conversations: "):  # the mixture says which field it was
        mix_conversations([item], mirror=None, seed=0)


# --- one opener, one file-type map ----------------------------------------------------------------------------------


def test_each_file_type_opens_through_one_map(tmp_path):
    texts = ["The first document.", "The second one, with a comma.", "A third."]
    (tmp_path / "docs.txt").write_text("\n\n".join(texts), encoding="utf-8")
    write_jsonl(tmp_path / "docs.jsonl", [{"text": t, "n": i} for i, t in enumerate(texts)])
    datasets.Dataset.from_dict({"text": texts, "n": [0, 1, 2]}).to_parquet(str(tmp_path / "docs.parquet"))
    datasets.Dataset.from_dict({"text": texts, "n": [0, 1, 2]}).to_csv(str(tmp_path / "docs.csv"), index=False)
    with gzip.open(tmp_path / "docs.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(texts)))
    for name in ("docs.txt", "docs.jsonl", "docs.parquet", "docs.csv", "docs.jsonl.gz"):
        ds = open_dataset(str(tmp_path / name), mirror=None)
        assert isinstance(ds, datasets.Dataset) and ds["text"] == texts, name
        (label, columns, rows), = open_tables(str(tmp_path / name), mirror=None)  # the same rows, table by table
        assert label == str(tmp_path / name) and "text" in columns and [r["text"] for r in rows] == texts, name
    # sample_by cuts text files: each line, each paragraph, the whole file
    assert len(open_dataset(Source(str(tmp_path / "docs.txt"), sample_by="line"), None)) == 5  # 2 blank lines
    assert open_dataset(Source(str(tmp_path / "docs.txt"), sample_by="document"), None)["text"] == [
        "\n\n".join(texts)]
    # one source, one file type, one set of columns; else list them separately
    with pytest.raises(ConfigError, match=r"mixes file types \['json', 'parquet'\]; list them separately"):
        open_dataset(str(tmp_path / "docs.[jp]*"), None)
    write_jsonl(tmp_path / "other" / "a.jsonl", [{"text": "x"}])
    write_jsonl(tmp_path / "other" / "b.jsonl", [{"body": "y"}])
    with pytest.raises(ConfigError, match=r"files with different columns \(a.jsonl: text; b.jsonl: body\); list them"):
        open_dataset(str(tmp_path / "other" / "*.jsonl"), None, what="corpus")
    (tmp_path / "page.html").write_text("<p>hi</p>")
    with pytest.raises(ConfigError, match=r"^corpus: .*page.html: unsupported file type \(use .txt, .md, .json"):
        open_dataset(str(tmp_path / "page.html"), None, what="corpus")
    with pytest.raises(ConfigError, match="^corpus: '.*nothing-here.jsonl' not found$"):
        open_dataset(str(tmp_path / "nothing-here.jsonl"), None, what="corpus")


def test_real_files_open_the_same_as_rows_and_as_a_dataset():
    (_, columns, rows), = open_tables(str(C4), None)
    ds = open_dataset(Source(str(C4)), None)
    assert columns == ds.column_names and rows == ds.to_list() and len(ds) == 200
    shakespeare = open_dataset(Source(str(SHAKESPEARE), sample_by="line"), None)
    assert shakespeare["text"][:2] == SHAKESPEARE.read_text(encoding="utf-8").splitlines()[:2]


def test_a_bad_json_line_is_skipped_counted_and_named_file_line(tmp_path, caplog):
    rows = [{"text": f"document {i}"} for i in range(4)]
    path = tmp_path / "docs.jsonl"
    lines = [json.dumps(r) for r in rows]
    lines.insert(2, '{"text": "cut off')  # line 3
    lines.insert(4, '["a list", "not an object"]')  # line 5
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    stats = Counter()
    with caplog.at_level(logging.WARNING, logger="hf_pipeline"):
        (_, columns, table), = open_tables(str(path), None, stats=stats)
    assert table == rows and columns == ["text"] and stats == Counter(bad_json_line=2)
    assert f"{path}:3: skipped bad JSON line" in caplog.text and f"{path}:5: skipped bad JSON line" in caplog.text
    # open_dataset: the json builder fails on the broken line, the tolerant reader takes over
    stats = Counter()
    assert open_dataset(str(path), None, stats=stats)["text"] == [r["text"] for r in rows]
    assert stats == Counter(bad_json_line=2)
    # conversations count it with their own reasons
    chats = tmp_path / "chats.jsonl"
    chats.write_text(V1_SFT.read_text(encoding="utf-8").splitlines()[0] + "\n{broken\n", encoding="utf-8")
    stats = Counter()
    assert len(load_conversations(str(chats), stats=stats)) == 1 and stats == Counter(bad_json_line=1)


def test_split_choice_and_folders(tmp_path):
    parts = {name: datasets.Dataset.from_dict({"text": [f"{name} {i}" for i in range(n)]})
             for name, n in (("train", 3), ("test", 2))}
    datasets.DatasetDict(parts).save_to_disk(str(tmp_path / "saved"))
    assert open_dataset(str(tmp_path / "saved"), None)["text"] == parts["train"]["text"]  # no split: train
    assert open_dataset(Source(str(tmp_path / "saved"), split="test"), None)["text"] == parts["test"]["text"]
    with pytest.raises(ConfigError, match=r"^corpus: '.*saved' has no split 'dev' \(splits: train, test\)$"):
        open_dataset(Source(str(tmp_path / "saved"), split="dev"), None, what="corpus")
    datasets.DatasetDict({"a": parts["train"], "b": parts["test"]}).save_to_disk(str(tmp_path / "two"))
    with pytest.raises(ConfigError, match="has splits a, b: set split"):
        open_dataset(str(tmp_path / "two"), None)
    datasets.DatasetDict({"test": parts["test"]}).save_to_disk(str(tmp_path / "one"))
    assert len(open_dataset(str(tmp_path / "one"), None)) == 2  # the only split
    # A plain folder laid out as the data stage's output: the train files, not the dropped documents or the stats
    run_data = tmp_path / "run_data"
    (run_data / "data").mkdir(parents=True)
    parts["train"].to_parquet(str(run_data / "data" / "train-00000.parquet"))
    parts["test"].to_parquet(str(run_data / "data" / "train-00001.parquet"))
    write_jsonl(run_data / "dropped" / "gopher_quality" / "00000.jsonl", [{"text": "dropped", "reason": "x"}])
    (run_data / "stats.json").write_text("{}")
    assert load_source(Source(str(run_data)))["text"] == [*parts["train"]["text"], *parts["test"]["text"]]
    assert [label for label, _, _ in open_tables(str(run_data), None)] == [
        str(run_data / "data" / f"train-0000{i}.parquet") for i in range(2)]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="^conversations: folder '.*empty' holds no data file"):
        open_tables(str(tmp_path / "empty"), None, what="conversations")


# --- no stale rows from datasets' cache -----------------------------------------------------------------------------


def hub_like_folder(folder, rows: list[dict]) -> str:
    """A folder as the Hub lays one out: README.md with a ``configs:`` block naming the data file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train.jsonl\n---\n"
    )
    return write_jsonl(folder / "data" / "train.jsonl", rows)


def test_an_edited_local_folder_is_read_again_not_served_from_the_cache(tmp_path, own_cache):
    """datasets files a README-configured folder under <folder name>/<config>/<hash of the README>: without the guard an
    edited (or another) copy silently gave the first copy's rows to corpus, conversations and MMLU loads."""
    docs = tmp_path / "notes"
    hub_like_folder(docs, [{"text": f"old {i}"} for i in range(5)])
    assert load_source(Source(str(docs)))["text"] == [f"old {i}" for i in range(5)]
    hub_like_folder(docs, [{"text": f"new {i}"} for i in range(3)])  # same README, new rows
    assert load_source(Source(str(docs)))["text"] == [f"new {i}" for i in range(3)]
    assert open_dataset(str(docs), None)["text"] == [f"new {i}" for i in range(3)]

    chats = tmp_path / "chats"
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    hub_like_folder(chats, [{"messages": conversation}] * 4)
    assert len(load_conversations(str(chats))) == 4
    hub_like_folder(chats, [{"messages": conversation}] * 2)
    assert len(load_conversations(str(chats))) == 2

    # A copy of the real MMLU mirror with fewer, edited questions: the copy's rows, not the real mirror's
    copy = tmp_path / "hub" / "cais" / "mmlu"
    (copy / "all").mkdir(parents=True)
    shutil.copy(MMLU / "README.md", copy / "README.md")
    shutil.copy(MMLU / "all" / "dev.jsonl", copy / "all" / "dev.jsonl")
    lines = (MMLU / "all" / "validation.jsonl").read_text(encoding="utf-8").split("\n")  # U+2028 is no line break
    real = [json.loads(line) for line in lines if line.strip()]
    assert len(load_mmlu(str(MIRROR), split="validation")) == len(real) == 1531
    edited = [{**row, "question": f"Edited: {row['question']}"} for row in real[:10]]
    write_jsonl(copy / "all" / "validation.jsonl", edited)
    assert load_mmlu(str(tmp_path / "hub"), split="validation")["question"] == [r["question"] for r in edited]
    with pytest.raises(ConfigError, match=r"^mmlu: 'cais/mmlu' has no split 'test' \(splits: dev, validation\)$"):
        load_mmlu(str(tmp_path / "hub"), split="test")


def test_a_split_can_be_sliced_and_a_source_given_as_json_on_the_command_line(tmp_path):
    nq = "google-research-datasets/nq_open"
    whole = open_dataset(Source(path=nq, split="validation"), str(MIRROR))
    first = open_dataset(Source(path=nq, split="validation[:2000]"), str(MIRROR))
    rest = open_dataset(Source(path=nq, split="validation[2000:]"), str(MIRROR))
    tenth = open_dataset(Source(path=nq, split="validation[:10%]"), str(MIRROR))
    assert (len(whole), len(first), len(rest), len(tenth)) == (3610, 2000, 1610, 361)
    assert list(first["question"]) + list(rest["question"]) == list(whole["question"])  # disjoint, in order: probe / held out
    with pytest.raises(ConfigError, match="has no split 'valid' \\(splits: validation\\)"):
        open_dataset(Source(path=nq, split="valid[:10]"), str(MIRROR))
    config = build_config("probe", ["--output_dir", str(tmp_path), "--questions",
                                    '{"path": "%s", "split": "validation[:2000]"}' % nq, "runs/x/facts"])
    assert config.questions == [Source(path=nq, split="validation[:2000]"), Source(path="runs/x/facts")]
    with pytest.raises(ConfigError, match="unknown key 'splt'"):
        build_config("probe", ["--output_dir", str(tmp_path), "--questions", '{"path": "a", "splt": "b"}'])
