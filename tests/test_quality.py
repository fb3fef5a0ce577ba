"""The quality stage (a fastText classifier trained on real reference text against real crawl text) and the data
stage's classifier step: scores in the dataset, drops counted, models by path or Hub id, fastText or transformers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import yaml

from conftest import HTML, ROOT, TRUTH, run_cli
from hf_pipeline.config import ConfigError, DataConfig, build_config
from hf_pipeline.data import quality
from hf_pipeline.data.quality import ClassifierFilter, load_classifier, page_texts, passages

TINY = ROOT / "recipes" / "tiny.yaml"
SOME_PAGES = sorted(HTML.glob("*.html.gz"))[:24]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The tiny recipe's quality stage, as the recipe names it (Wikipedia and Gutenberg vs WARC pages and the news
    pages' boilerplate)."""
    run_dir = tmp_path_factory.mktemp("quality")
    result = run_cli("quality", "--config", TINY, "--output_dir", run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir / "quality"


def data_run(tmp_path: Path, name: str, classifiers: list[dict], inputs=SOME_PAGES, env=None) -> Path:
    run_dir = tmp_path / name
    recipe = {"output_dir": str(run_dir), "data": {
        "inputs": [str(p) for p in inputs], "url_map": str(TRUTH), "workers": 2, "classifiers": classifiers}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = run_cli("data", "--config", path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_the_tiny_recipe_classifier_separates_reference_text_from_crawl_on_held_out_pages(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["heldout_accuracy"] >= 0.9  # the goal, on its own held-out split
    assert metrics["heldout_roc_auc"] >= 0.95 and metrics["heldout_precision"] > 0.85
    assert metrics["heldout_recall"] > 0.85
    assert metrics["train_passages"] > 500 and metrics["heldout_passages"] > 100
    assert set(metrics["heldout_accuracy_by_source"]) == {
        "../shared/data/text/wikipedia_30_articles.txt", "../shared/data/text/gutenberg/EN-*.txt",
        "../shared/data/web/*.warc.gz (page)", "../shared/data/web/article_extraction/html (boilerplate)"}
    info = json.loads((trained / "classifier.json").read_text())
    assert info["positive_label"] == "hq" and sorted(info["labels"]) == ["cc", "hq"]
    samples = json.loads((trained / "samples.json").read_text())["highest_and_lowest"]
    assert samples[0]["label"] == "hq" and samples[-1]["label"] == "cc"
    # plain fastText loads it, and scores as the step does
    import fasttext

    model = fasttext.load_model(str(trained / "model.bin"))
    text = "The committee met in the spring of 1851 to consider the question of the new railway to the coast."
    labels, probs = model.predict(text, k=-1)
    ours = load_classifier(str(trained)).score([text])[0]
    assert dict(zip(labels, probs))["__label__hq"] == pytest.approx(ours)
    assert ours > 0.5 > load_classifier(str(trained)).score(["Home | About us | Contact | Login | Sign up | Cart"])[0]


def test_held_out_pages_never_share_a_page_with_training_and_splits_are_balanced():
    items = [quality.Passage(f"text {i}", "hq" if i % 3 else "cc", f"src{i % 2}", f"page{i // 4}")
             for i in range(400)]
    train, heldout = quality.split_and_balance(items, 0.25, seed=0)
    assert not {p.group for p in train} & {p.group for p in heldout}
    for split in (train, heldout):
        labels = [p.label for p in split]
        assert labels.count("hq") == labels.count("cc") > 0
    # the same seed, the same split
    assert [p.text for p in quality.split_and_balance(items, 0.25, seed=0)[1]] == [p.text for p in heldout]


def test_passages_join_short_rows_and_cut_long_ones():
    rows = ["one two", "three four five", " ".join(f"w{i}" for i in range(25)), "tail"]
    got = list(passages(rows, min_words=4, max_words=10))
    # 2 + 3 words joined; 25 cut into 10, 10, 5; "tail" alone is too short
    assert [(row, len(text.split())) for row, text in got] == [(1, 5), (2, 10), (2, 10), (2, 5)]
    assert got[0][1] == "one two three four five"
    assert quality.roc_auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75


def test_boilerplate_is_the_page_text_the_main_text_leaves_out():
    page = SOME_PAGES[0]
    main = dict(page_texts([str(page)], str(TRUTH), "main"))
    boiler = dict(page_texts([str(page)], str(TRUTH), "boilerplate"))
    whole = dict(page_texts([str(page)], str(TRUTH), "page"))
    (key, main_text), = main.items()
    main_lines = {line.strip() for line in main_text.splitlines()}
    assert boiler[key] and not main_lines & set(boiler[key].splitlines())
    assert set(boiler[key].splitlines()) <= {line.strip() for line in whole[key].splitlines()}
    assert len(whole[key]) > len(main_text)


def test_data_stage_scores_every_page_and_drops_the_low_ones_counting_them(trained, tmp_path):
    scored = data_run(tmp_path, "scored", [{"name": "quality", "model": str(trained)}])
    ds = datasets.load_dataset(str(scored / "data"), split="train")
    assert "quality_score" in ds.column_names and len(ds) > 10
    scores = np.array(ds["quality_score"])
    assert ((0 <= scores) & (scores <= 1)).all()
    direct = np.array(load_classifier(str(trained)).score(ds["text"]))  # the published (PII-scrubbed) text
    assert np.median(np.abs(direct - scores)) < 1e-6 and np.abs(direct - scores).max() < 0.05
    threshold = float(np.quantile(scores, 0.3))
    kept = data_run(tmp_path, "kept", [{"name": "quality", "model": str(trained), "min_score": threshold}])
    kept_ds = datasets.load_dataset(str(kept / "data"), split="train")
    assert set(kept_ds["id"]) == {i for i, s in zip(ds["id"], scores) if s >= threshold}
    metrics = json.loads((kept / "data" / "metrics.json").read_text())
    assert metrics["dropped_quality"] == int((scores < threshold).sum()) > 0
    assert metrics["accounting_problems"] == 0
    steps = {s["step"]: s for s in json.loads((kept / "data" / "stats.json").read_text())["steps"]}
    assert steps["quality"]["dropped"] == {"below_min_score": metrics["dropped_quality"]}
    order = list(steps)
    assert order.index("fineweb_quality") + 1 == order.index("quality") < order.index("exact_dedup")


def test_a_classifier_pushed_to_the_hub_loads_by_id(trained, tmp_path):
    from hub_server import HubServer

    with HubServer(tmp_path / "hub") as hub:
        env, url = hub.env(tmp_path / "hf"), hub.url
        pushed = run_cli("push", trained, "--repo-id", "me/quality-fasttext", env=env)
        assert pushed.returncode == 0, pushed.stderr[-2000:]
        pulled = run_cli("pull", "me/quality-fasttext", "--to", tmp_path / "pulled", env=env)
        assert pulled.returncode == 0, pulled.stderr[-2000:]
        card = (tmp_path / "pulled" / "README.md").read_text()
        assert yaml.safe_load(card.split("---")[1])["library_name"] == "fasttext"
        assert 'fasttext.load_model(hf_hub_download("me/quality-fasttext", "model.bin"))' in card
        assert (tmp_path / "pulled" / "model.bin").read_bytes() == (trained / "model.bin").read_bytes()
        by_id = data_run(tmp_path, "by_id", [{"name": "quality", "model": "me/quality-fasttext", "min_score": 0.8}],
                         env=env)
        missing = run_cli("data", "--inputs", SOME_PAGES[0], "--output_dir", tmp_path / "missing", "--classifiers",
                          '{"name": "quality", "model": "me/no-such-classifier"}', env=env)
    by_path = data_run(tmp_path, "by_path", [{"name": "quality", "model": str(trained), "min_score": 0.8}])
    assert (datasets.load_dataset(str(by_id / "data"), split="train")["id"]
            == datasets.load_dataset(str(by_path / "data"), split="train")["id"])
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().splitlines() == [
        f"hf-pipeline: error: data.classifiers[0] (quality): pull: no model repo 'me/no-such-classifier' on {url}"]
    assert not list((tmp_path / "missing").glob("data*"))  # refused before anything was written


def _sequence_classifier(tiny_run, folder: Path, num_labels: int, **config) -> Path:
    """A small random transformers sequence classifier with the test tokenizer (stands in for FineWeb-Edu's
    regressor or a toxicity model: the same code path)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tiny_run / "tokenizer")
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, num_labels=num_labels, pad_token_id=tokenizer.pad_token_id, **config))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_transformers_classifiers_regressor_keeps_and_safety_model_drops(tiny_run, tmp_path):
    from datatrove.data import Document
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts = ["A short note.", "ROMEO: But soft, what light through yonder window breaks? It is the east.",
             "Buy now! Cheap deals!", "The river rose all night and by morning the bridge was gone."]
    regressor = _sequence_classifier(tiny_run, tmp_path / "edu", 1)
    model = AutoModelForSequenceClassification.from_pretrained(regressor)
    tokenizer = AutoTokenizer.from_pretrained(regressor)
    expected = [model(**tokenizer(t, return_tensors="pt")).logits[0, 0].item() for t in texts]
    one = ClassifierFilter(str(regressor), "edu", min_score=float(np.median(expected)))
    docs = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]
    results = [one.filter(d) for d in docs]
    assert [d.metadata["edu_score"] for d in docs] == pytest.approx(expected, abs=1e-5)
    assert [r is True for r in results] == [s >= np.median(expected) for s in expected]
    batched = ClassifierFilter(str(regressor), "edu", batch_size=4)  # padded batches score as one at a time
    batch_docs = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]
    batched.filter_batch(batch_docs)
    assert [d.metadata["edu_score"] for d in batch_docs] == pytest.approx(expected, abs=1e-4)

    toxic = _sequence_classifier(tiny_run, tmp_path / "toxic", 2, id2label={0: "ok", 1: "toxic"},
                                 label2id={"ok": 0, "toxic": 1}, problem_type="multi_label_classification")
    scorer = load_classifier(str(toxic), "toxic")
    probs = scorer.score(texts)
    model = AutoModelForSequenceClassification.from_pretrained(toxic)
    assert probs == pytest.approx([model(**tokenizer(t, return_tensors="pt")).logits[0, 1].sigmoid().item()
                                   for t in texts], abs=1e-5)
    limit = float(np.median(probs))
    safety = ClassifierFilter(str(toxic), "toxicity", label="toxic", max_score=limit)
    reasons = [safety.filter(Document(text=t, id="x")) for t in texts]
    assert [r is True for r in reasons] == [p <= limit for p in probs]
    assert (False, "above_max_score") in reasons


def test_bad_classifier_settings_are_one_line_errors(trained, tmp_path):
    two = tmp_path / "two"
    two.mkdir()
    shutil.copy(trained / "model.bin", two / "a.bin")
    shutil.copy(trained / "model.bin", two / "b.bin")
    (tmp_path / "notes.txt").write_text("not a model")
    cases = [
        ({"name": "quality", "model": str(trained), "label": "edu"}, "label 'edu' is not one of its labels (hq, cc)"),
        ({"name": "quality", "model": str(two)}, "holds 2 fastText models (a.bin, b.bin); name one with filename"),
        ({"name": "quality", "model": str(tmp_path / "notes.txt")}, "is not a fastText model"),
        ({"name": "quality", "model": str(two), "filename": "c.bin"}, "'c.bin' not found"),
    ]
    for spec, needle in cases:
        result = run_cli("data", "--inputs", SOME_PAGES[0], "--output_dir", tmp_path / "run", "--classifiers",
                         json.dumps(spec))
        assert result.returncode == 2 and needle in result.stderr, (spec, result.stderr[-1500:])
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    config_cases = [
        ({"name": "Quality", "model": "x"}, "data.classifiers[0].name: lower-case"),
        ({"name": "language", "model": "x"}, "is a step of the data stage"),
        ({"name": "q", "model": "x", "min_score": 0.9, "max_score": 0.1}, "drops everything"),
        ({"name": "q", "model": "x", "min_score": "high"}, "data.classifiers[0].min_score: a number"),
        ({"name": "q", "modle": "x"}, "unknown key 'modle'"),
        ({"name": "q", "model": "./missing/model.bin"}, "'./missing/model.bin' not found"),
    ]
    for spec, needle in config_cases:
        with pytest.raises(ConfigError, match=None) as error:
            config = DataConfig(inputs=[str(SOME_PAGES[0])], classifiers=[spec])
            config.check()
        assert needle in str(error.value), (spec, str(error.value))
    with pytest.raises(ConfigError, match="each name once"):
        DataConfig(inputs=["x"], classifiers=[{"name": "q", "model": "a/b"}, {"name": "q", "model": "c/d"}])


def test_quality_stage_refuses_missing_sides_and_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"quality: no negative source \(negative, negative_pages, "
                                          r"boilerplate_pages\)"):
        build_config("quality", ["--output_dir", str(tmp_path), "--positive", str(ROOT / "README.md")]).check()
    with pytest.raises(ConfigError, match="quality.negative_pages"):
        build_config("quality", ["--output_dir", str(tmp_path), "--positive", str(ROOT / "README.md"),
                                 "--negative_pages", str(tmp_path / "no_such_pages")]).check()
    with pytest.raises(ConfigError, match="quality.min_words: 300 > max_words 200"):
        build_config("quality", ["--min_words", "300"])
