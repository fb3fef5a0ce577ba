"""The model: a Llama-style causal LM whose whole shape follows from one dial, ``depth`` (as in nanochat).

    hidden_size = depth * aspect_ratio            (64 per layer: depth 4 -> 256 wide, depth 20 -> 1280)
    num_heads   = hidden_size / head_dim          (64-wide heads)
    mlp         = SwiGLU, 8/3 * hidden, rounded up to a multiple of 64
    lr          = 0.03 / sqrt(hidden_size)        (wider models take smaller steps: 1.9e-3 at 256, 1.1e-3 at 768)

It is a plain ``LlamaForCausalLM``: ``save_pretrained`` writes a folder that ``AutoModelForCausalLM`` loads anywhere.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
from pathlib import Path

from .config import ConfigError

logger = logging.getLogger("hf_pipeline")


def model_config(depth: int, vocab_size: int, seq_len: int, aspect_ratio: int = 64, head_dim: int = 64, **token_ids):
    """The ``LlamaConfig`` for a model of the given depth. ``token_ids``: bos/eos/pad token ids."""
    from transformers import LlamaConfig

    if depth < 1:
        raise ConfigError(f"depth: must be >= 1, not {depth}")
    hidden = depth * aspect_ratio
    if hidden % head_dim:
        raise ConfigError(f"depth * aspect_ratio ({hidden}) must be a multiple of head_dim ({head_dim})")
    heads = hidden // head_dim
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=64 * math.ceil(hidden * 8 / 3 / 64),
        num_hidden_layers=depth,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=head_dim,
        max_position_embeddings=seq_len,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        initializer_range=0.02,
        **token_ids,
    )


def default_learning_rate(hidden_size: int) -> float:
    return 0.03 / math.sqrt(hidden_size)


def build_model(config):
    """A freshly initialised causal LM from a config."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(config)


def count_params(model, non_embedding: bool = False) -> int:
    n = sum(p.numel() for p in model.parameters())
    if non_embedding:
        n -= model.get_input_embeddings().weight.numel()
    return n


def flops_per_token(config) -> float:
    """Training FLOPs per token (forward + backward): 6 * matmul params + attention (as in the PaLM appendix)."""
    h, L, s = config.hidden_size, config.num_hidden_layers, config.max_position_embeddings
    attn_proj = 4 * h * h  # q, k, v, o with as many kv heads as heads
    mlp = 3 * h * config.intermediate_size
    matmul_params = L * (attn_proj + mlp) + config.vocab_size * h  # lm_head; the embedding lookup is free
    return 6 * matmul_params + 12 * L * h * s / 2  # causal attention: half of the score matrix on average


BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of the instructions PyTorch uses for bf16


@functools.lru_cache(maxsize=None)
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices at least as fast as float32 (AMX, AVX512-BF16).

    Without those instructions PyTorch emulates bf16 matmuls, ~100x slower than fp32 (measured on an AVX2-only EPYC);
    with AMX they run several times faster. Linux lists the instructions in /proc/cpuinfo; elsewhere one small
    matmul of each type is timed, best of several runs so that another busy process cannot tip the balance.
    """
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        flags = set(re.findall(r"\w+", " ".join(line for line in cpuinfo.read_text().splitlines()
                                               if line.startswith("flags"))))
        return any(flag in flags for flag in BF16_CPU_FLAGS)
    import time

    import torch

    def seconds(dtype) -> float:
        a, b = torch.randn(128, 128, dtype=dtype), torch.randn(128, 128, dtype=dtype)
        a @ b  # warm-up
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            a @ b
            runs.append(time.perf_counter() - start)
        return min(runs)

    return seconds(torch.bfloat16) <= seconds(torch.float32)


def precision_args(requested_bf16: bool, stage: str) -> dict:
    """``bf16`` and ``use_cpu`` for a stage's ``TrainingArguments``: the CPU when there is no CUDA or MPS device,
    bf16 as ``resolve_bf16`` decides."""
    import torch

    on_cpu = not (torch.cuda.is_available() or torch.backends.mps.is_available())
    return {"bf16": resolve_bf16(requested_bf16, on_cpu, stage), "use_cpu": on_cpu}


def tracking_args(config) -> dict:
    """``report_to``, ``run_name`` and ``project`` for a stage's ``TrainingArguments``. TensorBoard writes into
    ``RUN/tensorboard/<stage>/`` (beside the stage folders: the checkpoints folder the trainer writes into is removed
    at the end, and a stage folder pushed to the Hub carries no event files named after this machine)."""
    report_to = [config.report_to] if isinstance(config.report_to, str) else list(config.report_to)
    if "tensorboard" in report_to:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(config.output_dir).resolve() / "tensorboard" / config.stage)
    return {"report_to": report_to, "run_name": f"{Path(config.output_dir).name}-{config.stage}",
            "project": "hf-pipeline"}


def resolve_bf16(requested: bool, on_cpu: bool, stage: str) -> bool:
    """``bf16`` as the trainer should get it: bf16 where asked and the hardware has it, else fp32 with a warning.

    On a GPU the request stands (the Trainer checks support). On a CPU without fast bf16 matmuls a bf16 run would be
    ~100x slower than fp32, so the stage trains in fp32 and says so.
    """
    if not (requested and on_cpu) or cpu_has_fast_bf16():
        return requested
    logger.warning("%s: this CPU has no fast bf16 matmuls (no AMX or AVX512-BF16: bf16 would be emulated, ~100x "
                   "slower); training in float32 instead", stage)
    return False
