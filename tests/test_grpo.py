"""The GRPO stage: a few real GRPO steps on the tiny model with every reward logged, the measures before and after,
the reward curve, LoRA, and a problem file with bad rows skipped and counted."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import MIRROR, ROOT
from hf_pipeline import grpo
from hf_pipeline.artifacts import BASELINE_FILE
from hf_pipeline.config import ConfigError, GRPOStageConfig, build_config
from hf_pipeline.tokenizer import IM_END

GSM8K_TRAIN = MIRROR / "openai" / "gsm8k" / "main" / "train.jsonl"
REWARD_KEYS = ("rewards/correctness_reward/mean", "rewards/format_reward/mean", "rewards/length_penalty/mean")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def grpo_config(run_dir, model, **overrides) -> GRPOStageConfig:
    """Small enough for a few seconds a step on 2 cores: 2 problems x 4 completions of <= 16 tokens per step."""
    fields = dict(
        output_dir=str(run_dir), model=str(model), seed=0, num_proc=1,
        problems="generated", num_train_problems=16, num_test_problems=6, problem_max_steps=1, problem_max_number=5,
        num_generations=4, batch_size=8, max_completion_length=16, max_steps=3, learning_rate=1e-3,
        logging_steps=1, save_steps=2, pass_k=2, eval_batch_size=16,
        reward_weights={"correctness": 1.0, "format": 0.5, "length": 0.25},
        length_penalty={"target": 8, "unit": "tokens"}, beta=0.02,
    )
    return GRPOStageConfig(**{**fields, **overrides})


@pytest.fixture(scope="module")
def grpo_run(tiny_run, tmp_path_factory):
    config = grpo_config(tmp_path_factory.mktemp("grpo") / "run", tiny_run)
    grpo.run(config)
    return config


def test_grpo_steps_log_every_reward_and_write_the_stage(grpo_run):
    stage = grpo_run.stage_dir()
    assert stage.is_dir() and not stage.with_name("grpo.incomplete").exists()
    assert not (stage / "checkpoints").exists() and not (stage / BASELINE_FILE).exists()
    metrics = json.loads((stage / "metrics.json").read_text())
    for name in ("pass1", "pass1_strict", "pass1_checked", "passk", "sample_accuracy", "mean_completion_tokens",
                 "stop_rate", "worked_share", "sample_worked_share", "sample_mean_tokens"):
        for when in ("before", "after"):
            assert metrics[f"{name}_{when}"] is not None, f"{name}_{when}"
    for name in ("pass1", "passk", "sample_accuracy", "stop_rate"):
        assert 0.0 <= metrics[f"{name}_before"] <= 1.0 and 0.0 <= metrics[f"{name}_after"] <= 1.0
    assert metrics["passk_before"] >= metrics["sample_accuracy_before"]  # at least one of k is right >= the average
    assert 0 < metrics["mean_completion_tokens_before"] <= 16
    assert metrics["k"] == 2 and metrics["steps"] == 3
    assert metrics["num_train_problems"] == 16 and metrics["num_test_problems"] == 6 and metrics["skipped_rows"] == 0
    assert metrics["train_seconds"] > 0 and metrics["reward_mean_first"] is not None
    assert 0 <= metrics["rollout_worked_share_first"] <= 1 and 0 < metrics["rollout_mean_length_last"] <= 16
    assert 0 <= metrics["guess_accuracy"] <= 1
    for when in ("before", "after"):  # the accuracy of each form, None where no sample took that form
        for form in ("worked", "direct"):
            assert metrics[f"accuracy_{form}_{when}"] is None or 0 <= metrics[f"accuracy_{form}_{when}"] <= 1
    assert metrics["use_lora"] is False and metrics["trainable_params"] == metrics["num_params"]

    # One log entry per step with the weighted reward and each reward function's mean.
    history = json.loads((stage / "log_history.json").read_text())["log_history"]
    steps = [h for h in history if "reward" in h]
    assert [h["step"] for h in steps] == [1, 2, 3]
    for h in steps:
        assert all(key in h for key in REWARD_KEYS), h.keys()
        assert 0.0 <= h["rewards/worked_reward/mean"] <= 1.0  # logged with weight 0: the share of worked rollouts
        assert 0.0 <= h["rewards/correctness_reward/mean"] <= 1.0
        assert 0.0 <= h["rewards/format_reward/mean"] <= 1.0
        assert -1.0 <= h["rewards/length_penalty/mean"] <= 0.0
        # the logged reward is the weighted sum of the functions' means: the recipe's weights reached TRL
        weighted = sum(w * h[k] for w, k in zip((1.0, 0.5, 0.25), REWARD_KEYS))
        assert h["reward"] == pytest.approx(weighted, abs=1e-5)
        assert 0 < h["completions/mean_length"] <= 16
        assert h["kl"] >= 0  # beta > 0: a reference model was rebuilt from the starting model's folder
    # An untrained model rarely stops within 8 tokens: the token-length penalty saw TRL's completion_ids.
    assert min(h["rewards/length_penalty/mean"] for h in steps) < 0

    png = (stage / "reward_curve.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000


def test_saved_model_stops_at_im_end_and_generates(grpo_run):
    stage = grpo_run.stage_dir()
    tokenizer = AutoTokenizer.from_pretrained(stage)
    model = AutoModelForCausalLM.from_pretrained(stage)
    assert tokenizer.convert_tokens_to_ids(IM_END) in model.generation_config.eos_token_id
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], tokenize=False,
                                           add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids.shape[1]
    samples = json.loads((stage / "samples.json").read_text())
    assert len(samples["before"]) == len(samples["after"]) == 6
    assert {"question", "answer", "reply", "correct", "worked"} <= set(samples["after"][0])


def test_lora_adapter_saved_loads_with_peft_and_merges(tiny_run, tmp_path):
    from peft import PeftModel

    config = grpo_config(tmp_path / "run", tiny_run, use_lora=True, lora_r=4, lora_alpha=8, max_steps=2,
                         merge_lora=True, learning_rate=5e-3, beta=0.04,
                         # an untrained model earns no correctness reward; the length in characters always varies
                         # within a group, so the advantages (and the adapter's update) are never all zero
                         reward_weights={"correctness": 1.0, "length": 1.0},
                         length_penalty={"target": 8, "unit": "chars", "max_penalty": 100})
    stage = grpo.run(config)
    assert (stage / "adapter_config.json").is_file() and not (stage / "model.safetensors").exists()
    metrics = json.loads((stage / "metrics.json").read_text())
    assert metrics["use_lora"] and 0 < metrics["trainable_params"] < metrics["num_params"] / 5
    assert metrics["steps"] == 2
    adapter = load_file(stage / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and any(v.abs().max() > 0 for v in lora_b)  # B starts at zero: non-zero means GRPO updated it

    base = AutoModelForCausalLM.from_pretrained(tiny_run / "pretrain")
    model = PeftModel.from_pretrained(base, str(stage))
    merged = AutoModelForCausalLM.from_pretrained(stage / "merged")
    ids = torch.tensor([[5, 40, 41, 42, 43]])
    with torch.no_grad():
        adapted = model(ids).logits
        with model.disable_adapter():
            without = model(ids).logits
        assert not torch.allclose(adapted, without)
        assert torch.allclose(merged(ids).logits, adapted, atol=1e-4)


def test_freeze_embeddings_keeps_embeddings_and_lm_head_and_trains_the_rest(tiny_run, tmp_path):
    config = grpo_config(tmp_path / "run", tiny_run, max_steps=2, num_test_problems=2, pass_k=1, beta=0.0,
                         freeze_embeddings=True, learning_rate=5e-3,
                         reward_weights={"correctness": 1.0, "length": 1.0},  # as in the LoRA test: never all zero
                         length_penalty={"target": 8, "unit": "chars", "max_penalty": 100})
    stage = grpo.run(config)
    metrics = json.loads((stage / "metrics.json").read_text())
    before = AutoModelForCausalLM.from_pretrained(metrics["start_model"])
    after = AutoModelForCausalLM.from_pretrained(stage)
    assert torch.equal(after.get_input_embeddings().weight, before.get_input_embeddings().weight)
    assert torch.equal(after.get_output_embeddings().weight, before.get_output_embeddings().weight)
    frozen = {id(before.get_input_embeddings().weight): before.get_input_embeddings().weight,
              id(before.get_output_embeddings().weight): before.get_output_embeddings().weight}
    changed = [n for (n, p), q in zip(before.named_parameters(), after.parameters())
               if id(p) not in frozen and not torch.equal(p, q)]
    assert changed  # the transformer blocks did train
    assert metrics["trainable_params"] == metrics["num_params"] - sum(p.numel() for p in frozen.values())
    assert 0 <= metrics["pass1_checked_after"] <= metrics["pass1_after"]


def test_resume_from_the_last_checkpoint(tiny_run, tmp_path):
    config = grpo_config(tmp_path / "run", tiny_run, max_steps=3, save_steps=1, keep_checkpoints=True,
                         num_test_problems=2, pass_k=1, beta=0.0)
    stage = grpo.run(config)
    assert (stage / "checkpoints" / "checkpoint-2").is_dir()
    # As if killed after step 2 of 3: the folder back under its temporary name without the last checkpoint, then
    # the same command again (a resume with other settings refuses: tests/test_reliability.py).
    stage.rename(stage.with_name("grpo.incomplete"))
    shutil.rmtree(stage.with_name("grpo.incomplete") / "checkpoints" / "checkpoint-3")
    stage = grpo.run(config)
    metrics = json.loads((stage / "metrics.json").read_text())
    assert metrics["resumed_from"].endswith("checkpoint-2") and metrics["steps"] == 3
    history = json.loads((stage / "log_history.json").read_text())["log_history"]
    assert [h["step"] for h in history if "reward" in h] == [1, 2, 3]  # the first steps' logs come from the checkpoint


def test_bad_problem_rows_skipped_and_counted(tiny_run, tmp_path):
    good = [json.loads(line) for line in GSM8K_TRAIN.read_text().splitlines()[:12]]
    bad = [
        {"question": "How many apples are left?", "answer": None},  # missing answer
        {"question": "What is 2 + 2?", "answer": "2 + 2 = 4, so four."},  # no #### line
        {"question": "How far is it?", "answer": "It is far.\n#### about five"},  # not a number
    ]
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in good[:5] + bad + good[5:]))
    # through the recipe parser and the config's input check, as `hf-pipeline grpo --problems FILE` runs it
    config = build_config("grpo", [
        "--output_dir", str(tmp_path / "run"), "--model", str(tiny_run), "--problems", str(path), "--seed", "0",
        "--num_proc", "1", "--num_test_problems", "4", "--num_train_problems", "100", "--num_generations", "2",
        "--batch_size", "2", "--max_steps", "1", "--max_completion_length", "8", "--pass_k", "1",
    ])
    config.check()
    stage = grpo.run(config)
    metrics = json.loads((stage / "metrics.json").read_text())
    assert metrics["skipped_missing_answer"] == 2 and metrics["skipped_unparseable_answer"] == 1
    assert metrics["skipped_rows"] == 3
    assert metrics["num_test_problems"] == 4 and metrics["num_train_problems"] == 8  # 12 usable rows, 4 held out
    assert metrics["problems"] == str(path) and metrics["steps"] == 1


def test_bad_grpo_settings_fail_with_one_line(tiny_run, tmp_path):
    with pytest.raises(ConfigError, match="multiple of num_generations"):
        build_config("grpo", ["--batch_size", "6", "--num_generations", "4"])
    with pytest.raises(ConfigError, match=r"grpo.warmup_ratio: a share of the steps in \[0, 1\), not 5.0"):
        build_config("grpo", ["--warmup_ratio", "5"])
    with pytest.raises(ConfigError, match="num_generations: must be >= 2"):
        build_config("grpo", ["--batch_size", "8", "--num_generations", "1"])
    with pytest.raises(ConfigError, match="grpo.problems"):
        build_config("grpo", ["--model", str(tiny_run), "--problems", str(tmp_path / "none.jsonl")]).check()
    with pytest.raises(ConfigError, match=r"grpo.problem_instruction: unknown instruction 'verbose' \(known: system, "
                                          r"format, suffix, none\)"):
        build_config("grpo", ["--problem_instruction", "verbose"])
    with pytest.raises(ConfigError, match="sft.worked_share: "):
        build_config("sft", ["--worked_share", "1.5"])
    with pytest.raises(ConfigError, match="grpo.problem_templates: unknown template 'adition'"):
        build_config("grpo", ["--problem_templates", "adition"])
    with pytest.raises(ConfigError, match="sft"):  # no model given and no RUN/sft to start from
        build_config("grpo", ["--output_dir", str(tmp_path / "empty")]).check()


def test_problem_headroom_script_reports_accuracy_and_equation_errors(grpo_run):
    """recipes/problem_headroom.py on the trained model: every held-out reply lands in one error bucket."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "problem_headroom.py"), "--model", str(grpo_run.stage_dir()),
         "--n", "6", "--max_new_tokens", "16"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    last = re.fullmatch(r"headroom pass1=([\d.]+) pass8_t05=([\d.]+) pass8_t10=([\d.]+) operands_right=([\d.]+)",
                        out.stdout.strip().splitlines()[-1])
    assert last and all(0 <= float(v) <= 1 for v in last.groups())
    assert out.stdout.count("temperature ") == 2 and out.stdout.startswith("greedy pass@1 ")
    buckets = [int(line.split()[0]) for line in out.stdout.splitlines() if re.match(r"\s+\d+\s+\S", line)]
    assert sum(buckets) == 6
