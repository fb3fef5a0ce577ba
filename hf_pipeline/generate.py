"""Inference: sample a continuation from a model folder, a run folder or a Hub id, optionally streaming.

A thin layer over ``model.generate``: temperature (0 means greedy), top-k, top-p, a seed for reproducible samples,
and ``TextStreamer`` to print tokens as they come.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("hf_pipeline")


def load(model_ref: str, dtype: str = "auto"):
    """Load ``(model, tokenizer)`` from a model folder, a run folder (its latest model stage) or a Hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .config import ConfigError
    from .refs import resolve_model

    path = resolve_model(model_ref)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as e:
        raise ConfigError(f"{model_ref}: cannot load a model ({str(e).splitlines()[0][:200]})") from None
    model.eval()
    return model, tokenizer


def generate(
    model,
    tokenizer,
    prompt: str,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stream: bool = False,
    stop_strings: list[str] | None = None,
) -> str:
    """Continue ``prompt``; return the new text only. ``stream`` prints it to stdout as it is sampled."""
    import torch
    from transformers import TextStreamer, set_seed

    if seed is not None:
        set_seed(seed)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
    sampling = temperature > 0
    kwargs = dict(
        max_new_tokens=max_new_tokens,
        do_sample=sampling,
        temperature=temperature if sampling else None,
        top_k=top_k if sampling else None,
        top_p=top_p if sampling else None,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    if stop_strings:
        kwargs.update(stop_strings=stop_strings, tokenizer=tokenizer)
    if stream:
        kwargs["streamer"] = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    with torch.no_grad():
        out = model.generate(**inputs, **kwargs)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def longest_verbatim_match(text: str, reference: str, min_len: int = 1) -> str:
    """The longest substring of ``text`` that appears verbatim in ``reference`` (for measuring regurgitation)."""
    best = ""
    lo = min_len
    # binary search on the length works because any substring of a match is also a match
    hi = len(text)
    while lo <= hi:
        mid = (lo + hi) // 2
        found = next((text[i : i + mid] for i in range(len(text) - mid + 1) if text[i : i + mid] in reference), None)
        if found is not None:
            best, lo = found, mid + 1
        else:
            hi = mid - 1
    return best
