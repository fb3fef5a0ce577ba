"""Text measures: bits per byte on held-out text, and the longest verbatim match (regurgitation).

Bits per byte (bpb) divides the summed held-out loss, converted to bits, by the UTF-8 bytes of the predicted tokens:
unlike loss per token it does not depend on the tokenizer, so models with different vocabularies compare.
"""

from __future__ import annotations

import math


def token_byte_lengths(tokenizer):
    """UTF-8 bytes of every token id (0 for special tokens), for bits per byte."""
    import torch

    special = set(tokenizer.all_special_ids) | {
        i for i, t in tokenizer.added_tokens_decoder.items() if getattr(t, "special", False)
    }
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    # byte-level BPE writes each byte as one printable character, so a token's length is its byte count
    return torch.tensor([0 if i in special else len(t) for i, t in enumerate(tokens)], dtype=torch.long)


def evaluate_bpb(model, windows, token_bytes, batch_size: int = 16, autocast=None) -> dict:
    """Held-out mean loss (nats/token) and bits per byte over packed windows (a Dataset with ``input_ids``)."""
    import contextlib

    import torch
    import torch.nn.functional as F

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    token_bytes = token_bytes.to(device)
    total_nats = total_bpb_nats = 0.0
    total_tokens = total_bytes = 0
    with torch.no_grad(), (autocast or contextlib.nullcontext()):
        for start in range(0, len(windows), batch_size):
            ids = torch.as_tensor(windows[start : start + batch_size]["input_ids"], device=device)
            logits = model(input_ids=ids[:, :-1]).logits.float()
            targets = ids[:, 1:]
            nats = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
            nbytes = token_bytes[targets.reshape(-1)]
            total_nats += nats.sum().item()
            total_tokens += nats.numel()
            total_bpb_nats += (nats * (nbytes > 0)).sum().item()
            total_bytes += nbytes.sum().item()
    model.train(was_training)
    return {
        "loss": total_nats / max(total_tokens, 1),
        "bpb": total_bpb_nats / math.log(2) / max(total_bytes, 1),
    }


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
