"""The SFT stage: a tiny model learns the chat protocol and stops at <|im_end|>; identity; LoRA; resume; bad inputs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import SHARED_DATA, run_cli
from hf_pipeline import sft
from hf_pipeline.engine import ChatSession, Engine, SamplingParams
from hf_pipeline.evals.chat import IDENTITY_QUESTIONS
from hf_pipeline.config import SFTStageConfig
from hf_pipeline.refs import resolve_model
from hf_pipeline.tokenizer import IM_END

CONVERSATIONS = SHARED_DATA / "conversations"
IDENTITY = CONVERSATIONS / "identity.json"
REPLY = "I can help with that."  # the one reply the tiny model learns: short, so a few dozen steps teach it


def teach_file(tmp_path, n: int = 48) -> str:
    """Real short instructions from the alpaca demo, all answered with REPLY, plus two bad rows."""
    rows = json.loads((CONVERSATIONS / "alpaca_en_demo.json").read_text())
    short = [r["instruction"] for r in rows if not r["input"] and len(r["instruction"]) < 60][:n]
    data = [{"instruction": q, "input": "", "output": REPLY} for q in short]
    data += [{"instruction": "Say nothing.", "input": "", "output": ""},  # empty_content
             {"instruction": "Rank these.", "output": ["a", "b"]}]  # non_text_content
    path = tmp_path / "teach.json"
    path.write_text(json.dumps(data))
    return str(path)


def sft_config(run_dir, model, datasets, **overrides) -> SFTStageConfig:
    fields = dict(
        output_dir=str(run_dir), model=str(model), seed=0, num_proc=1, datasets=datasets,
        identity_data=str(IDENTITY), identity_weight=0.25, assistant_name="Wren", assistant_author="Acme Labs",
        system_message="You are {name}.", heldout_fraction=0.2, max_length=96, batch_size=8, learning_rate=5e-3,
        max_steps=60, logging_steps=10, save_steps=30, eval_generations=8, max_new_tokens=16,
        mmlu="cais/mmlu", mirror=str(SHARED_DATA / "hub"), mmlu_limit=4,
    )
    return SFTStageConfig(**{**fields, **overrides})


@pytest.fixture(scope="module")
def sft_run(tiny_run, tmp_path_factory):
    """A full fine-tuning run on the tiny pretrained model, checkpoints kept (for the resume test)."""
    tmp = tmp_path_factory.mktemp("sft")
    config = sft_config(tmp / "run", tiny_run, [{"path": teach_file(tmp)}], keep_checkpoints=True)
    sft.run(config)
    return config


def test_sft_model_learns_the_reply_and_stops_at_im_end(sft_run):
    stage = sft_run.stage_dir()
    metrics = json.loads((stage / "metrics.json").read_text())
    assert metrics["stop_rate_before"] == 0.0  # a base model never ends a turn
    assert metrics["stop_rate_after"] == 1.0 and metrics["reply_tokens_after"] < 16
    assert metrics["heldout_loss_after"] < metrics["heldout_loss_before"] - 1.0
    assert metrics["steps"] == 60 and metrics["train_seconds"] > 0
    # plain transformers, no pipeline code: EOS is <|im_end|> and generation stops there by itself
    tokenizer = AutoTokenizer.from_pretrained(stage)
    model = AutoModelForCausalLM.from_pretrained(stage)
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    assert tokenizer.eos_token == IM_END and im_end in model.generation_config.eos_token_id
    prompt = tokenizer.apply_chat_template(
        [{"role": "system", "content": "You are Wren."}, {"role": "user", "content": "Name a color of the sky."}],
        tokenize=False, add_generation_prompt=True,
    )
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    out = model.generate(ids, max_new_tokens=16, do_sample=False)[0, ids.shape[1] :].tolist()
    assert im_end in out and len(out) < 16
    assert tokenizer.decode(out, skip_special_tokens=True).strip() == REPLY


def test_metrics_keys_samples_and_chat_defaults(sft_run):
    stage = sft_run.stage_dir()
    metrics = json.loads((stage / "metrics.json").read_text())
    for key in ("heldout_loss_before", "heldout_loss_after", "stop_rate_after", "stop_rate_before",
                "identity_accuracy_after", "identity_accuracy_before", "mmlu_accuracy_after", "mmlu_accuracy_before",
                "train_conversations",
                "identity_conversations", "train_seconds", "wall_time_s"):
        assert metrics[key] is not None, key
    assert metrics["mmlu_questions_after"] == 4 and 0 <= metrics["mmlu_accuracy_after"] <= 1
    assert metrics["skipped_empty_content"] == 1 and metrics["skipped_non_text_content"] == 1  # the bad rows
    # 48 taught conversations, a fifth held out; 91 identity conversations at weight 0.25: 23
    assert metrics["heldout_conversations"] == 9 and metrics["identity_conversations"] == 23
    # conversations longer than max_length (here the long Chinese identity rows) are dropped, not truncated
    assert metrics["skipped_too_long"] > 0
    assert metrics["train_conversations"] + metrics["skipped_too_long"] == 48 - 9 + 23
    samples = json.loads((stage / "samples.json").read_text())
    assert len(samples["after"]["identity"]) == len(IDENTITY_QUESTIONS)
    assert all(s["stopped"] and s["reply"] == REPLY for s in samples["after"]["stop"])
    chat_config = json.loads((stage / "chat_config.json").read_text())
    assert chat_config["system_message"] == "You are Wren." and chat_config["assistant_name"] == "Wren"
    assert (stage / "config.yaml").is_file() and not (sft_run.stage_dir().with_name("sft.incomplete")).exists()


def test_reloaded_model_reproduces_the_in_memory_replies(sft_run):
    """The identity replies in samples.json came from the model in memory; the saved folder gives the same ones."""
    stage = sft_run.stage_dir()
    samples = json.loads((stage / "samples.json").read_text())["after"]["identity"]
    engine = Engine.load(str(sft_run.output_dir), chat=True)  # the run folder resolves to RUN/sft
    conversations = [[{"role": "system", "content": "You are Wren."}, {"role": "user", "content": q}]
                     for q, _ in IDENTITY_QUESTIONS]
    replies = engine.reply(conversations, SamplingParams(max_new_tokens=48))
    assert [r["reply"] for r in replies] == [s["reply"] for s in samples]


def test_resume_from_the_last_checkpoint(sft_run, tmp_path):
    """A run killed after its checkpoint at step 30 of 60 resumes there and ends at step 60."""
    run_dir = tmp_path / "run"
    shutil.copytree(sft_run.stage_dir(), run_dir / "sft.incomplete")
    checkpoints = run_dir / "sft.incomplete" / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-30", "checkpoint-60"]
    shutil.rmtree(checkpoints / "checkpoint-60")  # killed between the two checkpoints
    config = sft_config(run_dir, sft_run.model, sft_run.datasets)  # the settings it was started with
    sft.run(config)
    metrics = json.loads((run_dir / "sft" / "metrics.json").read_text())
    assert metrics["resumed_from"].endswith("checkpoint-30") and metrics["steps"] == 60
    assert metrics["stop_rate_after"] == 1.0
    history = json.loads((run_dir / "sft" / "log_history.json").read_text())["log_history"]
    first = json.loads((sft_run.stage_dir() / "log_history.json").read_text())["log_history"]
    losses = [[h["loss"] for h in log if "loss" in h and h["step"] <= 30] for log in (history, first)]
    assert losses[0] == losses[1] and len(losses[0]) == 3  # the first half's log came back with the checkpoint
    assert not (run_dir / "sft" / "checkpoints").exists()


def test_lora_adapter_saves_reloads_and_merges(tiny_run, tmp_path):
    from peft import AutoPeftModelForCausalLM, PeftModel

    config = sft_config(tmp_path / "run", tiny_run, [{"path": teach_file(tmp_path)}], use_lora=True, merge_lora=True,
                        lora_r=8, lora_alpha=16, learning_rate=1e-2, max_steps=8, eval_generations=4, mmlu=None)
    stage = sft.run(config)
    assert (stage / "adapter_config.json").is_file() and (stage / "adapter_model.safetensors").is_file()
    assert not (stage / "model.safetensors").exists()  # an adapter, not a copy of the model
    assert resolve_model(str(tmp_path / "run")) == str(stage)  # a run folder finds an adapter-only sft stage
    metrics = json.loads((stage / "metrics.json").read_text())
    assert metrics["use_lora"] and metrics["trainable_params"] < metrics["num_params"] / 5

    adapter = AutoPeftModelForCausalLM.from_pretrained(stage).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_run / "pretrain").eval()
    again = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_run / "pretrain"), stage).eval()
    merged = AutoModelForCausalLM.from_pretrained(stage / "merged").eval()
    assert not (stage / "merged" / "adapter_config.json").exists()
    tokenizer = AutoTokenizer.from_pretrained(stage)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Who made you?"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        logits = {name: m(ids).logits for name, m in
                  [("adapter", adapter), ("base", base), ("again", again), ("merged", merged)]}
    assert not torch.allclose(logits["adapter"], logits["base"], atol=1e-3)  # the adapter learned something
    torch.testing.assert_close(logits["again"], logits["adapter"])
    torch.testing.assert_close(logits["merged"], logits["adapter"], atol=1e-4, rtol=1e-4)

    # the in-memory model's greedy identity replies come back from the saved adapter and from the merged model
    samples = json.loads((stage / "samples.json").read_text())["after"]["identity"]
    for ref in (str(stage), str(stage / "merged")):
        session = ChatSession(ref, temperature=0, max_new_tokens=48)
        assert session.system == "You are Wren."  # chat_config.json travels with both folders
        assert session.send(IDENTITY_QUESTIONS[0][0]) == samples[0]["reply"]


def test_identity_placeholders_filled_or_dropped(tmp_path):
    """Identity rows in a general source (v1_sft_demo carries 50) follow the identity switch."""
    datasets = [{"path": str(CONVERSATIONS / "v1_sft_demo.jsonl")}]
    on = sft_config(tmp_path, "unused", datasets, identity_data=str(IDENTITY), system_message=None)
    train, heldout, stats = sft.build_conversations(on)
    text = json.dumps(list(train["messages"]) + list(heldout["messages"]))
    assert "{{" not in text and "I am Wren, an AI assistant developed by Acme Labs" in text
    assert stats["identity_conversations"] == 23 and len(train) + len(heldout) == 500 + 23

    off = sft_config(tmp_path, "unused", datasets, identity_data=None, system_message="You are {name}, by {author}.")
    train, heldout, stats = sft.build_conversations(off)
    text = json.dumps(list(train["messages"]) + list(heldout["messages"]))
    assert "{{name}}" not in text and "Acme Labs, an AI" not in text and "developed by Acme" not in text
    assert stats["skipped"]["identity_placeholder"] == 50 and len(train) + len(heldout) == 450
    assert all(conv[0] == {"role": "system", "content": "You are Wren, by Acme Labs."} for conv in train["messages"])


def test_languages_keep_english_conversations_and_count_the_rest(tmp_path):
    datasets = [{"path": str(CONVERSATIONS / "v1_sft_demo.jsonl")}]
    config = sft_config(tmp_path, "unused", datasets, identity_data=str(IDENTITY), identity_weight=2,
                        languages=["en"], system_message=None)
    train, heldout, stats = sft.build_conversations(config)
    everything = list(train["messages"]) + list(heldout["messages"])
    assert stats["identity_conversations"] == 2 * 16  # the identity file's 16 English rows, twice
    assert stats["sources"][0]["skipped"]["language"] == 42  # v1_sft_demo: 458 of 500 rows are English
    assert stats["skipped"]["language"] == 75 + 42
    assert 32 + 450 < len(everything) <= 32 + 458  # held-out copies of a duplicated row are kept once
    cjk = [conv for conv in everything if any("\u4e00" <= c <= "\u9fff" for m in conv for c in m["content"])]
    assert not cjk


def test_bad_language_settings_fail_with_one_line(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("sft:\n  language_threshold: 65\n")
    result = run_cli("sft", "--config", recipe, "--output_dir", tmp_path / "run")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "hf-pipeline: error: sft.language_threshold: a language score in [0, 1), not 65.0"]


def test_identity_questions_are_not_in_the_identity_data():
    def norm(text):
        return "".join(c for c in text.lower() if c.isalnum())

    trained = {norm(r["instruction"]) for r in json.loads(IDENTITY.read_text())}
    for line in (CONVERSATIONS / "v1_sft_demo.jsonl").read_text().splitlines():
        for message in json.loads(line)["messages"]:
            if message["role"] == "user":
                trained.add(norm("".join(part["value"] for part in message["content"])))
    questions = [q for q, _ in IDENTITY_QUESTIONS]
    assert len(questions) == len(set(questions)) == 20
    assert not {norm(q) for q in questions} & trained
    assert {kind for _, kind in IDENTITY_QUESTIONS} == {"name", "author"}


def test_missing_dataset_or_model_fails_with_one_line(tiny_run, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"sft:\n  model: {tiny_run}\n  datasets: [{tmp_path / 'missing.json'}]\n")
    result = run_cli("sft", "--config", recipe, "--output_dir", tmp_path / "run")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"hf-pipeline: error: sft.datasets: '{tmp_path / 'missing.json'}' not found"
    ]
    result = run_cli("sft", "--config", recipe, "--model", tmp_path / "nowhere", "--datasets", IDENTITY)
    assert result.returncode == 2 and "nowhere" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_identity_and_system_message_switch_off_from_the_command_line(tmp_path):
    from hf_pipeline.config import build_config

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"sft:\n  identity_data: {IDENTITY}\n  system_message: You are {{name}}.\n")
    on = build_config("sft", ["--config", str(recipe)])
    assert on.identity_data == str(IDENTITY) and sft.system_message(on) == "You are Tiny."
    off = build_config("sft", ["--config", str(recipe), "--identity_data", "null", "--system_message", "none"])
    assert off.identity_data is None and off.system_message is None and sft.system_message(off) is None


def test_worked_problems_mixed_in_with_the_rl_prompt_and_no_held_out_problem(tmp_path):
    """`worked_problems: N` adds N generated worked solutions: GRPO's prompt (its own system message kept), the
    solution as the reply; drawn apart from GRPO's practice problems and never one of its held-out problems."""
    from hf_pipeline.problems import SYSTEM_PROMPT, generate_problems

    dial = dict(problem_max_steps=2, problem_max_number=10)
    config = sft_config(tmp_path, None, [], identity_data=None, system_message="You are {name}.",
                        worked_problems=30, **dial)
    train, heldout, stats = sft.build_conversations(config)
    assert len(train) == 30 and heldout is None and stats["worked_problems"] == 30
    for conv in train["messages"]:
        assert [m["role"] for m in conv] == ["system", "user", "assistant"]
        assert conv[0]["content"] == SYSTEM_PROMPT  # the default system message does not replace the RL one
        assert conv[2]["content"].splitlines()[-1].startswith("#### ")
    questions = {conv[1]["content"] for conv in train["messages"]}
    held_out = set(generate_problems(100, seed=0, split="test", steps=(1, 2), max_number=10)["question"])
    assert not questions & held_out
    practice = generate_problems(30, seed=0, split="train", steps=(1, 2), max_number=10)["question"]
    assert questions != set(practice)  # another draw (seed + 1) than the grpo stage's practice problems
    # the only source is enough for the config's input check
    config.check(planned=("pretrain",))
    with pytest.raises(Exception, match="no conversation sources"):
        sft_config(tmp_path, None, [], identity_data=None).check(planned=("pretrain",))


def test_eval_verb_gives_the_stage_measures(sft_run, tmp_path):
    """`hf-pipeline eval` runs the functions the stage ran: on the stage's model, the same figures."""
    metrics = json.loads((sft_run.stage_dir() / "metrics.json").read_text())
    out = run_cli("eval", sft_run.stage_dir(), "--suites", "chat", "mmlu", "--mirror", SHARED_DATA / "hub",
                  "--mmlu_limit", "4", "--max_length", "96", "--max_new_tokens", "16", "--num_prompts", "4",
                  "--output_dir", tmp_path / "eval")
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert got["identity_accuracy"] == metrics["identity_accuracy_after"]  # name, author, system from chat_config
    assert got["mmlu_accuracy"] == metrics["mmlu_accuracy_after"] and got["mmlu_questions"] == 4
    assert 0 <= got["stop_rate"] <= 1 and got["reply_tokens"] > 0
    assert str(tmp_path / "eval") in out.stdout and '"identity_accuracy"' in out.stdout
