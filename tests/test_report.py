"""The report card: RUN/report.md and a self-contained RUN/report.html from small run folders built here (the files
copy the structure of a real runs/tiny: metrics.json, config.yaml, samples.json, log_history.json, a PNG)."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from hf_pipeline.errors import ConfigError
from hf_pipeline.report import fmt, fmt_seconds, pct, write_report

from conftest import run_cli


def _stage(run: Path, name: str, metrics: dict | None, config: dict | None = None, samples=None) -> Path:
    folder = run / name
    folder.mkdir(parents=True)
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (folder / "config.yaml").write_text(yaml.safe_dump({"stage": name.split(".")[0], "output_dir": str(run),
                                                        "seed": 0, **(config or {})}, sort_keys=False))
    if samples is not None:
        (folder / "samples.json").write_text(json.dumps(samples, indent=2))
    return folder


def _png(path: Path) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 4, 16], [0.5, 0.6, 0.55], marker="o")
    fig.savefig(path, format="png", dpi=40)
    plt.close(fig)
    return path.read_bytes()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run: tokenizer, pretrain, sft (with a plot and nested samples), grpo, rank, reward finished; rlhf
    incomplete; data, facts, index, probe, dpo not run."""
    run = tmp_path_factory.mktemp("runs") / "mini"
    _stage(run, "tokenizer", {"bytes_per_token": 3.8160491829801004, "bytes_per_token_ratio": 0.9855201423717845,
                              "reference": "../shared/data/tokenizers/gpt2",
                              "reference_bytes_per_token": 3.8721168841828777, "vocab_size": 8192,
                              "wall_time_s": 4.04}, {"vocab_size": 8192, "corpus": [{"path": "a.txt", "weight": 1.0}]})
    pretrain = _stage(run, "pretrain", {"bf16": True, "device": "cpu", "heldout_bpb": 1.7881489718836774,
                                        "heldout_loss": 4.668392464407638, "non_embedding_params": 5310720,
                                        "num_params": 7407872, "steps": 1650, "tokens_per_s": 4114.450693071622,
                                        "train_seconds": 821.3004, "train_tokens": 3379200, "wall_time_s": 827.85},
                      {"depth": 4, "seq_len": 256, "learning_rate": None})
    (pretrain / "log_history.json").write_text(json.dumps({"log_history": [
        {"loss": 9.06, "step": 1}, {"eval_bpb": 2.1915757064193215, "eval_loss": 5.7, "step": 250},
        {"eval_bpb": 1.7881489718836774, "eval_loss": 4.67, "step": 1650}]}))
    sft_samples = {key: {
        "identity": [{"correct": key == "after", "question": f"Who are you? {i}",
                      "reply": "I am Tiny, an AI assistant developed by hf-pipeline." if key == "after"
                      else ", and the 19th century " * 20} for i in range(5)],
        "tools": [{"expected": "131976", "family": "multiply", "question": "What is 216 * 611?",
                   "with_tools": "<|python_start|>print(216 * 611)<|python_end|>The answer is 131976.",
                   "with_tools_correct": True, "without_tools": "The answer is 12400.",
                   "without_tools_correct": False}] if key == "after" else []} for key in ("before", "after")}
    sft = _stage(run, "sft", {
        "bf16": True, "device": "cpu", "heldout_loss_before": 5.852697849273682, "heldout_loss_after": 5.2023,
        "identity_accuracy_before": 0.0, "identity_accuracy_after": 0.85, "stop_rate_before": 0.0,
        "stop_rate_after": 1.0, "qa_refusal_rate_before": 0.0, "qa_refusal_rate_after": 0.5643,
        "tools_multiply_with_before": None, "tools_multiply_with_after": 1.0, "tools_multiply_without_before": None,
        "tools_multiply_without_after": 0.0, "start_model": "/elsewhere/runs/mini/pretrain", "steps": 3652,
        "train_seconds": 2945.6845, "num_params": 7407872, "wall_time_s": 4126.64,
        "system_message": "You are Tiny | a small assistant."},  # no mmlu_accuracy: its row shows "–"
        {"model": None, "learning_rate": 0.0003, "datasets": [{"path": "OpenAssistant/oasst1", "weight": 1.0}]},
        sft_samples)
    png = _png(sft / "honesty.png")
    _stage(run, "grpo", {"k": 4, "pass1_before": 0.265, "pass1_after": 0.255, "passk_before": 0.41,
                         "passk_after": 0.4, "stop_rate_before": 1.0, "stop_rate_after": 1.0,
                         "start_model": "runs/mini/sft", "wall_time_s": 468.8, "device": "cpu", "bf16": False},
           {"model": None, "max_steps": 100},
           {"before": [{"answer": "958", "correct": False, "question": "What is 523 + 435?", "reply": "#### 765"}],
            "after": [{"answer": "958", "correct": True, "question": "What is 523 + 435?", "reply": "#### 958"}]})
    _stage(run, "rank", {"pairs_train": 1887, "pairs_test": 485, "wall_time_s": 88.3})
    _stage(run, "reward", {"accuracy_before": 0.44536082474226807, "accuracy_after": 0.9567010309278351,
                           "accuracy_hh-rlhf_before": 0.5366666666666666, "accuracy_hh-rlhf_after": 0.515,
                           "wall_time_s": 238.79},
           samples={"before": [{"prompt": "Write a joke.", "chosen": "A", "rejected": "B", "scores": [-1.06, -0.61]}],
                    "after": [{"prompt": "Write a joke.", "chosen": "A", "rejected": "B", "scores": [3.53, -3.87]}]})
    _stage(run, "rlhf.incomplete", None, {"beta": 0.05})
    (run / "tensorboard").mkdir()  # a folder without metrics.json: not reported
    return run, png


@pytest.fixture(scope="module")
def written(run):
    run_dir, png = run
    md_path, html_path = write_report(run_dir)
    return run_dir, png, md_path.read_text(), html_path.read_text(), (md_path, html_path)


def test_formatting():
    assert fmt(3379200) == "3,379,200" and fmt(0.0025) == "0.0025" and fmt(4114.450693071622) == "4,114"
    assert fmt(1.7881489718836774) == "1.788" and fmt(None) == "–" and fmt(True) == "yes" and fmt([0, 4]) == "0, 4"
    assert pct(0.9567010309278351) == "95.67%" and pct(1.0) == "100%" and pct(None) == "–"
    assert fmt_seconds(4.04) == "4.0 s" and fmt_seconds(827.85) == "13 min 48 s"
    assert fmt_seconds(4126.64) == "1 h 08 min"


def test_paths(written):
    run_dir, _, _, _, (md_path, html_path) = written
    assert (md_path, html_path) == (run_dir / "report.md", run_dir / "report.html")
    assert not list(run_dir.glob("*.tmp"))


def test_markdown_summary(written):
    _, _, md, _, _ = written
    lines = md.splitlines()
    assert "| measure | base | SFT | GRPO | DPO | RLHF |" in lines
    assert "| held-out bits per byte (pretraining text) | 1.788 | – | – | – | – |" in lines
    assert "| held-out chat loss (assistant tokens) | 5.853 | 5.202 | – | – | – |" in lines  # base: SFT's before
    assert "| stop rate (ends its turn) | 0% | 100% | 100% | – | – |" in lines
    assert "| identity accuracy | 0% | 85% | – | – | – |" in lines
    assert "| MMLU accuracy | – | – | – | – | – |" in lines  # no stage wrote it
    assert "| held-out facts: refused | 0% | 56.43% | – | – | – |" in lines
    assert "| tools, multiply: right with / without tools | – | 100% / 0% | – | – | – |" in lines
    assert "| pass@1 (held-out problems) | – | 26.5% | 25.5% | – | – |" in lines  # SFT: GRPO's before
    assert "| pass@4 (held-out problems) | – | 41% | 40% | – | – |" in lines
    assert "| judge score (held-out prompts) | – | – | – | – | – |" in lines  # dpo not run, rlhf incomplete
    assert "| wall time | 13 min 48 s | 1 h 08 min | 7 min 49 s | – | – |" in lines
    assert "| device (bf16) | cpu (bf16) | cpu (bf16) | cpu (fp32) | – | – |" in lines
    assert "| tokenizer: held-out bytes per token | 3.816 (gpt2: 3.872, ratio 0.9855) |" in lines
    assert "| base model: parameters | 7,407,872 (5,310,720 non-embedding) |" in lines
    assert "| reward model: held-out pair accuracy | 44.54% → 95.67% |" in lines
    assert "| reward model: pair accuracy on hh-rlhf | 53.67% → 51.5% |" in lines
    assert "| quality classifier: held-out accuracy (ROC AUC) | – |" in lines
    assert "| data: documents kept | – |" in lines and "| preference pairs (train / test) | 1,887 / 485 |" in lines


def test_markdown_header_and_stages(written):
    _, _, md, _, _ = written
    assert "| finished | tokenizer, pretrain, sft, grpo, rank, reward (6 of 13) |" in md
    assert "| incomplete | rlhf (rlhf.incomplete) |" in md
    assert "| not run | quality, data, facts, index, probe, dpo |" in md
    assert "| total wall time | 1 h 35 min (the sum of 6 stages' wall times) |" in md
    for label in ("| CPU |", "| AVX512-BF16 / AMX |", "| GPU |", "| RAM |", "| libraries | torch ", "| hf-pipeline |"):
        assert label in md
    headings = [line for line in md.splitlines() if line.startswith("### ")]
    assert headings == ["### 1. tokenizer", "### 2. pretrain", "### 3. sft", "### 4. grpo", "### 5. rank",
                        "### 6. reward", "### 7. rlhf: incomplete"]  # pipeline order; tensorboard/ is no stage
    sft = md[md.index("### 3. sft"):md.index("### 4. grpo")]
    assert "wall time 1 h 08 min;" in sft and "3,652 steps, training 49 min 06 s" in sft
    assert "**settings:** model: – (RUN/pretrain) · learning_rate: 0.0003" in sft
    assert "all settings (config.yaml, 5): output_dir:" in sft
    assert "| measure | before | after |" in sft and "| identity_accuracy | 0 | 0.85 |" in sft
    assert "| tools_multiply_with | – | 1 |" in sft and "| num_params | 7,407,872 |" in sft
    assert "| system_message | You are Tiny \\| a small assistant. |" in sft  # a | in a value stays in its cell
    assert "![honesty.png](sft/honesty.png)" in sft
    assert "**held-out bits per byte by step (log_history.json):** 250: 2.192 · 1650: 1.788" in md


def test_markdown_samples(written):
    _, _, md, _, _ = written
    sft = md[md.index("### 3. sft"):md.index("### 4. grpo")]
    identity = sft[sft.index("**samples: identity**"):sft.index("**samples: tools**")]
    rows = [line for line in identity.splitlines() if line.startswith("| Who are you?")]
    assert len(rows) == 3  # the first three of five
    assert "I am Tiny, an AI assistant developed by hf-pipeline.<br>(correct: yes)" in rows[0]
    assert "…" in rows[0]  # the long before-reply is cut
    tools = sft[sft.index("**samples: tools**"):]
    assert "| What is 216 * 611? | – | with tools &lt;" not in tools  # <|python_start|> is not tag-like: kept
    assert "with tools <\\|python_start\\|>print(216 * 611)" in tools and "[correct: yes]" in tools
    assert "without tools The answer is 12400. [correct: no]" in tools
    grpo = md[md.index("### 4. grpo"):md.index("### 5. rank")]
    assert "| What is 523 + 435? | #### 765<br>(answer: 958, correct: no) | #### 958<br>(answer: 958, correct: yes) |" \
        in grpo
    reward = md[md.index("### 6. reward"):]
    assert "chosen A [score 3.53]<br>rejected B [score -3.87]" in reward


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.attrs: list[tuple[str, str, str]] = []
        self.text: list[str] = []
        self.open: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [(tag, k, v or "") for k, v in attrs]
        if tag in ("table", "tr", "td", "th", "details", "figure", "main", "div"):
            self.open.append(tag)

    def handle_endtag(self, tag):
        if tag in ("table", "tr", "td", "th", "details", "figure", "main", "div"):
            assert self.open and self.open.pop() == tag, f"</{tag}> closes nothing open"

    def handle_data(self, data):
        self.text.append(data)


def test_html_self_contained(written):
    _, png, _, page, _ = written
    parser = _Page()
    parser.feed(page)
    parser.close()
    assert not parser.open  # every table, row, cell, details block closed
    assert "script" not in parser.tags and "link" not in parser.tags and "style" in parser.tags
    for tag, name, value in parser.attrs:
        if name in ("src", "href"):
            assert not value.startswith(("http", "//")) and "http" not in value[:10], (tag, value[:40])
            assert value.startswith(("#", "data:image/png;base64,")), (tag, value[:40])
    images = [v for t, k, v in parser.attrs if t == "img" and k == "src"]
    assert len(images) == 1 and base64.b64decode(images[0].split(",", 1)[1]) == png
    assert "url(" not in page and "@import" not in page


def test_html_same_numbers(written):
    _, _, md, page, _ = written
    parser = _Page()
    parser.feed(page)
    text = " ".join(parser.text)
    for shown in ("1.788", "5.853", "85%", "100% / 0%", "26.5%", "25.5%", "44.54% → 95.67%", "3,379,200",
                  "13 min 48 s", "1 h 35 min", "rlhf: incomplete", "I am Tiny, an AI assistant developed",
                  "You are Tiny | a small assistant.", "<|python_start|>print(216 * 611)"):
        assert shown in text and shown.replace("|", "\\|") in md, shown
    assert "<details><summary>all settings (config.yaml, 5)</summary>" in page  # folded away


def test_missing_stage_folder_and_bad_files(tmp_path):
    run = tmp_path / "broken"
    _stage(run, "pretrain", {"heldout_bpb": 2.0})
    (run / "sft").mkdir()
    (run / "sft" / "metrics.json").write_text("{not json")
    md_path, html_path = write_report(run, tmp_path / "out")
    md = md_path.read_text()
    assert md_path.parent == tmp_path / "out" and html_path.is_file() and not (run / "report.md").exists()
    assert "| held-out bits per byte (pretraining text) | 2 | – | – | – | – |" in md
    assert "unreadable: metrics.json:" in md  # said, not raised
    assert "| stop rate (ends its turn) | – | – | – | – | – |" in md


def test_no_run_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="no such run folder"):
        write_report(tmp_path / "nope")
    _stage(tmp_path / "empty", "sft.incomplete", None)
    with pytest.raises(ConfigError, match=r"empty: no finished stage .*; incomplete: sft"):
        write_report(tmp_path / "empty")
    _stage(tmp_path / "r", "sft", {"stop_rate_after": 1.0})
    with pytest.raises(ConfigError, match="looks like a stage folder"):
        write_report(tmp_path / "r" / "sft")


def test_cli(run, tmp_path):
    run_dir, _ = run
    done = run_cli("report", run_dir, "--output", tmp_path / "card")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [str(tmp_path / "card" / "report.md"), str(tmp_path / "card" / "report.html")]
    assert "![honesty.png](" in (tmp_path / "card" / "report.md").read_text()
    missing = run_cli("report", tmp_path / "nope")
    assert missing.returncode == 2 and missing.stdout == ""
    said = f"hf-pipeline: error: report: {tmp_path / 'nope'}: no such run folder"
    assert missing.stderr.strip().splitlines() == [said]
