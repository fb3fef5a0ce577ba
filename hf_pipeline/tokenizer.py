"""Tokenizer stage: byte-level BPE trained from scratch, with the chat protocol's special tokens.

The tokenizer is a ``tokenizers`` BPE with the GPT-4 pre-tokenization split (so merges never cross word, number or
punctuation boundaries) and a byte-level alphabet (so every byte sequence encodes: there is no unknown token). It is
saved as a ``PreTrainedTokenizerFast`` that ``AutoTokenizer.from_pretrained`` loads, with a Jinja chat template.

The chat protocol (defined here once, imported everywhere else) renders a conversation as::

    <|im_start|>system<|im_sep|>You are helpful.<|im_end|><|im_start|>user<|im_sep|>Hi<|im_end|>
    <|im_start|>assistant<|im_sep|>Hello!<|im_end|>

The assistant's reply, ``<|im_end|>`` included, sits inside ``{% generation %}`` so that
``apply_chat_template(..., return_assistant_tokens_mask=True)`` (and TRL's ``assistant_only_loss``) know which tokens
the model must learn to produce. Tool tokens are reserved now so that later stages never resize the embeddings; a
tool's output inside an assistant message (``<|output_start|>...<|output_end|>``) is rendered outside
``{% generation %}``, so it never carries loss.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from tqdm.auto import tqdm

from .artifacts import begin_stage, finish_stage, is_complete, write_json
from .config import ConfigError, TokenizerConfig, save_config

logger = logging.getLogger("hf_pipeline")

# --- The protocol tokens -----------------------------------------------------------------------------------------
ENDOFTEXT = "<|endoftext|>"  # separates documents in pretraining; the base model's end of sequence
PAD = "<|pad|>"
IM_START = "<|im_start|>"  # opens a message: <|im_start|>ROLE<|im_sep|>CONTENT<|im_end|>
IM_SEP = "<|im_sep|>"
IM_END = "<|im_end|>"  # ends a message; the chat model's stop token
SEARCH_START, SEARCH_END = "<|search_start|>", "<|search_end|>"  # the model asks the search tool
PYTHON_START, PYTHON_END = "<|python_start|>", "<|python_end|>"  # the model asks the code interpreter
OUTPUT_START, OUTPUT_END = "<|output_start|>", "<|output_end|>"  # a tool's result, put back into the context
TOOL_TOKENS = [SEARCH_START, SEARCH_END, PYTHON_START, PYTHON_END, OUTPUT_START, OUTPUT_END]
RESERVED_TOKENS = [f"<|reserved_{i}|>" for i in range(5)]
SPECIAL_TOKENS = [ENDOFTEXT, PAD, IM_START, IM_SEP, IM_END, *TOOL_TOKENS, *RESERVED_TOKENS]

# GPT-4's (cl100k) pre-tokenization: contractions, words with one leading non-letter, numbers of 1-3 digits,
# punctuation runs, newlines, whitespace.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)

# An assistant message's content may hold tool calls and outputs inline (``<|python_start|>print(2 * 3)<|python_end|>
# <|output_start|>6<|output_end|>The answer is 6.``): the text and the calls are inside {% generation %} (the model
# learns to write them), each <|output_start|>...<|output_end|> is outside (the tool wrote it: never trained on).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '" + IM_START + "assistant" + IM_SEP + "' }}"
    "{%- for chunk in message['content'].split('" + OUTPUT_START + "') -%}"
    "{%- if loop.first -%}{%- set said = chunk -%}{%- else -%}"
    "{%- set pair = chunk.split('" + OUTPUT_END + "', 1) -%}"
    "{{ '" + OUTPUT_START + "' + pair[0] + '" + OUTPUT_END + "' }}"
    "{%- set said = pair[1] if pair | length > 1 else '' -%}{%- endif -%}"
    "{%- generation -%}{{ said }}{%- if loop.last -%}{{ '" + IM_END + "' }}{%- endif -%}{%- endgeneration -%}"
    "{%- endfor -%}"
    "{%- else -%}"
    "{{ '" + IM_START + "' + message['role'] + '" + IM_SEP + "' + message['content'] + '" + IM_END + "' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '" + IM_START + "assistant" + IM_SEP + "' }}{%- endif -%}"
)


def train_bpe(texts, vocab_size: int, min_frequency: int = 2, length: int | None = None,
              individual_digits: bool = False):
    """Train a byte-level BPE ``tokenizers.Tokenizer`` on an iterator of strings; ``individual_digits``: every
    digit its own pre-token (so a number is always its digits)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 256 + len(SPECIAL_TOKENS) + 1:
        raise ConfigError(f"vocab_size: must exceed the 256 byte tokens and {len(SPECIAL_TOKENS)} special tokens")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            *([pre_tokenizers.Digits(individual_digits=True)] if individual_digits else []),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,  # ids 0..15, in this order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: nothing is ever unknown
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    return tok


def to_transformers(tok, model_max_length: int = 2048):
    """Wrap a trained ``tokenizers.Tokenizer`` as a PreTrainedTokenizerFast with the protocol and chat template."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=ENDOFTEXT,
        eos_token=ENDOFTEXT,
        pad_token=PAD,
        additional_special_tokens=[IM_START, IM_SEP, IM_END, *TOOL_TOKENS],
        chat_template=CHAT_TEMPLATE,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def load_reference(ref: str):
    """A tokenizer to compare with: a tokenizer folder or Hub id, or a folder of GPT-2 style vocab/merges files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(ref)
    if path.is_dir() and not (path / "tokenizer.json").is_file():
        vocab = sorted(path.glob("*vocab.json"))
        merges = sorted(path.glob("*merges.txt"))
        if not (vocab and merges):
            raise ConfigError(f"compare_with: {ref} has neither tokenizer.json nor vocab.json + merges.txt")
        tok = Tokenizer(models.BPE.from_file(str(vocab[0]), str(merges[0])))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        return PreTrainedTokenizerFast(tokenizer_object=tok)
    return AutoTokenizer.from_pretrained(ref)


def bytes_per_token(tokenizer, texts: list[str]) -> float:
    """UTF-8 bytes per token: how much text one token carries (higher compresses better)."""
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    ids = tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    n_tokens = sum(len(x) for x in ids)
    return n_bytes / max(n_tokens, 1)


def _texts(ds, max_chars: int | None, batch_size: int = 1000):
    """Yield batches of documents, stopping after ``max_chars`` characters."""
    seen = 0
    bar = tqdm(total=len(ds), desc="training BPE", unit="doc")
    for start in range(0, len(ds), batch_size):
        batch = list(ds[start : start + batch_size]["text"])
        bar.update(len(batch))
        if max_chars is not None:
            keep = []
            for t in batch:
                if seen >= max_chars:
                    break
                keep.append(t)
                seen += len(t)
            batch = keep
        if batch:
            yield batch
        if max_chars is not None and seen >= max_chars:
            break
    bar.close()


def run(config: TokenizerConfig) -> Path:
    """Train the tokenizer, report its compression on held-out text, and write RUN/tokenizer/."""
    from .corpus import load_corpus

    final = config.stage_dir()
    if is_complete(final) and not config.overwrite:
        logger.info("tokenizer: %s is complete, skipping (overwrite: true to redo it)", final)
        return final
    start = time.time()
    train, heldout = load_corpus(config.corpus, config.mirror, config.heldout_fraction, config.seed)
    reference = load_reference(config.compare_with) if config.compare_with else None
    work = begin_stage(final)

    tok = train_bpe(_texts(train, config.max_train_chars), config.vocab_size, config.min_frequency,
                    individual_digits=config.individual_digits)
    tokenizer = to_transformers(tok)
    texts = list(heldout["text"]) if len(heldout) else list(train.select(range(min(200, len(train))))["text"])
    for text in texts[:50]:  # byte-level BPE must round-trip exactly
        if tokenizer.decode(tokenizer.encode(text, split_special_tokens=True)) != text:
            raise RuntimeError(f"tokenizer does not round-trip: {text[:80]!r}")
    metrics = {
        "vocab_size": len(tokenizer),
        "train_documents": len(train),
        "heldout_documents": len(heldout),
        "heldout_bytes": sum(len(t.encode("utf-8")) for t in texts),
        "bytes_per_token": bytes_per_token(tokenizer, texts),
    }
    if reference is not None:
        metrics["reference"] = config.compare_with
        metrics["reference_bytes_per_token"] = bytes_per_token(reference, texts)
        metrics["bytes_per_token_ratio"] = metrics["bytes_per_token"] / metrics["reference_bytes_per_token"]
    metrics["wall_time_s"] = round(time.time() - start, 2)
    tokenizer.save_pretrained(work)
    write_json(work / "metrics.json", metrics)
    save_config(config, work / "config.yaml")
    finish_stage(work, final)
    logger.info(
        "tokenizer: read %d train / %d held-out documents, wrote %s (vocab %d); held-out bytes/token %.3f%s",
        len(train), len(heldout), final, len(tokenizer), metrics["bytes_per_token"],
        f" vs {metrics['reference_bytes_per_token']:.3f} for {config.compare_with}" if reference else "",
    )
    return final
