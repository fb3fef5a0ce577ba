"""The terminal chat: ``hf-pipeline chat MODEL``, one user turn per line of input, replies streamed.

    hf-pipeline chat runs/tiny                                  # the run's latest model stage (RUN/sft...)
    hf-pipeline chat runs/tiny/sft/merged --system "Be brief." --temperature 0
    printf 'hi\\nwho made you?\\n' | hf-pipeline chat runs/tiny --temperature 0     # one user turn per line

With ``--tools python search --index RUN/index`` the model can call the sandboxed Python interpreter and the search
index mid-reply (a model trained with tool traces: sft's ``tool_traces``); each call and its output is shown on a
line of its own (``[python] print(415 * 391)`` / ``[output] 162265``) before the answer.

A thin UI over ``hf_pipeline.engine.ChatSession`` (history, streaming, the stop at ``<|im_end|>``, the history
trimmed to the model's context). A model folder written by the sft stage has a ``chat_config.json`` whose
``system_message`` is the default system message (``--system TEXT`` replaces it, ``--system ''`` drops it) and whose
``assistant_name`` labels the replies. ``/reset`` forgets the conversation, ``/exit`` (or the end of the input)
leaves; Ctrl-C stops the reply being written (the turn is dropped) and a second Ctrl-C leaves.
Nothing in the training stages imports this module.
"""

from __future__ import annotations

import sys

from .config import ArgumentParser, ConfigError
from .engine import ChatSession, SamplingParams
from .tokenizer import OUTPUT_END, OUTPUT_START, PYTHON_END, PYTHON_START, SEARCH_END, SEARCH_START

SHOWN = {PYTHON_START: "\n  [python] ", PYTHON_END: "\n", SEARCH_START: "\n  [search] ", SEARCH_END: "\n",
         OUTPUT_START: "  [output] ", OUTPUT_END: "\n"}


def show_tools(text: str) -> str:
    """Tool tokens as labelled lines (the terminal's view of a reply's calls and outputs)."""
    for token, label in SHOWN.items():
        text = text.replace(token, label)
    return text


def add_tool_args(parser) -> None:
    parser.add_argument("--tools", nargs="*", default=[], choices=["python", "search"],
                        help="Tools the model may call mid-reply (search needs --index).")
    parser.add_argument("--index", default=None, help="Search index: RUN/index or its index.sqlite.")
    parser.add_argument("--max_tool_calls", "--max-tool-calls", type=int, default=4, help="Tool calls per reply.")
    parser.add_argument("--sandbox_network", "--sandbox-network", default="require",
                        choices=["require", "best_effort"],
                        help="Without network isolation on this machine: refuse (require) or run without.")


def register_tools(engine, args) -> None:
    """Register the tools named on the command line with ``engine`` (search set up as the model was trained)."""
    if "search" in args.tools and not args.index:
        raise ConfigError("--tools search: needs --index (a RUN/index folder)")
    if args.max_tool_calls < 0:
        raise ConfigError(f"--max_tool_calls: must be >= 0, not {args.max_tool_calls}")
    if not args.tools:
        return
    from .tools import make_tools

    settings = engine.chat_config.get("tools") or {}
    for tool in make_tools(python="python" in args.tools, index=args.index if "search" in args.tools else None,
                           search_k=settings.get("search_k", 1),
                           search_max_chars=settings.get("search_max_chars", 300), network=args.sandbox_network):
        engine.register(tool)
    engine.max_tool_calls = args.max_tool_calls


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="hf-pipeline chat", description="Talk to a chat model: one user turn per line of input.",
        epilog="Commands: /reset forgets the conversation, /exit leaves (so does the end of the input).",
    )
    parser.add_argument("model", help="Run folder, model folder, adapter folder or Hub id.")
    parser.add_argument("--system", default=None,
                        help="System message (default: the model folder's chat_config.json; '' for none).")
    parser.add_argument("--temperature", type=float, default=0.7, help="0 for greedy decoding.")
    parser.add_argument("--top_k", "--top-k", type=int, default=50)
    parser.add_argument("--top_p", "--top-p", type=float, default=0.95)
    parser.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=256)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--show_prompt", "--show-prompt", action="store_true",
                        help="Print each rendered prompt (history included) to stderr.")
    add_tool_args(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, seed=args.seed)  # range-checked before the model loads
    session = ChatSession(args.model, system=args.system, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=args.seed)
    register_tools(session.engine, args)
    interactive = sys.stdin.isatty()
    print(f"chat with {args.model}" + (f" (system: {session.system!r})" if session.system else "")
          + "; /reset to start over, /exit to leave", file=sys.stderr)
    while True:
        if interactive:
            sys.stdout.write("you> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        if not line:  # end of input
            break
        text = line.strip()
        if not interactive and text:
            print(f"you> {text}")  # echo piped input so the transcript reads like a conversation
        if not text:
            continue
        if text == "/exit":
            break
        if text == "/reset":
            session.reset()
            print("(conversation reset)")
            continue
        sys.stdout.write(f"{session.assistant_name}> ")
        sys.stdout.flush()
        try:
            for piece in session.stream(text):
                sys.stdout.write(show_tools(piece))
                sys.stdout.flush()
        except KeyboardInterrupt:  # the generation thread has been stopped and joined; the turn is dropped
            sys.stdout.write(" [interrupted]")
        sys.stdout.write("\n")
        sys.stdout.flush()
        if args.show_prompt:
            print(f"[prompt] {session.last_prompt!r}", file=sys.stderr)
    return 0
