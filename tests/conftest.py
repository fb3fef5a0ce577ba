"""Shared fixtures: the real data folder, a tokenizer and a tiny model trained here, the CLI as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
MIRROR = SHARED_DATA / "hub"
SHAKESPEARE = SHARED_DATA / "text" / "tinyshakespeare.txt"
GPT2 = SHARED_DATA / "tokenizers" / "gpt2"
WEB = SHARED_DATA / "web"
HTML = WEB / "article_extraction" / "html"  # real news/blog pages; their URLs are in TRUTH
TRUTH = WEB / "article_extraction" / "ground-truth.json"

if not SHARED_DATA.is_dir():  # pragma: no cover - a broken checkout, not a skipped test
    raise RuntimeError(f"tests need the real data folder at {SHARED_DATA}")


def run_cli(*args, env: dict | None = None, cwd: Path = ROOT, timeout: int = 600,
            input: str | None = None) -> subprocess.CompletedProcess:
    """Run ``hf-pipeline ARGS`` in a fresh interpreter (as a user would); ``input`` is its standard input."""
    full_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "hf_pipeline", *map(str, args)],
        capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout, input=input,
    )


def memorise(tokenizer, texts: list[str], steps: int, max_loss: float):
    """A 1-layer Llama (96 wide) trained here on ``texts`` until it recites them (loss below ``max_loss``)."""
    import torch
    from transformers import LlamaForCausalLM

    from hf_pipeline.model import model_config

    torch.manual_seed(0)
    model = LlamaForCausalLM(model_config(1, len(tokenizer), 96, 32, 32, eos_token_id=tokenizer.eos_token_id,
                                          pad_token_id=tokenizer.pad_token_id))
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss.item() < max_loss, loss.item()
    return model


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run folder with a real tokenizer (BPE on tinyshakespeare) and a tiny model pretrained on it for a few steps."""
    from hf_pipeline import pretrain, tokenizer
    from hf_pipeline.config import PretrainConfig, TokenizerConfig

    run_dir = tmp_path_factory.mktemp("run")
    shared = dict(output_dir=str(run_dir), seed=0, num_proc=1)
    tokenizer.run(TokenizerConfig(corpus=[str(SHAKESPEARE)], vocab_size=512, compare_with=str(GPT2), **shared))
    pretrain.run(
        PretrainConfig(
            corpus=[str(SHAKESPEARE)], depth=2, aspect_ratio=32, head_dim=32, seq_len=64, batch_size=16,
            max_steps=40, eval_steps=20, save_steps=20, logging_steps=5, learning_rate=3e-3, **shared,
        )
    )
    return run_dir


@pytest.fixture(scope="session")
def web_run(tmp_path_factory) -> Path:
    """The data stage run as a user runs it: the CLI on the real pages and WARC files, dropped documents kept."""
    run_dir = tmp_path_factory.mktemp("web")
    result = run_cli("data", "--inputs", HTML, *sorted(WEB.glob("*.warc.gz")), "--url_map", TRUTH,
                     "--output_dir", run_dir, "--workers", "2", "--keep_dropped", "true")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir
