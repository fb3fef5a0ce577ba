"""Tools the model calls mid-generation: a sandboxed Python interpreter and a full-text search index.

    from hf_pipeline import Engine
    from hf_pipeline.tools import make_tools
    engine = Engine.load("runs/tiny", tools=make_tools(index="runs/tiny/index"))
    engine.reply([[{"role": "user", "content": "What is 415 * 391?"}]])[0]
    # {"reply": "The answer is 162265.", "tool_calls": [{"tool": "python", "input": "print(415 * 391)",
    #   "output": "162265", "ok": True}], "text": "<|python_start|>print(415 * 391)<|python_end|>...", ...}

    python.py   PythonSandbox: a child process with resource limits, no network, no files outside its directory
    search.py   SearchIndex (SQLite FTS5), SearchTool, the ``index`` stage (``hf-pipeline index``)
    traces.py   tool-use training conversations and held-out tasks per family (sft's ``tool_traces``)

The protocol (tokens defined once in ``hf_pipeline.tokenizer``): the model writes ``<|python_start|>code
<|python_end|>`` or ``<|search_start|>query<|search_end|>``; the engine pauses, runs the tool and puts
``<|output_start|>output<|output_end|>`` into the context, then generation goes on (``hf_pipeline.engine``).
"""

from __future__ import annotations

from ..engine import Tool
from ..tokenizer import PYTHON_END, PYTHON_START, SEARCH_END, SEARCH_START


def make_tools(python: bool = True, index=None, search_k: int = 1, search_max_chars: int = 300,
               network: str = "require", **sandbox) -> list[Tool]:
    """The engine's tools: ``python`` (a ``PythonSandbox`` with ``sandbox`` limits) and, with ``index`` (a stage
    folder, ``.sqlite`` file or any ``SearchBackend``), ``search``. A tool left out answers every call with
    ``error: <tool> is not available here``, so that a model told "Tools: python, search." never makes up an
    output for it."""
    from .python import PythonSandbox
    from .search import SearchIndex, SearchTool

    tools = []
    if python:
        tools.append(Tool("python", PYTHON_START, PYTHON_END, PythonSandbox(network=network, **sandbox).run))
    else:  # a call still pauses generation and gets an answer, instead of a made-up output
        tools.append(Tool("python", PYTHON_START, PYTHON_END, _unavailable("python")))
    if index is not None:
        backend = index if hasattr(index, "search") else SearchIndex.open(index)
        tools.append(Tool("search", SEARCH_START, SEARCH_END, SearchTool(backend, search_k, search_max_chars)))
    else:
        tools.append(Tool("search", SEARCH_START, SEARCH_END, _unavailable("search")))
    return tools


def _unavailable(name: str):
    def run(_call: str) -> str:
        return f"error: {name} is not available here"

    return run
