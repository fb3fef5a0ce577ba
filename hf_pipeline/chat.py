"""Chat with a model, in the terminal or from Python: multi-turn history, streaming, and a stop at ``<|im_end|>``.

    hf-pipeline chat runs/tiny                                  # the run's latest model stage (RUN/sft...)
    hf-pipeline chat runs/tiny/sft/merged --system "Be brief." --temperature 0
    printf 'hi\\nwho made you?\\n' | hf-pipeline chat runs/tiny --temperature 0     # one user turn per line

    from hf_pipeline.chat import ChatSession, chat
    session = ChatSession("runs/tiny", temperature=0)
    session.send("Hi!")
    session.send("And who made you?")        # the second turn sees the first (session.messages)
    for piece in session.stream("Tell me a joke."):
        print(piece, end="")
    chat("runs/tiny", "Who are you?")        # one turn, nothing kept

A model reference is what ``refs.resolve_model`` accepts: a model folder, a run folder (its latest model stage), a
folder holding a peft adapter (``adapter_config.json``, loaded with ``AutoPeftModelForCausalLM``; its base model comes
from the adapter's ``base_model_name_or_path``) or a Hub id with a chat template. The conversation is rendered by the
tokenizer's chat template; generation stops at the first stop token: ``<|im_end|>`` when the vocabulary has it, the
tokenizer's end-of-sequence token, and the ones in the model's generation config.

A model folder written by the sft stage has a ``chat_config.json`` whose ``system_message`` is the default system
message (``--system TEXT`` replaces it, ``--system ''`` drops it) and whose ``assistant_name`` labels the replies.
In the terminal, ``/reset`` forgets the conversation and ``/exit`` (or the end of the input) leaves.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from pathlib import Path
from typing import Iterator

from .tokenizer import IM_END

logger = logging.getLogger("hf_pipeline")

CHAT_CONFIG = "chat_config.json"  # written by the sft stage beside the model: system_message, assistant_name...


def load_chat_model(ref: str, dtype: str = "auto"):
    """``(model, tokenizer, chat_config)`` from a model folder, run folder, adapter folder or Hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .config import ConfigError
    from .refs import resolve_model

    path = resolve_model(ref)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        if (Path(path) / "adapter_config.json").is_file():
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as e:
        raise ConfigError(f"{ref}: cannot load a model ({str(e).splitlines()[0][:200]})") from None
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"{ref}: the tokenizer has no chat template (a base model? use hf-pipeline generate)")
    config_file = Path(path) / CHAT_CONFIG
    chat_config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    model.eval()
    return model, tokenizer, chat_config


def stop_token_ids(model, tokenizer) -> list[int]:
    """The ids that end an assistant turn: ``<|im_end|>`` (if in the vocabulary), EOS, the generation config's."""
    ids = []
    im_end = tokenizer.convert_tokens_to_ids(IM_END) if IM_END in tokenizer.get_vocab() else None
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for i in [im_end, tokenizer.eos_token_id, *(configured if isinstance(configured, list) else [configured])]:
        if i is not None and i not in ids:
            ids.append(i)
    return ids


def _generation_kwargs(model, tokenizer, max_new_tokens, temperature, top_k, top_p) -> dict:
    sampling = temperature > 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return dict(
        max_new_tokens=max_new_tokens, do_sample=sampling, temperature=temperature if sampling else None,
        top_k=top_k if sampling else None, top_p=top_p if sampling else None,
        eos_token_id=stop_token_ids(model, tokenizer), pad_token_id=pad,
    )


def render(tokenizer, messages: list[dict]) -> str:
    """The prompt for the assistant's next turn."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def generate_replies(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int = 128,
                     temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                     batch_size: int = 16, seed: int | None = None) -> list[dict]:
    """The assistant's next turn after each conversation, in left-padded batches (greedy by default).

    Returns one ``{"reply", "stopped", "tokens"}`` per conversation: ``stopped`` is whether the model emitted
    ``<|im_end|>`` (or the model's stop token) within ``max_new_tokens``.
    """
    import torch
    from transformers import set_seed

    if seed is not None:
        set_seed(seed)
    kwargs = _generation_kwargs(model, tokenizer, max_new_tokens, temperature, top_k, top_p)
    # a chat model's turn ends with <|im_end|>; ending with <|endoftext|> instead is a base model's habit, not a stop
    has_im_end = IM_END in tokenizer.get_vocab()
    stops = {tokenizer.convert_tokens_to_ids(IM_END)} if has_im_end else set(kwargs["eos_token_id"])
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    out = []
    try:
        for start in range(0, len(conversations), batch_size):
            prompts = [render(tokenizer, c) for c in conversations[start : start + batch_size]]
            inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            with torch.no_grad():
                ids = model.generate(**inputs, **kwargs)[:, inputs["input_ids"].shape[1] :].tolist()
            for row in ids:
                end = next((i for i, t in enumerate(row) if t in kwargs["eos_token_id"]), None)
                out.append({
                    "reply": tokenizer.decode(row[:end], skip_special_tokens=True).strip(),
                    "stopped": end is not None and row[end] in stops,
                    "tokens": len(row) if end is None else end,
                })
    finally:
        tokenizer.padding_side = side
    return out


class ChatSession:
    """A conversation with a model: ``send`` (or ``stream``) a user turn, get the reply; history is kept.

    ``model``: a reference (str) or a loaded model (then pass ``tokenizer``). ``system``: the system message; None
    takes the model folder's default (chat_config.json), "" none. ``temperature`` 0 is greedy decoding.
    ``max_context_tokens``: drop the oldest turns when the prompt would be longer (None: keep everything).
    """

    def __init__(self, model, tokenizer=None, system: str | None = None, temperature: float = 0.7,
                 top_k: int | None = 50, top_p: float | None = 0.95, max_new_tokens: int = 256,
                 seed: int | None = None, max_context_tokens: int | None = None):
        chat_config = {}
        if isinstance(model, (str, Path)):
            model, tokenizer, chat_config = load_chat_model(str(model))
        elif tokenizer is None:
            raise ValueError("ChatSession: pass the tokenizer with a loaded model")
        self.model, self.tokenizer = model, tokenizer
        self.system = chat_config.get("system_message") if system is None else (system or None)
        self.assistant_name = chat_config.get("assistant_name") or "assistant"
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.max_new_tokens, self.max_context_tokens = max_new_tokens, max_context_tokens
        self.messages: list[dict] = []
        self.last_prompt: str | None = None  # the rendered prompt of the last turn, history included
        if seed is not None:
            from transformers import set_seed

            set_seed(seed)
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (the system message stays)."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def _prompt(self) -> str:
        prompt = render(self.tokenizer, self.messages)
        while self.max_context_tokens and self._n_tokens(prompt) + self.max_new_tokens > self.max_context_tokens:
            first = 1 if self.messages[0]["role"] == "system" else 0
            if len(self.messages) - first <= 1:  # only the new user turn is left
                break
            del self.messages[first : first + 2]  # the oldest user turn and its reply
            prompt = render(self.tokenizer, self.messages)
        return prompt

    def _n_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def stream(self, text: str) -> Iterator[str]:
        """Send a user turn; yield the reply's text as it is generated. The full reply joins the history."""
        import torch
        from transformers import TextIteratorStreamer

        self.messages.append({"role": "user", "content": text})
        self.last_prompt = self._prompt()
        inputs = self.tokenizer(self.last_prompt, return_tensors="pt", add_special_tokens=False).to(self.model.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = _generation_kwargs(self.model, self.tokenizer, self.max_new_tokens, self.temperature, self.top_k,
                                    self.top_p)
        result = {}

        def work():
            try:
                with torch.no_grad():
                    result["ids"] = self.model.generate(**inputs, **kwargs, streamer=streamer)
            except BaseException as e:  # re-raised in the caller's thread
                result["error"] = e
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        yield from streamer
        thread.join()
        if "error" in result:
            self.messages.pop()
            raise result["error"]
        new = result["ids"][0, inputs["input_ids"].shape[1] :].tolist()
        end = next((i for i, t in enumerate(new) if t in kwargs["eos_token_id"]), len(new))
        self.messages.append({"role": "assistant",
                              "content": self.tokenizer.decode(new[:end], skip_special_tokens=True).strip()})

    def send(self, text: str) -> str:
        """Send a user turn and return the assistant's reply."""
        for _ in self.stream(text):
            pass
        return self.messages[-1]["content"]


def chat(model, message: str, tokenizer=None, system: str | None = None, **kwargs) -> str:
    """One user turn, one reply (no history kept); ``kwargs`` as for ``ChatSession``."""
    return ChatSession(model, tokenizer, system=system, **kwargs).send(message)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
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
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    session = ChatSession(args.model, system=args.system, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=args.seed)
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
        for piece in session.stream(text):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        if args.show_prompt:
            print(f"[prompt] {session.last_prompt!r}", file=sys.stderr)
    return 0
