"""Training under ``accelerate launch`` with 2 CPU processes (gloo): the same losses as one process with the same
global batch, the stage folder written once, checkpoints saved once, a killed run resumed; the multi-GPU configs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, SHAKESPEARE, run_cli
from test_sft import teach_file

# torchrun's launcher (accelerate's --cpu runs one process only): with no GPU, accelerate picks MULTI_CPU and gloo
LAUNCH = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "hf_pipeline"]
ENV = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
STEPS, SAVE = 40, 10


def launch(*args, timeout: int = 600) -> subprocess.CompletedProcess:
    """``accelerate launch --multi_gpu --num_processes 2 -m hf_pipeline ARGS`` on this machine's CPUs."""
    return subprocess.run([sys.executable, *LAUNCH, *map(str, args)], capture_output=True, text=True, env=ENV,
                          cwd=ROOT, timeout=timeout)


def descendants(pid: int) -> list[int]:
    """The processes started by ``pid``, and theirs (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def losses(stage_dir: Path) -> dict[int, float]:
    history = json.loads((stage_dir / "log_history.json").read_text())["log_history"]
    return {h["step"]: h["loss"] for h in history if "loss" in h}


def assert_same_losses(one: dict, two: dict, rel: float = 1e-3):
    """Step by step: the 2-process run sees the same windows per step (the seeded sampler's order, split between the
    processes), so only the order of the floating-point sums differs."""
    assert one.keys() == two.keys() and one
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=rel), (step, one[step], two[step])


def pretrain_args(tiny_run, batch_size: int) -> list:
    return ["--corpus", SHAKESPEARE, "--tokenizer", tiny_run / "tokenizer", "--depth", "2", "--aspect_ratio", "32",
            "--head_dim", "32", "--seq_len", "128", "--batch_size", batch_size, "--max_steps", STEPS,
            "--save_steps", SAVE, "--eval_steps", 1000, "--logging_steps", 1, "--learning_rate", "3e-3",
            "--num_proc", 1, "--seed", 3, "--bf16", "false", "--keep_checkpoints", "true"]


@pytest.mark.slow
def test_pretrain_with_two_processes_matches_one_saves_once_and_resumes(tiny_run, tmp_path):
    one = run_cli("pretrain", "--output_dir", tmp_path / "one", *pretrain_args(tiny_run, 8))
    assert one.returncode == 0, one.stderr[-2000:]

    # a 2-process run (4 windows each: the same global batch of 8), killed after its first checkpoint
    run_dir = tmp_path / "two"
    cmd = [sys.executable, *LAUNCH, "pretrain", "--output_dir", str(run_dir), *map(str, pretrain_args(tiny_run, 4))]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = run_dir / "pretrain.incomplete" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and not any(checkpoints.glob("checkpoint-*/trainer_state.json")):
        time.sleep(0.01)
    for pid in [*descendants(proc.pid), proc.pid]:  # both ranks (torchrun starts them in sessions of their own)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "pretrain").exists()
    done = [int(p.parent.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*/trainer_state.json")]
    assert done and max(done) < STEPS

    resumed = launch("pretrain", "--output_dir", run_dir, *pretrain_args(tiny_run, 4))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {checkpoints}/checkpoint-{max(done)}" in resumed.stderr
    stage = run_dir / "pretrain"
    metrics = json.loads((stage / "metrics.json").read_text())
    assert metrics["resumed_from"].endswith(f"checkpoint-{max(done)}")
    assert metrics["num_processes"] == 2 and metrics["steps"] == STEPS
    assert metrics["train_tokens"] == STEPS * 8 * 128  # the global batch
    # the main process alone wrote the stage: one final log line, no leftovers; the lock did not stop rank 1
    assert resumed.stderr.count("pretrain: trained") == 1 and "in use by" not in resumed.stderr
    assert not (run_dir / "pretrain.incomplete").exists() and not list(stage.rglob("*.tmp"))
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "config.yaml",
                 "log_history.json"):
        assert (stage / name).is_file(), name
    # checkpoints saved once per save step (the Trainer keeps the last 2), with each rank's random state
    saved = sorted(stage.glob("checkpoints/*"))
    assert [p.name for p in saved] == [f"checkpoint-{STEPS - SAVE}", f"checkpoint-{STEPS}"]
    for path in saved:
        assert (path / "rng_state_0.pth").is_file() and (path / "rng_state_1.pth").is_file()
        assert (path / "model.safetensors").is_file() and (path / "optimizer.pt").is_file()

    # the same losses, step by step (those before the kill come from the checkpoint's log), and the same result
    assert_same_losses(losses(tmp_path / "one" / "pretrain"), losses(stage))
    single = json.loads((tmp_path / "one" / "pretrain" / "metrics.json").read_text())
    assert metrics["heldout_loss"] == pytest.approx(single["heldout_loss"], rel=1e-3)
    assert metrics["train_loss"] == pytest.approx(single["train_loss"], rel=1e-3)


@pytest.mark.slow
def test_sft_with_two_processes_matches_one(tiny_run, tmp_path):
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(yaml.safe_dump({"sft": {
        "model": str(tiny_run / "pretrain"), "datasets": [{"path": teach_file(tmp_path)}], "identity_data": None,
        "heldout_fraction": 0.2, "max_length": 96, "learning_rate": 5e-3, "max_steps": 6, "logging_steps": 1,
        "save_steps": 3, "eval_generations": 4, "max_new_tokens": 8, "mmlu": None, "seed": 0, "num_proc": 1,
        "bf16": False, "keep_checkpoints": True,
    }}))
    one = run_cli("sft", "--config", recipe, "--output_dir", tmp_path / "one", "--batch_size", 8)
    assert one.returncode == 0, one.stderr[-2000:]
    two = launch("sft", "--config", recipe, "--output_dir", tmp_path / "two", "--batch_size", 4)
    assert two.returncode == 0, two.stderr[-3000:]

    a, b = tmp_path / "one" / "sft", tmp_path / "two" / "sft"
    # padded conversations of different lengths: each process averages its own tokens, so the logged loss differs a
    # little from the 1-process mean (0.1% here); the training is the same within that
    assert_same_losses(losses(a), losses(b), rel=2e-2)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert mb["num_processes"] == 2 and mb["steps"] == 6
    # the held-out loss (the trainer's evaluation, gathered across the processes) before and after
    assert mb["heldout_loss_before"] == pytest.approx(ma["heldout_loss_before"], rel=1e-3)
    for key in ("heldout_loss_after", "train_loss"):
        assert mb[key] == pytest.approx(ma[key], rel=2e-2), key
    assert not (tmp_path / "two" / "sft.incomplete").exists()
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    assert sorted(p.name for p in (b / "checkpoints").glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    samples = json.loads((b / "samples.json").read_text())
    assert samples["before"] and samples["after"]


CONFIGS = ROOT / "recipes" / "accelerate"


@pytest.mark.parametrize("name, kind", [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("zero2", "DEEPSPEED"),
                                        ("zero3", "DEEPSPEED")])
def test_multi_gpu_configs_load_as_accelerate_configs(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    path = CONFIGS / f"{name}.yaml"
    text = path.read_text()
    assert f"accelerate launch --config_file recipes/accelerate/{name}.yaml" in text
    assert "--num_machines 2" in text and "--machine_rank R --main_process_ip HOST" in text
    config = load_config_from_file(str(path))
    assert config.distributed_type.name == kind
    assert config.num_processes == 8 and config.num_machines == 1 and config.mixed_precision == "bf16"
    raw = yaml.safe_load(text)
    if name == "fsdp":
        fsdp = raw["fsdp_config"]
        assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_reshard_after_forward"] is True
        assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        assert fsdp["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"
    if name.startswith("zero"):
        assert raw["deepspeed_config"]["zero_stage"] == int(name[-1])
