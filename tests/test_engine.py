"""The inference engine: loading, sampling checks, batched replies, streaming, and the tool hook.

The tool hook is tested on a tiny model trained here to make one call: after a user turn it writes
``<|python_start|>abc<|python_end|>``, and, after the tool's output, `` done<|im_end|>``. The engine must pause at the
close token, run the tool on "abc", put its output between ``<|output_start|>`` and ``<|output_end|>``, and go on
generating from there with the KV cache kept.
"""

from __future__ import annotations

import pytest

from hf_pipeline.config import ConfigError
from hf_pipeline.engine import ChatSession, Engine, SamplingParams, Tool
from hf_pipeline.tokenizer import IM_END, OUTPUT_END, OUTPUT_START, PYTHON_END, PYTHON_START

USER = [{"role": "user", "content": "Use the tool."}]
TRAINED_OUTPUT = "xyz"  # what the tool returned in the training sequence


@pytest.fixture(scope="module")
def tool_engine(tiny_run):
    """A 1-layer model that memorised one tool-using reply."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from hf_pipeline.model import model_config

    tokenizer = AutoTokenizer.from_pretrained(tiny_run / "tokenizer")
    torch.manual_seed(0)
    model = LlamaForCausalLM(model_config(1, len(tokenizer), 128, 32, 32, eos_token_id=tokenizer.eos_token_id,
                                          pad_token_id=tokenizer.pad_token_id))
    prompt = tokenizer.apply_chat_template(USER, tokenize=False, add_generation_prompt=True)
    reply = f"{PYTHON_START}abc{PYTHON_END}{OUTPUT_START}{TRAINED_OUTPUT}{OUTPUT_END} done{IM_END}"
    ids = torch.tensor([tokenizer(prompt + reply, add_special_tokens=False)["input_ids"]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss.item() < 0.05, loss.item()
    model.eval()
    return model, tokenizer


def test_sampling_params_are_range_checked():
    for bad in (dict(max_new_tokens=0), dict(temperature=-1), dict(temperature=float("nan")), dict(top_k=-3),
                dict(top_p=2.0), dict(top_p=0.0), dict(seed=-1)):
        field = next(iter(bad))
        with pytest.raises(ConfigError, match=field):
            SamplingParams(**bad)
    assert SamplingParams(temperature=0).greedy and not SamplingParams(temperature=0.7).greedy


def test_a_tool_call_pauses_generation_runs_the_tool_and_continues(tool_engine):
    model, tokenizer = tool_engine
    calls = []

    def shout(text: str) -> str:  # the echo tool: what it was called with, changed so we know it ran
        calls.append(text)
        return text.upper()

    engine = Engine(model, tokenizer, tools=[Tool("shout", PYTHON_START, PYTHON_END, shout)])
    out = engine.reply([USER], SamplingParams(max_new_tokens=40))[0]
    assert calls == ["abc"]
    assert out["tool_calls"] == [{"tool": "shout", "input": "abc", "output": "ABC", "ok": True}]
    assert out["stopped"], out  # after the tool's output the model went on and ended its turn
    assert out["reply"].endswith("done") and "ABC" not in out["reply"]  # the answer: the text after the output
    assert f"{OUTPUT_START}ABC{OUTPUT_END}" in out["text"] and TRAINED_OUTPUT not in out["text"]


def test_the_tool_output_is_forced_and_the_kv_cache_is_kept(tool_engine):
    """Every token goes through the model once (nothing is re-run after the pause), and the continuation equals
    plain generation from scratch on the same tokens."""
    import torch

    model, tokenizer = tool_engine
    engine = Engine(model, tokenizer, tools=[Tool("shout", PYTHON_START, PYTHON_END, str.upper)])
    prompt_ids = tokenizer(engine.render(USER), add_special_tokens=False)["input_ids"]
    fed = []
    hook = model.register_forward_pre_hook(lambda module, args, kwargs: fed.append(kwargs["input_ids"].shape[1]),
                                           with_kwargs=True)
    try:
        result = engine._generate_row(prompt_ids, SamplingParams(max_new_tokens=40))
    finally:
        hook.remove()
    new = result["ids"]
    vocab = tokenizer.get_vocab()
    forced = [vocab[OUTPUT_START]] + tokenizer("ABC", add_special_tokens=False)["input_ids"] + [vocab[OUTPUT_END]]
    end = new.index(vocab[PYTHON_END]) + 1
    assert new[end:end + len(forced)] == forced  # the output sits right after the call, as forced tokens
    assert sum(fed) == len(prompt_ids) + len(new) - 1  # the last token is never fed back
    assert fed.count(1 + len(forced)) == 1  # the continuation ran only the last call token and the output
    # from scratch on prompt + call + output, greedy decoding gives the same continuation
    head = prompt_ids + new[:end + len(forced)]
    with torch.no_grad():
        scratch = model.generate(torch.tensor([head]), max_new_tokens=len(new) - end - len(forced), do_sample=False,
                                 eos_token_id=engine.stop_ids, pad_token_id=engine.pad_id)[0, len(head):].tolist()
    assert scratch == new[end + len(forced):]


def test_a_failing_tool_gives_the_model_an_error_and_streaming_shows_the_reply(tool_engine):
    model, tokenizer = tool_engine

    def broken(text: str) -> str:
        raise ValueError("no such variable")

    engine = Engine(model, tokenizer, tools=[Tool("python", PYTHON_START, PYTHON_END, broken)])
    result: dict = {}
    pieces = list(engine.stream(USER, SamplingParams(max_new_tokens=40), result=result))
    assert result["tool_calls"][0]["output"] == "error: ValueError: no such variable"
    assert "".join(pieces).strip() == result["text"] and "no such variable" in result["text"]  # tool tokens kept
    assert result["reply"] == "done"


def test_without_tools_the_close_token_is_just_a_token(tool_engine):
    model, tokenizer = tool_engine
    out = Engine(model, tokenizer).reply([USER], SamplingParams(max_new_tokens=40))[0]
    assert out["tool_calls"] == [] and TRAINED_OUTPUT in out["text"]  # the memorised output, no tool ran
    assert out["tool_tokens"]  # the model wrote a call although no tool was registered


def test_a_tool_needs_real_protocol_tokens(tool_engine):
    model, tokenizer = tool_engine
    with pytest.raises(ConfigError, match="not a token"):
        Engine(model, tokenizer, tools=[Tool("bad", "<|calc_start|>", "<|calc_end|>", str.upper)])


def test_chat_session_drops_old_turns_to_fit_the_model_context(tiny_run):
    session = ChatSession(str(tiny_run), temperature=0, max_new_tokens=8)
    assert session.max_context_tokens == session.model.config.max_position_embeddings  # bounded by default
    for i in range(12):
        session.send(f"Tell me about the number {i} and all its friends, please.")
        assert session.engine.count_tokens(session.last_prompt) + 8 <= session.max_context_tokens


def test_corrupt_model_file_is_one_line(tiny_run, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_run / "pretrain", folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])  # truncated
    with pytest.raises(ConfigError, match="cannot load a model"):
        Engine.load(str(folder))
