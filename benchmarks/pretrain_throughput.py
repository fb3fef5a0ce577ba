"""Pretraining throughput: our stage's Trainer setup vs a bare PyTorch loop, same model, batch and sequence length.

    python benchmarks/pretrain_throughput.py --depth 4 --seq_len 256 --batch_size 32 --steps 20

The bare loop is nanoGPT-style: AdamW, autocast to bf16, gradient clipping and a cosine schedule, no Trainer.
Both train the same freshly initialised model on the same random token windows; the first ``--warmup`` steps are
not timed. MFU is model FLOPs per second over the matmul ceiling measured on this machine in the same run. Both
loops use bf16 only where the hardware has it (a GPU, a CPU with AMX/AVX512-BF16), as the stage does; else fp32.
Last line: ``tokens_per_s ours=<x> bare=<y> ratio=<x/y> mfu=<m>``.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_pipeline.config import PretrainConfig  # noqa: E402
from hf_pipeline.model import build_model, cpu_has_fast_bf16, flops_per_token, model_config  # noqa: E402


def matmul_ceiling(device: str, dtype=torch.bfloat16, n: int = 2048, seconds: float = 2.0) -> float:
    """Measured dense matmul FLOP/s: the practical peak an MFU is a share of."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    _sync(device)
    return 2 * n**3 * count / (time.perf_counter() - start)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def random_windows(n: int, seq_len: int, vocab: int, seed: int = 0):
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    return Dataset.from_dict({"input_ids": torch.randint(16, vocab, (n, seq_len), generator=g).tolist()})


def ours(cfg, args, windows, device) -> float:
    """Tokens/s of the pretrain stage's Trainer (same TrainingArguments and Trainer class as hf_pipeline.pretrain)."""
    from transformers import TrainerCallback

    from hf_pipeline.pretrain import _trainer_class, collate_windows, training_arguments

    times = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            _sync(device)
            times.append(time.perf_counter())

    config = PretrainConfig(
        depth=args.depth, seq_len=args.seq_len, batch_size=args.batch_size, max_steps=args.warmup + args.steps,
        eval_steps=10**9, save_steps=10**9, logging_steps=10**9, bf16=args.bf16, seed=0,
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        targs = training_arguments(config, Path(tmp), 1e-3)
        targs.disable_tqdm = True
        targs.eval_strategy = "no"
        targs.save_strategy = "no"
        trainer = _trainer_class()(
            model=model, args=targs, train_dataset=windows.with_format("torch"),
            data_collator=collate_windows, callbacks=[Clock()],
        )
        trainer.train()
    timed = times[args.warmup - 1 :]
    return args.steps * args.batch_size * args.seq_len / (timed[-1] - timed[0])


def bare(cfg, args, windows, device) -> float:
    """Tokens/s of a bare loop: AdamW + autocast(bf16 where fast) + clipping + cosine LR, nothing else."""
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    total = args.warmup + args.steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    data = torch.tensor(windows["input_ids"])
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    model.train()
    start = None
    for step in range(total):
        if step == args.warmup:
            _sync(device)
            start = time.perf_counter()
        idx = torch.randint(0, len(data), (args.batch_size,))
        x = data[idx].to(device)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=args.bf16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    _sync(device)
    return args.steps * args.batch_size * args.seq_len / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--seq_len", type=int, default=256)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--vocab_size", type=int, default=8192)
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = model_config(args.depth, args.vocab_size, args.seq_len, bos_token_id=0, eos_token_id=0, pad_token_id=1)
    windows = random_windows(args.batch_size * (args.warmup + args.steps), args.seq_len, args.vocab_size)
    print(f"device={device} threads={torch.get_num_threads()} depth={args.depth} width={cfg.hidden_size} "
          f"seq_len={args.seq_len} batch={args.batch_size} steps={args.steps}")
    # both loops in bf16 where the hardware has it, as the stage does (hf_pipeline.model.resolve_bf16), else fp32
    args.bf16 = device == "cuda" or cpu_has_fast_bf16()
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    ceiling = matmul_ceiling(device, dtype)
    print(f"{'bf16' if args.bf16 else 'fp32'} matmul ceiling: {ceiling / 1e12:.2f} TFLOP/s")
    bare_tps = bare(cfg, args, windows, device)
    print(f"bare loop: {bare_tps:,.0f} tokens/s")
    ours_tps = ours(cfg, args, windows, device)
    print(f"hf-pipeline pretrain (Trainer): {ours_tps:,.0f} tokens/s")
    mfu = ours_tps * flops_per_token(cfg) / ceiling
    print(f"tokens_per_s ours={ours_tps:.0f} bare={bare_tps:.0f} ratio={ours_tps / bare_tps:.3f} mfu={mfu:.3f}")


if __name__ == "__main__":
    main()
