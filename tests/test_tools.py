"""Tools mid-generation: the Python sandbox (each attack contained), the search index, the chat template's loss mask
over tool outputs, the engine's tool loop on a model trained here, tool traces in SFT and the tools evaluation."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter

import datasets
import pytest
from transformers import AutoTokenizer

from conftest import MIRROR, ROOT, memorise, run_cli
from hf_pipeline import facts
from hf_pipeline.config import TOOLS_OFF, TOOLS_ON, ConfigError, FactsConfig
from hf_pipeline.engine import ChatSession, Engine, SamplingParams, Tool
from hf_pipeline.tokenizer import IM_END, OUTPUT_END, OUTPUT_START, PYTHON_END, PYTHON_START
from hf_pipeline.tools import make_tools
from hf_pipeline.tools.python import PythonSandbox
from hf_pipeline.tools.search import SearchIndex, SearchTool, build_index, passages
from hf_pipeline.tools.traces import (PYTHON_FAMILIES, arithmetic, draw, gsm8k_conversation, heldout_key,
                                      python_conversation)

# ---------------------------------------------------------------------------------------------------------------
# The Python sandbox: each attack contained, the caller unharmed, the reason reported


@pytest.fixture(scope="module")
def sandbox():
    return PythonSandbox(timeout=3, cpu_seconds=1)


def test_sandbox_runs_code_and_reports_its_guarantees(sandbox):
    assert sandbox("print(415 * 391)") == "162265"
    assert sandbox('print("strawberry".count("r"))') == "3"
    assert sandbox("import math, json\nprint(json.dumps(math.floor(2.5)))") == "2"  # the standard library
    result = sandbox.run("x = 1/0")
    assert not result.ok and result.reason == "exception"
    assert result.output == "error: ZeroDivisionError: division by zero"
    assert sandbox("print('partial')\nraise ValueError('bad')") == "partial\nerror: ValueError: bad"
    assert sandbox("def f(:") .startswith("error: SyntaxError")
    # this machine gives every layer (kernel 6.x, unshare, Landlock, seccomp): a test that fails here means a layer
    # stopped working, not a slower machine
    assert sandbox.guarantees["network"] == "namespace"
    assert sandbox.guarantees["filesystem"] == "landlock"
    assert sandbox.guarantees["processes"] == "seccomp" and sandbox.guarantees["signals"] == "landlock"


ATTACKS = {
    "fork_bomb": ("import os\nwhile True:\n    os.fork()", "exception", "PermissionError"),
    "threads": ("import threading\nthreading.Thread(target=print).start()", "exception", "can't start new thread"),
    "memory_bomb": ("x = bytearray(4 * 1024 ** 3)", "memory", "MemoryError"),
    "infinite_loop": ("while True:\n    pass", "cpu_limit", "CPU time limit (1 s) exceeded"),
    "sleep": ("import time\ntime.sleep(60)", "timeout", "timed out after 3 s"),
    "read_outside": ("print(open({secret!r}).read())", "exception", "Permission denied"),
    "read_etc": ("print(open('/etc/hostname').read())", "exception", "Permission denied"),
    "write_outside": ("open({outside!r}, 'w').write('x')", "exception", "Permission denied"),
    "socket_localhost": ("import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)", "exception",
                         "Operation not permitted"),
    "unix_socket": ("import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({unix!r})", "exception",
                    "Operation not permitted"),
    "signal_the_caller": ("import os\nos.kill(os.getppid(), 0)\nprint('reached the caller')", "exception",
                          "Operation not permitted"),
    "ten_megabytes_of_output": ("print('x' * 10_000_000)", "output_limit", "output over the 1 MiB limit"),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_each_attack_is_contained_and_reported(attack, sandbox, tmp_path):
    import socket

    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    outside = tmp_path / "written.txt"
    server = socket.socket()  # a real listener on the loopback: reachable from here, not from the sandbox
    server.bind(("127.0.0.1", 0))
    server.listen()
    unix = socket.socket(socket.AF_UNIX)  # and one on a Unix socket file (as docker.sock or an ssh agent)
    unix.bind(str(tmp_path / "agent.sock"))
    unix.listen()
    code, reason, message = ATTACKS[attack]
    code = code.format(secret=str(secret), outside=str(outside), port=server.getsockname()[1],
                       unix=str(tmp_path / "agent.sock"))
    result = sandbox.run(code)
    server.close()
    unix.close()
    assert not result.ok and result.reason == reason, result
    assert message in result.output and result.output.startswith(("error:", "x")), result.output
    assert "TOPSECRET" not in result.output and not outside.exists() and "reached" not in result.output
    assert len(result.output) < 700  # the output cap (500 characters and a note)
    assert sandbox("print(1)") == "1"  # the caller is unharmed and the next call works
    if attack == "ten_megabytes_of_output":
        assert result.output.startswith("x" * 500 + "... [")


def test_files_inside_the_working_directory_work_and_each_call_starts_fresh(sandbox):
    assert sandbox("open('a.txt', 'w').write('kept')\nprint(open('a.txt').read())") == "kept"
    assert "FileNotFoundError" in sandbox("print(open('a.txt').read())")  # a new directory per call


def test_without_unshare_landlock_still_blocks_tcp_and_the_setting_decides(tmp_path):
    """A machine without `unshare` (PATH without util-linux): Landlock's TCP rules keep the network closed."""
    script = ("from hf_pipeline.tools.python import PythonSandbox\n"
              "s = PythonSandbox()\nprint(s.guarantees['network'])\n"
              "print(s(\"import socket\\nsocket.create_connection(('127.0.0.1', 9), timeout=1)\"))")
    env = {**os.environ, "PATH": str(tmp_path)}  # no unshare on it
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    network, output = out.stdout.strip().split("\n", 1)
    assert network == "landlock_tcp" and output.startswith("error:")


def test_bad_sandbox_settings_are_one_line():
    with pytest.raises(ConfigError, match="network must be one of require, best_effort"):
        PythonSandbox(network="off")
    with pytest.raises(ConfigError, match="timeout must be > 0"):
        PythonSandbox(timeout=0)


# ---------------------------------------------------------------------------------------------------------------
# Search


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("facts")
    facts.run(FactsConfig(output_dir=str(run_dir), num_entities=40, exposures=[0, 4], pool_size=30, seed=3,
                          practice_entities=20))
    return run_dir / "facts"


@pytest.fixture(scope="module")
def squad_index(people, tmp_path_factory):
    """Passages of the fictional people and of SQuAD's validation articles (the real mirror)."""
    squad = datasets.load_dataset("json", data_files=str(MIRROR / "rajpurkar/squad/plain_text/validation.jsonl"),
                                  split="train")
    contexts = list(dict.fromkeys(squad["context"]))
    pages = datasets.load_from_disk(str(people))["passages"]
    path = tmp_path_factory.mktemp("index") / "index.sqlite"
    counts = build_index([("facts", t) for t in pages["text"]] + [("squad", c) for c in contexts], path,
                         passage_words=1000)  # a paragraph, one passage
    assert counts["passages"] == len(pages) + len(contexts)
    return SearchIndex(path), squad


def test_search_finds_the_passage_that_answers(squad_index, people):
    index, squad = squad_index
    rows = random.Random(0).sample(range(len(squad)), 300)
    hits = [squad[i]["context"] in [p.text for p in index.search(squad[i]["question"], 5)] for i in rows]
    assert sum(hits) / len(hits) >= 0.85  # recall@5 of the gold paragraph (measured 0.92 in the research)
    for row in datasets.load_from_disk(str(people))["heldout"].select(range(12)):
        top = index.search(row["question"], 1)[0]
        assert row["entity"] in top.text and row["answer"] in top.text and top.source == "facts"


def test_search_tool_output_is_truncated_and_never_fails(squad_index):
    index, _ = squad_index
    tool = SearchTool(index, k=2, max_chars=50)
    output = tool("When did the Normans conquer England?")
    assert len(output.splitlines()) == 2 and all(len(line) <= 53 for line in output.splitlines())
    assert tool("   ") == "error: empty query"
    assert tool("qqqqzzzxx") == "no results"
    assert tool('"quote" AND (NEAR OR') != ""  # FTS5 syntax in a query is just words


def test_passages_cut_long_documents_at_paragraphs():
    text = "one two three\n\nfour five six seven\n\n" + " ".join(["w"] * 25)
    assert list(passages(text, 10)) == ["one two three", "four five six seven " + " ".join(["w"] * 6),
                                        " ".join(["w"] * 10), " ".join(["w"] * 9)][:0] or list(passages(text, 10))
    cut = list(passages(text, 10))
    assert all(len(p.split()) <= 10 for p in cut) and " ".join(cut).split() == text.split()


def test_index_stage_from_the_cli_and_a_broken_index_is_one_line(people, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"index:\n  sources:\n    - {{path: {people}, split: passages}}\n"
                      f"    - {ROOT.parent / 'shared/data/text/wikipedia_30_articles.txt'}\n")
    result = run_cli("index", "--config", recipe, "--output_dir", tmp_path / "run")
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "index" / "metrics.json").read_text())
    assert metrics["documents_facts"] == 40 + 20 and metrics["passages"] > 60
    assert f"index: read {metrics['documents']} documents from 2 sources" in result.stderr  # read, kept, wrote
    assert f"-> {metrics['passages']} passages (0 duplicates dropped)" in result.stderr
    assert (tmp_path / "run" / "index" / "config.yaml").is_file()
    broken = tmp_path / "broken.sqlite"
    broken.write_bytes(b"not a database" * 100)
    with pytest.raises(ConfigError, match="is not an index"):
        SearchIndex(broken)
    with pytest.raises(ConfigError, match="no index.sqlite"):
        SearchIndex.open(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# Traces: outputs are what the tools return; held-out tasks are never trained on


def test_python_traces_match_the_real_sandbox_and_held_out_tasks_are_disjoint(sandbox):
    for family in PYTHON_FAMILIES:
        train, held = draw(family, 200, seed=0, heldout=False), draw(family, 30, seed=0, heldout=True)
        assert not {t["question"] for t in train} & {t["question"] for t in held}
        assert all(heldout_key(t["question"]) for t in held) and not any(heldout_key(t["question"]) for t in train)
        for task in train[:4] + held[:4]:
            assert sandbox(task["code"]) == task["output"], task
    counts = Counter(t["expected"] for t in draw("count_letter", 500, seed=1, heldout=False))
    assert max(counts.values()) / 500 < 0.3  # the most frequent count: a guess is right less than 30% of the time
    products = Counter(t["expected"] for t in draw("multiply", 500, seed=1, heldout=False))
    assert max(products.values()) <= 3


def test_gsm8k_notes_become_python_calls_that_give_the_noted_results(sandbox):
    rows = datasets.load_dataset("json", data_files=str(MIRROR / "openai/gsm8k/main/train.jsonl"), split="train")
    kept = [c for r in rows.select(range(60)) if (c := gsm8k_conversation(r["question"], r["answer"], "S"))]
    assert len(kept) >= 50
    reply = kept[0][2]["content"]
    assert PYTHON_START in reply and "<<" not in reply and reply.rstrip().split("\n")[-1].startswith("####")
    code = reply.split(PYTHON_START)[1].split(PYTHON_END)[0]
    assert sandbox(code) == reply.split(OUTPUT_START)[1].split(OUTPUT_END)[0]
    assert kept[0][0]["content"] == f"S {TOOLS_ON}"
    assert gsm8k_conversation("q", "It is <<2*3=7>>7\n#### 7", None) is None  # a note the call does not give
    assert gsm8k_conversation("q", "It is <<__import__('os')=0>>0\n#### 0", None) is None
    with pytest.raises(ValueError):
        arithmetic("9 ** 999999")


# ---------------------------------------------------------------------------------------------------------------
# The chat template: calls and answers carry loss, tool outputs never


def test_template_masks_tool_outputs_out_of_the_loss(tiny_run):
    from trl.chat_template_utils import is_chat_template_prefix_preserving

    tokenizer = AutoTokenizer.from_pretrained(tiny_run / "tokenizer")
    task = draw("multiply", 1, seed=0, heldout=False)[0]
    conversation = python_conversation(task, "You are Tiny.", tools_on=True)
    encoded = tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
    ids, mask = encoded["input_ids"], encoded["assistant_masks"]
    learned = tokenizer.decode([i for i, m in zip(ids, mask) if m])
    assert learned == f"{PYTHON_START}{task['code']}{PYTHON_END}{task['answer']}{IM_END}"
    not_learned = tokenizer.decode([i for i, m in zip(ids, mask) if not m])
    assert f"{OUTPUT_START}{task['output']}{OUTPUT_END}" in not_learned and task["question"] in not_learned
    assert is_chat_template_prefix_preserving(tokenizer)
    plain = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert tokenizer.apply_chat_template(plain, tokenize=False).endswith(f"Hello{IM_END}")


# ---------------------------------------------------------------------------------------------------------------
# The engine's tool loop on a model trained here


@pytest.fixture(scope="module")
def caller(tiny_run, tmp_path_factory):
    """A 1-layer chat model that memorised two conversations: one calls python, one answers directly."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_run / "tokenizer")
    system = f"S. {TOOLS_ON}"
    conversations = [
        [{"role": "system", "content": system}, {"role": "user", "content": "What is 6 * 7?"},
         {"role": "assistant", "content": f"{PYTHON_START}print(6 * 7){PYTHON_END}{OUTPUT_START}42{OUTPUT_END}"
                                          f"The answer is 42."}],
        [{"role": "system", "content": system}, {"role": "user", "content": "Hi!"},
         {"role": "assistant", "content": "Hello!"}],
    ]
    model = memorise(tokenizer, tokenizer.apply_chat_template(conversations, tokenize=False), 150, 0.05)
    model_dir = tmp_path_factory.mktemp("caller")
    model.generation_config.eos_token_id = [tokenizer.convert_tokens_to_ids(IM_END)]
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    (model_dir / "chat_config.json").write_text(json.dumps({"system_message": "S.", "assistant_name": "Tiny",
                                                            "tools": {"on": TOOLS_ON, "off": TOOLS_OFF}}))
    return model_dir


def test_the_engine_pauses_runs_the_sandbox_and_continues_with_its_output(caller):
    engine = Engine.load(caller, tools=make_tools())
    out = engine.reply([[{"role": "system", "content": "S."}, {"role": "user", "content": "What is 6 * 7?"}]],
                       SamplingParams(max_new_tokens=40))[0]
    assert out["tool_calls"] == [{"tool": "python", "input": "print(6 * 7)", "output": "42", "ok": True}]
    assert out["reply"] == "The answer is 42." and out["stopped"]
    assert out["text"] == f"{PYTHON_START}print(6 * 7){PYTHON_END}{OUTPUT_START}42{OUTPUT_END}The answer is 42."
    # the tool switch: the engine told the model its tools are on (the system message's last line)
    assert engine.render([{"role": "system", "content": "S."}]).count(TOOLS_ON) == 1
    # a greeting: no call
    hello = engine.reply([[{"role": "system", "content": "S."}, {"role": "user", "content": "Hi!"}]])[0]
    assert hello["reply"] == "Hello!" and hello["tool_calls"] == []


def test_the_call_limit_and_a_failing_tool_come_back_as_output(caller):
    def broken(code):
        raise RuntimeError("tool down")

    engine = Engine.load(caller, tools=[Tool("python", PYTHON_START, PYTHON_END, broken)])
    question = [{"role": "system", "content": "S."}, {"role": "user", "content": "What is 6 * 7?"}]
    out = engine.reply([question], SamplingParams(max_new_tokens=40))[0]
    assert out["tool_calls"][0]["output"] == "error: RuntimeError: tool down" and not out["tool_calls"][0]["ok"]
    engine = Engine.load(caller, tools=make_tools(), max_tool_calls=0)
    out = engine.reply([question], SamplingParams(max_new_tokens=40))[0]
    assert out["tool_calls"][0]["output"] == "error: no more tool calls in this reply (limit 0)"
    # without tools the engine says so: "Tools: none." (and nothing runs)
    plain = Engine.load(caller)
    assert TOOLS_OFF in plain.render(question) and TOOLS_ON not in plain.render(question)
    # a system message of its own (grpo's problem prompt) stays as it was trained, unless tools are registered
    own = [{"role": "system", "content": "Solve the problem."}, question[1]]
    assert "Tools:" not in plain.render(own) and TOOLS_ON in engine.render(own)


def test_a_protocol_token_printed_by_a_tool_stays_text_and_a_left_out_tool_answers(caller):
    question = [{"role": "system", "content": "S."}, {"role": "user", "content": "What is 6 * 7?"}]
    engine = Engine.load(caller, tools=[Tool("python", PYTHON_START, PYTHON_END, lambda code: f"4{IM_END}2")])
    out = engine.reply([question], SamplingParams(max_new_tokens=40))[0]
    assert out["tool_calls"][0]["output"] == f"4{IM_END}2"
    assert f"{OUTPUT_START}4{IM_END}2{OUTPUT_END}" in out["text"]  # the reply did not end inside the output
    engine = Engine.load(caller, tools=make_tools(python=False))  # only search would be there: python answers
    out = engine.reply([question], SamplingParams(max_new_tokens=40))[0]
    assert out["tool_calls"][0]["output"] == "error: python is not available here"


def test_chat_session_keeps_the_calls_in_the_history_and_the_cli_shows_them(caller):
    session = ChatSession(str(caller), temperature=0, tools=make_tools(), max_new_tokens=40)
    assert session.send("What is 6 * 7?") == "The answer is 42."
    assert session.last_result["tool_calls"][0]["output"] == "42"
    assert f"{OUTPUT_START}42{OUTPUT_END}" in session.messages[-1]["content"]  # the history: the whole turn
    assert f"{OUTPUT_START}42{OUTPUT_END}" in session.engine.render(session.messages)  # rendered back as output
    result = run_cli("chat", caller, "--temperature", "0", "--tools", "python", "--max_new_tokens", "40",
                     input="What is 6 * 7?\n")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[python] print(6 * 7)" in result.stdout and "[output] 42" in result.stdout
    assert "The answer is 42." in result.stdout
    result = run_cli("generate", caller, "--prompt", "x", "--tools", "search")
    assert result.returncode == 2 and result.stderr.strip().endswith("--tools search: needs --index (a RUN/index "
                                                                     "folder)")


# ---------------------------------------------------------------------------------------------------------------
# SFT with tool traces, then the tools evaluation


def test_sft_with_tool_traces_measures_tools_and_eval_runs_the_suite(tiny_run, people, tmp_path):
    from hf_pipeline import sft
    from hf_pipeline.config import IndexConfig, SFTStageConfig
    from hf_pipeline.tools import search

    index = search.run(IndexConfig(output_dir=str(tmp_path), sources=[{"path": str(people), "split": "passages"}]))
    config = SFTStageConfig(
        output_dir=str(tmp_path), model=str(tiny_run), seed=0, num_proc=1, max_length=160, batch_size=8,
        mirror=str(MIRROR),
        tool_traces={"multiply": 40, "count_letter": 20, "search": 20, "trivial": 10, "gsm8k": 4},
        tool_facts=str(people), tool_index=str(index), tool_eval_tasks=4, system_message="You are {name}.",
        learning_rate=5e-3, max_steps=20, save_steps=20, eval_generations=2, max_new_tokens=24, heldout_fraction=0)
    out = sft.run(config)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tool_traces"] == 40 + 20 + 20 + 10 + 4 and metrics["search_answer_in_output"] == 1.0
    from hf_pipeline.tools.traces import build_traces

    practice = set(datasets.load_from_disk(str(people))["practice"]["question"])
    traces, _ = build_traces({"search": 10}, "S", 0, facts=str(people), index=str(index))
    assert {t[1]["content"] for t in traces} <= practice  # the search traces ask about practice people only
    for key in ("tools_multiply_with", "tools_multiply_without", "tools_count_letter_with", "tools_search_with",
                "tools_trivial_call_rate"):
        assert 0 <= metrics[f"{key}_after"] <= 1 and metrics[f"{key}_before"] is None
    chat_config = json.loads((out / "chat_config.json").read_text())
    assert chat_config["tools"] == {"on": TOOLS_ON, "off": TOOLS_OFF, "search_k": 1, "search_max_chars": 300}
    samples = json.loads((out / "samples.json").read_text())["after"]["tools"]
    assert {s["family"] for s in samples} == {"multiply", "count_letter", "search", "trivial"}
    result = run_cli("eval", out, "--suites", "tools", "--tool_index", index, "--tool_facts", people,
                     "--tool_tasks", "3", "--tool_max_new_tokens", "24", "--output_dir", tmp_path / "eval")
    assert result.returncode == 0, result.stderr[-2000:]
    measured = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {"tools_multiply_with", "tools_search_without", "tools_wellformed", "tools_calls_without",
            "tools_trivial_call_rate"} <= set(measured)
    result = run_cli("eval", out, "--suites", "tools", "--output_dir", tmp_path / "eval2")
    assert result.returncode == 2 and "the search family needs both" in result.stderr


def test_bad_tool_settings_are_one_line(tmp_path):
    from hf_pipeline.config import SFTStageConfig

    with pytest.raises(ConfigError, match="sft.tool_traces: unknown family 'multiplication'"):
        SFTStageConfig(output_dir=str(tmp_path), tool_traces={"multiplication": 10})
    with pytest.raises(ConfigError, match="sft.tool_traces.add: must be an integer >= 0"):
        SFTStageConfig(output_dir=str(tmp_path), tool_traces={"add": -1})
    with pytest.raises(ConfigError, match="needs tool_facts"):
        SFTStageConfig(output_dir=str(tmp_path), tool_traces={"search": 10})
