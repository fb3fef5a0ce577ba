"""Chat: multi-turn history, streaming, system messages, /reset and /exit, the CLI fed through a pipe.

These run on the tiny pretrained model (its tokenizer has the chat template): the protocol is what is tested here;
that a fine-tuned model stops by itself is tested in test_sft.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from hf_pipeline.engine import ChatSession, Engine, SamplingParams, chat
from hf_pipeline.config import ConfigError
from hf_pipeline.tokenizer import IM_END, IM_START


def chat_cli(*args, stdin: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "hf_pipeline", "chat", *map(str, args)], input=stdin,
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def session(tiny_run):
    return ChatSession(str(tiny_run), temperature=0, max_new_tokens=8)


def test_history_is_kept_and_rendered_with_the_chat_template(session):
    session.reset()
    first = session.send("Hello there")
    second = session.send("Tell me more")
    assert [m["role"] for m in session.messages] == ["user", "assistant", "user", "assistant"]
    assert session.messages[1]["content"] == first and session.messages[3]["content"] == second
    expected = session.tokenizer.apply_chat_template(session.messages[:3], tokenize=False, add_generation_prompt=True)
    assert session.last_prompt == expected
    assert session.last_prompt.count(IM_START) == 4 and first in session.last_prompt  # the first exchange is in it
    session.reset()
    assert session.messages == []


def test_stream_yields_the_reply_and_greedy_is_deterministic(session):
    session.reset()
    pieces = list(session.stream("Good morning"))
    assert "".join(pieces).strip() == session.messages[-1]["content"] and len(pieces) > 1
    assert chat(session.model, "Good morning", tokenizer=session.tokenizer, temperature=0,
                max_new_tokens=8) == session.messages[-1]["content"]
    batch = Engine(session.model, session.tokenizer).reply([[{"role": "user", "content": "Good morning"}]],
                                                           SamplingParams(max_new_tokens=8))
    assert batch[0]["reply"] == session.messages[-1]["content"]
    assert batch[0]["tokens"] == 8 and not batch[0]["stopped"]  # a base model does not end its turn


def test_system_message_from_chat_config_and_overrides(tiny_run, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_run / "pretrain", folder)
    (folder / "chat_config.json").write_text(json.dumps({"system_message": "You are Wren.", "assistant_name": "Wren"}))
    default = ChatSession(str(folder), temperature=0, max_new_tokens=4)
    assert default.messages == [{"role": "system", "content": "You are Wren."}] and default.assistant_name == "Wren"
    default.send("Hi")
    assert default.last_prompt.startswith(f"{IM_START}system<|im_sep|>You are Wren.{IM_END}")
    default.reset()
    assert default.messages == [{"role": "system", "content": "You are Wren."}]  # reset keeps the system message
    assert ChatSession(str(folder), system="Be brief.").messages[0]["content"] == "Be brief."
    assert ChatSession(str(folder), system="").messages == []


def test_old_turns_are_dropped_when_the_context_is_full(session):
    short = ChatSession(session.model, session.tokenizer, temperature=0, max_new_tokens=8, max_context_tokens=40)
    for text in ("one two three four five", "six seven eight nine ten", "eleven twelve"):
        short.send(text)
    assert short.messages[0]["content"] != "one two three four five"  # the oldest exchange went first
    assert short.messages[-2]["content"] == "eleven twelve"


def test_cli_pipes_two_turns_with_history_then_reset_and_exit(tiny_run):
    result = chat_cli(tiny_run, "--temperature", "0", "--max_new_tokens", "6", "--system", "You are Wren.",
                      "--show_prompt", stdin="Hello there\nTell me more\n/reset\nAgain\n/exit\nnever read\n")
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    replies = [line for line in out if line.startswith("assistant> ")]
    assert len(replies) == 3 and "(conversation reset)" in out and "never read" not in result.stdout
    assert out[0] == "you> Hello there"
    prompts = [json_unrepr(line) for line in result.stderr.splitlines() if line.startswith("[prompt] ")]
    assert len(prompts) == 3
    assert prompts[0].startswith(f"{IM_START}system<|im_sep|>You are Wren.{IM_END}")
    assert prompts[1].startswith(prompts[0]) and "Tell me more" in prompts[1]  # the second turn sees the first
    first_reply = prompts[1][len(prompts[0]):].split(IM_END)[0]
    assert first_reply and first_reply in result.stdout  # the reply printed is the one kept in the history
    assert "Hello there" not in prompts[2] and "Again" in prompts[2]  # after /reset


def json_unrepr(line: str) -> str:
    import ast

    return ast.literal_eval(line[len("[prompt] "):])


def test_chat_refuses_a_model_without_chat_template(tiny_run, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_run / "pretrain", folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="no chat template"):
        Engine.load(str(folder), chat=True)
    with pytest.raises(ConfigError, match="no such model folder"):
        Engine.load(str(tmp_path / "missing"), chat=True)
