"""Tokenizer compression: UTF-8 bytes per token of our tokenizer and of GPT-2's, on the same text files.

    python benchmarks/tokenizer_compression.py --tokenizer runs/tiny/tokenizer --text FILE [FILE ...]

One line per file, then ``bytes_per_token ours=<x> gpt2=<y> ratio=<x/y>`` over all files together
(ratio > 1: ours packs more text into a token).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_pipeline.tokenizer import load_reference  # noqa: E402

DEFAULT_GPT2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "tokenizers" / "gpt2"


def count(tokenizer, text: str, chunk: int = 100_000) -> int:
    """Tokens in ``text``, encoded in line-aligned chunks so that huge files stay fast."""
    n, start = 0, 0
    while start < len(text):
        end = text.find("\n", start + chunk)
        end = len(text) if end == -1 else end + 1
        n += len(tokenizer(text[start:end], add_special_tokens=False, split_special_tokens=True, verbose=False)["input_ids"])
        start = end
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", required=True, help="Our tokenizer folder (or Hub id).")
    p.add_argument("--reference", default=str(DEFAULT_GPT2), help="GPT-2 tokenizer folder (vocab.json + merges.txt).")
    p.add_argument("--text", nargs="+", required=True, help="Text files (UTF-8).")
    args = p.parse_args()
    ours, gpt2 = load_reference(args.tokenizer), load_reference(args.reference)
    total_bytes = total_ours = total_gpt2 = 0
    for path in args.text:
        text = Path(path).read_text(encoding="utf-8")
        n_bytes = len(text.encode("utf-8"))
        a, b = count(ours, text), count(gpt2, text)
        total_bytes, total_ours, total_gpt2 = total_bytes + n_bytes, total_ours + a, total_gpt2 + b
        print(f"{path} bytes={n_bytes} ours={n_bytes / a:.3f} gpt2={n_bytes / b:.3f} ratio={(n_bytes / a) / (n_bytes / b):.3f}")
    x, y = total_bytes / total_ours, total_bytes / total_gpt2
    print(f"bytes_per_token ours={x:.4f} gpt2={y:.4f} ratio={x / y:.4f}")


if __name__ == "__main__":
    main()
