"""The pretraining stage: a tiny model trained here, its loss, its artifacts, resuming a killed run, sampling."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from conftest import ROOT, SHAKESPEARE, run_cli
from hf_pipeline.engine import Engine, SamplingParams
from hf_pipeline.evals.text import longest_verbatim_match
from hf_pipeline.model import BF16_CPU_FLAGS, cpu_has_fast_bf16, default_learning_rate, model_config, precision_args


def test_loss_falls_and_bits_per_byte_is_reported(tiny_run):
    stage = tiny_run / "pretrain"
    metrics = json.loads((stage / "metrics.json").read_text())
    history = json.loads((stage / "log_history.json").read_text())["log_history"]
    train_losses = [h["loss"] for h in history if "loss" in h]
    evals = [h for h in history if "eval_bpb" in h]
    assert train_losses[0] > math.log(512) - 1  # starts near uniform over the vocabulary
    assert metrics["heldout_loss"] < train_losses[0] - 1.0
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    # bits per byte = loss in bits / bytes per token: with ~2-3 bytes per token it is well below loss/ln2
    assert 0 < metrics["heldout_bpb"] < metrics["heldout_loss"] / math.log(2)
    assert metrics["steps"] == 40 and metrics["train_tokens"] == 40 * 16 * 64


def test_artifacts_load_with_auto_classes(tiny_run):
    stage = tiny_run / "pretrain"
    config = AutoConfig.from_pretrained(stage)
    assert config.model_type == "llama" and config.num_hidden_layers == 2 and config.hidden_size == 64
    model = AutoModelForCausalLM.from_pretrained(stage)
    tokenizer = AutoTokenizer.from_pretrained(stage)
    assert isinstance(model, LlamaForCausalLM)
    assert model.config.vocab_size == len(tokenizer) == 512
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert not (stage / "checkpoints").exists() and not (tiny_run / "pretrain.incomplete").exists()
    assert (stage / "config.yaml").is_file()


def test_depth_is_the_one_dial():
    small, big = model_config(2, 1000, 128), model_config(8, 1000, 128)
    assert (small.hidden_size, small.num_attention_heads) == (128, 2)
    assert (big.hidden_size, big.num_attention_heads) == (512, 8)
    assert big.intermediate_size % 64 == 0 and big.intermediate_size >= 8 / 3 * 512
    assert default_learning_rate(big.hidden_size) < default_learning_rate(small.hidden_size)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path")
def test_bf16_only_where_the_cpu_has_bf16_matmuls(caplog):
    """bf16 is requested by default; on a CPU without AMX/AVX512-BF16 (emulated bf16, ~100x slower) the stage says so
    and trains in fp32. The decision follows the CPU's flags, not a timing that a busy neighbour could flip."""
    flags = open("/proc/cpuinfo").read().split()
    assert cpu_has_fast_bf16() == any(flag in flags for flag in BF16_CPU_FLAGS)
    with caplog.at_level("WARNING", logger="hf_pipeline"):
        args = precision_args(True, "sft")
    assert args == {"bf16": cpu_has_fast_bf16(), "use_cpu": True}
    assert ("training in float32 instead" in caplog.text) == (not cpu_has_fast_bf16())
    assert precision_args(False, "sft") == {"bf16": False, "use_cpu": True}


def test_sampling_is_seeded_and_greedy_is_deterministic(tiny_run):
    engine = Engine.load(str(tiny_run))  # a run folder resolves to its latest model stage
    a = engine.complete("ROMEO:", SamplingParams(max_new_tokens=20, temperature=1.0, seed=1))
    b = engine.complete("ROMEO:", SamplingParams(max_new_tokens=20, temperature=1.0, seed=2))
    a_again = engine.complete("ROMEO:", SamplingParams(max_new_tokens=20, temperature=1.0, seed=1))
    assert a != b and a == a_again
    g1 = engine.complete("ROMEO:", SamplingParams(max_new_tokens=10, temperature=0))
    g2 = engine.complete("ROMEO:", SamplingParams(max_new_tokens=10, temperature=0, seed=5))
    assert g1 == g2
    topk1 = engine.complete("ROMEO:", SamplingParams(max_new_tokens=10, temperature=1.0, top_k=1, seed=3))
    assert topk1 == g1  # top-k of 1 is greedy


def test_generate_cli_streams_a_continuation(tiny_run):
    out = run_cli("generate", tiny_run / "pretrain", "--prompt", "KING:", "--max_new_tokens", "12", "--seed", "0",
                  "--top_k", "50", "--top_p", "0.95", "--temperature", "0.8")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("KING:") and len(out.stdout.strip()) > len("KING:")


def test_longest_verbatim_match():
    reference = "It is a truth universally acknowledged, that a single man in possession of a good fortune"
    assert longest_verbatim_match("He said: a truth universally acknowledged! Yes.", reference) == (
        " a truth universally acknowledged"
    )
    assert longest_verbatim_match("zzz", reference) == ""


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_checkpoint_with_the_same_data_order(tiny_run, tmp_path):
    """Kill a run with SIGKILL after its first checkpoint; the re-run resumes and matches an uninterrupted run."""
    common = [
        "--corpus", SHAKESPEARE, "--tokenizer", tiny_run / "tokenizer", "--depth", "1", "--aspect_ratio", "32",
        "--head_dim", "32", "--seq_len", "64", "--batch_size", "8", "--max_steps", "60", "--save_steps", "10",
        "--eval_steps", "100", "--logging_steps", "1", "--learning_rate", "3e-3", "--num_proc", "1", "--seed", "3",
    ]
    straight = run_cli("pretrain", "--output_dir", tmp_path / "straight", *common)
    assert straight.returncode == 0, straight.stderr[-2000:]

    killed_dir = tmp_path / "killed"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hf_pipeline", "pretrain", "--output_dir", str(killed_dir), *map(str, common)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    checkpoints = killed_dir / "pretrain.incomplete" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and not any(checkpoints.glob("checkpoint-*/trainer_state.json")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed_dir / "pretrain").exists()  # the killed run is not mistaken for done
    done = sorted(int(p.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*"))
    assert done and done[-1] < 60

    complete = [d for d in done if (checkpoints / f"checkpoint-{d}" / "trainer_state.json").is_file()]
    # a resume with settings that change the result refuses, naming them, and leaves the killed run as it was
    for flag, value, said in (("--depth", "2", "depth: 1 -> 2"), ("--seed", "4", "seed: 3 -> 4"),
                              ("--learning_rate", "1e-3", "learning_rate: 0.003 -> 0.001")):
        changed = run_cli("pretrain", "--output_dir", killed_dir, *common, flag, value)
        assert changed.returncode == 2 and said in changed.stderr and "--overwrite true" in changed.stderr, \
            changed.stderr[-2000:]
        assert "Traceback" not in changed.stderr and len(changed.stderr.strip().splitlines()) == 1
    assert sorted(int(p.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*")) == done
    resumed = run_cli("pretrain", "--output_dir", killed_dir, *common)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr
    metrics = json.loads((killed_dir / "pretrain" / "metrics.json").read_text())
    assert metrics["resumed_from"].endswith(f"checkpoint-{complete[-1]}")

    def losses(run):
        history = json.loads((run / "pretrain" / "log_history.json").read_text())["log_history"]
        return {h["step"]: h["loss"] for h in history if "loss" in h}

    a, b = losses(tmp_path / "straight"), losses(killed_dir)
    after = [s for s in a if s > complete[-1]]
    assert after, "the resumed part must have logged steps"
    for step in after:  # same batches in the same order -> the same losses
        assert b[step] == pytest.approx(a[step], abs=2e-3), step
    # the metrics cover the whole run, not the resumed part: the mean loss of every step, tokens/s of this process
    straight_metrics = json.loads((tmp_path / "straight" / "pretrain" / "metrics.json").read_text())
    assert metrics["train_loss"] == pytest.approx(straight_metrics["train_loss"], abs=2e-3)
    resumed_tokens = (60 - complete[-1]) * 8 * 64
    assert metrics["tokens_per_s"] == pytest.approx(resumed_tokens / metrics["train_seconds"], rel=1e-6)
    sa = AutoModelForCausalLM.from_pretrained(tmp_path / "straight" / "pretrain").state_dict()
    sb = AutoModelForCausalLM.from_pretrained(killed_dir / "pretrain").state_dict()
    assert all(torch.allclose(sa[k], sb[k], atol=1e-3) for k in sa)


def test_base_model_demos_script_measures_all_three(tiny_run):
    out = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "base_model_demos.py"), "--model", str(tiny_run), "--samples", "2"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("-- seed ") == 2
    assert out.stdout.count("longest verbatim match: ") == 2
    assert "-- few-shot: " in out.stdout and "/2 continuations" in out.stdout
