"""The tokenizer stage: a real BPE trained on real text, its round trips, protocol tokens and chat template."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from conftest import SHAKESPEARE

from hf_pipeline.tokenizer import (
    ENDOFTEXT,
    IM_END,
    IM_SEP,
    IM_START,
    PAD,
    SPECIAL_TOKENS,
    TOOL_TOKENS,
)


@pytest.fixture(scope="module")
def tok(tiny_run):
    return AutoTokenizer.from_pretrained(tiny_run / "tokenizer")


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world! It's 2026; numbers 1234567 and spaces   and\ttabs\nnewlines\r\n",
        "Unicode: héllo wörld, 日本語のテキスト, Ελληνικά, emoji 🤗🚀, combining e\u0301, zero-width \u200b joiner",
        "\x00\x01\x7f control bytes and a lone surrogate-free 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 line",
    ],
)
def test_round_trip_unicode_and_bytes(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert tok.unk_token_id is None  # byte-level: there is nothing to be unknown


def test_every_byte_is_in_the_vocabulary(tok):
    from tokenizers.pre_tokenizers import ByteLevel

    vocab = tok.get_vocab()
    assert all(ch in vocab for ch in ByteLevel.alphabet())
    assert len(ByteLevel.alphabet()) == 256


def test_special_tokens_are_single_ids_and_reserved_first(tok):
    assert tok.convert_tokens_to_ids(SPECIAL_TOKENS) == list(range(len(SPECIAL_TOKENS)))
    for token in [ENDOFTEXT, IM_START, IM_SEP, IM_END, *TOOL_TOKENS]:
        ids = tok.encode(token, add_special_tokens=False)
        assert len(ids) == 1 and tok.decode(ids) == token
    assert tok.eos_token == ENDOFTEXT and tok.pad_token == PAD
    # written as plain text (e.g. inside a web page), a protocol token is split into ordinary pieces
    split = tok.encode(IM_START, add_special_tokens=False, split_special_tokens=True)
    assert len(split) > 1 and tok.decode(split) == IM_START


def test_chat_template_and_generation_mask(tok):
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "Red."},
    ]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|im_start|>system<|im_sep|>You are terse.<|im_end|>"
        "<|im_start|>user<|im_sep|>Name a colour.<|im_end|>"
        "<|im_start|>assistant<|im_sep|>Blue.<|im_end|>"
        "<|im_start|>user<|im_sep|>Another?<|im_end|>"
        "<|im_start|>assistant<|im_sep|>Red.<|im_end|>"
    )
    out = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask)
    # the masked tokens are exactly the assistant replies, each with its <|im_end|>
    masked = tok.decode([i for i, m in zip(ids, mask) if m])
    assert masked == "Blue.<|im_end|>Red.<|im_end|>"
    assert sum(mask) < len(ids) / 2
    prompt = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant<|im_sep|>")


def test_metrics_report_compression_against_gpt2(tiny_run):
    metrics = json.loads((tiny_run / "tokenizer" / "metrics.json").read_text())
    assert metrics["vocab_size"] == 512
    assert 1.5 < metrics["bytes_per_token"] < 5
    assert 1.5 < metrics["reference_bytes_per_token"] < 6
    assert metrics["bytes_per_token_ratio"] == pytest.approx(
        metrics["bytes_per_token"] / metrics["reference_bytes_per_token"]
    )
    assert (tiny_run / "tokenizer" / "config.yaml").is_file()
    assert not (tiny_run / "tokenizer.incomplete").exists()


def test_compression_benchmark_prints_ratio_line(tiny_run):
    import subprocess
    import sys

    from conftest import GPT2, ROOT, SHAKESPEARE

    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "tokenizer_compression.py"), "--tokenizer", str(tiny_run / "tokenizer"),
         "--reference", str(GPT2), "--text", str(SHAKESPEARE)],
        capture_output=True, text=True, check=True,
    ).stdout.strip().splitlines()
    assert out[0].startswith(str(SHAKESPEARE))
    last = dict(kv.split("=") for kv in out[-1].split()[1:])
    assert out[-1].startswith("bytes_per_token ")
    assert float(last["ratio"]) == pytest.approx(float(last["ours"]) / float(last["gpt2"]), rel=1e-3)


def test_individual_digits_splits_every_number_into_digits():
    from hf_pipeline.tokenizer import to_transformers, train_bpe

    text = SHAKESPEARE.read_text()[:200_000] + " 415 * 391 = 162265; 1999 and 2024 and 123456789." * 50
    plain = to_transformers(train_bpe([text], vocab_size=2000))
    digits = to_transformers(train_bpe([text], vocab_size=2000, individual_digits=True))
    numbers = "What is 415 * 391? 162265"
    assert any(len(t.strip("Ġ")) > 1 and t.strip("Ġ").isdigit() for t in plain.tokenize(numbers))  # merged digits
    assert [t for t in digits.tokenize(numbers) if any(c.isdigit() for c in t)] == list("415391162265")
    assert digits.decode(digits.encode(numbers)) == numbers
