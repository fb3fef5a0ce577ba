"""Inference: one engine for every model, every caller, and the hook the tools use.

    from hf_pipeline import Engine, SamplingParams
    engine = Engine.load("runs/tiny")                        # run folder, stage folder, model or adapter folder, Hub id
    engine.complete("ROMEO:", SamplingParams(max_new_tokens=40, temperature=0.8, seed=1))   # a base model's text
    engine.reply([[{"role": "user", "content": "Hi"}]])      # the assistant's next turn, for a batch of conversations
    for piece in engine.stream([{"role": "user", "content": "Hi"}]):   # one reply, as it is generated
        print(piece, end="")

    session = ChatSession("runs/tiny", temperature=0)        # a conversation: history kept, trimmed to the context
    session.send("Hi!")

Everything that generates goes through here: ``hf-pipeline generate`` and ``chat``, every stage's evaluation
(``hf_pipeline.evals``), the recipes' demos and the benchmarks. It is a thin layer over ``model.generate``:

- **Loading** (``Engine.load``): any model reference ``refs.resolve_model`` accepts; a peft adapter folder loads with
  ``AutoPeftModelForCausalLM``; ``chat_config.json`` beside the model (written by the sft stage) gives the default
  system message and the assistant's name. A missing, truncated or corrupt model is a ``ConfigError`` (one line).
- **Sampling** (``SamplingParams``): temperature (0 is greedy), top-k, top-p, a seed, a token budget; every value is
  range-checked.
- **Stopping**: a chat turn ends at ``<|im_end|>`` (and the tokenizer's and generation config's end tokens); a reply
  is ``stopped`` only when it ends with the chat stop token.
- **Tools**: ``Engine(..., tools=[Tool(name, start, end, run)])``. When a row produces a registered tool's ``end``
  token, generation pauses; the text since the tool's ``start`` token is the call, ``run(call)`` turns it into
  output text, which is appended as ``<|output_start|> output <|output_end|>`` (forced tokens, never sampled; a
  protocol token's text inside the output stays text), and
  generation continues from there with the KV cache kept (only the new tokens are run through the model). A tool
  that raises gives ``error: <message>`` as its output. Rows with tools generate one at a time; without tools,
  ``reply`` batches with left padding.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .config import TOOLS_OFF, TOOLS_ON, ConfigError
from .tokenizer import IM_END, OUTPUT_END, OUTPUT_START, TOOL_TOKENS

logger = logging.getLogger("hf_pipeline")

CHAT_CONFIG = "chat_config.json"  # written by the sft stage beside the model: system_message, assistant_name...

Conversation = list[dict]


@dataclass
class SamplingParams:
    """How to sample: ``temperature`` 0 is greedy decoding; ``top_k`` 0/None and ``top_p`` 1/None switch those
    filters off; ``seed`` makes samples reproducible; ``max_new_tokens`` bounds the reply (tool outputs included)."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self):
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens: must be an integer >= 1, not {self.max_new_tokens!r}")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature >= 0):
            raise ConfigError(f"temperature: must be a finite number >= 0 (0: greedy), not {self.temperature!r}")
        if self.top_k is not None and self.top_k < 0:
            raise ConfigError(f"top_k: must be >= 0 (0: off), not {self.top_k}")
        if self.top_p is not None and not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ConfigError(f"top_p: must be in (0, 1] (1: off), not {self.top_p!r}")
        if self.seed is not None and self.seed < 0:
            raise ConfigError(f"seed: must be >= 0, not {self.seed}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generate_kwargs(self) -> dict:
        """The ``model.generate`` arguments (sampling filters only when sampling)."""
        sampling = not self.greedy
        return dict(max_new_tokens=self.max_new_tokens, do_sample=sampling,
                    temperature=self.temperature if sampling else None,
                    top_k=self.top_k if sampling else None, top_p=self.top_p if sampling else None)


@dataclass(frozen=True)
class Tool:
    """A tool the model calls mid-generation: ``start`` and ``end`` are special tokens around the call's text,
    ``run`` turns that text into the output the model reads next: a string, or an object with ``output`` and ``ok``
    (``tools.python.SandboxResult``). A string output is ``ok`` unless it starts with ``error:``."""

    name: str
    start: str
    end: str
    run: Callable[[str], str]


def load_model(ref: str, dtype: str = "auto"):
    """``(model, tokenizer, path)`` from any model reference; a peft adapter folder loads onto its base model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .refs import resolve_model

    path = resolve_model(ref)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        if (Path(path) / "adapter_config.json").is_file():
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except Exception as e:  # OSError (missing files), SafetensorError (truncated), ValueError (bad config)...
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{ref}: cannot load a model ({first})") from None
    model.eval()
    return model, tokenizer, path


class Engine:
    """A loaded model and tokenizer, and every way the pipeline generates with them."""

    def __init__(self, model, tokenizer, chat_config: dict | None = None, tools: Sequence[Tool] = (),
                 max_tool_calls: int = 4):
        self.model, self.tokenizer = model, tokenizer
        self.chat_config = dict(chat_config or {})
        self.on_tool_call = None  # called with each tool call's {"tool", "input", "output", "ok"} as it finishes
        self.tools: dict[int, Tool] = {}  # by the id of the token that closes a call
        if max_tool_calls < 0:
            raise ConfigError(f"max_tool_calls: must be >= 0, not {max_tool_calls}")
        self.max_tool_calls = max_tool_calls
        for tool in tools:
            self.register(tool)

    @classmethod
    def load(cls, ref: str, dtype: str = "auto", tools: Sequence[Tool] = (), chat: bool = False,
             max_tool_calls: int = 4) -> "Engine":
        """Load any model reference; ``chat``: fail with one line if the tokenizer has no chat template."""
        model, tokenizer, path = load_model(str(ref), dtype)
        if chat and not getattr(tokenizer, "chat_template", None):
            raise ConfigError(f"{ref}: the tokenizer has no chat template (a base model? use hf-pipeline generate)")
        config_file = Path(path) / CHAT_CONFIG
        chat_config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        engine = cls(model, tokenizer, chat_config, tools, max_tool_calls)
        engine.path = path
        return engine

    # --- the protocol ---------------------------------------------------------------------------------------------

    def register(self, tool: Tool) -> None:
        """Add a tool; its start and end must be single tokens of the vocabulary (the pipeline's tool tokens)."""
        vocab = self.tokenizer.get_vocab()
        for token in (tool.start, tool.end, OUTPUT_START, OUTPUT_END):
            if token not in vocab:
                raise ConfigError(f"tool {tool.name}: '{token}' is not a token of this tokenizer")
        self.tools[vocab[tool.end]] = tool

    @property
    def stop_ids(self) -> list[int]:
        """The ids that end an assistant turn: ``<|im_end|>`` (if in the vocabulary), EOS, the generation config's."""
        return stop_token_ids(self.model, self.tokenizer)

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    @property
    def context_length(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)

    def render(self, messages: Conversation) -> str:
        """The prompt for the assistant's next turn, rendered by the tokenizer's chat template.

        A model trained with tools (its ``chat_config.json`` has ``tools``) reads a last line of the system message
        that says whether tools are on: the engine adds ``Tools: python, search.`` when it has tools registered,
        ``Tools: none.`` to the model's default system message when not (a prompt with a system message of its own,
        e.g. the practice problems' that grpo trains on, is left as trained), unless the system message already has
        a ``Tools:`` line."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError("the tokenizer has no chat template")
        return self.tokenizer.apply_chat_template(self.tool_switch(messages), tokenize=False,
                                                  add_generation_prompt=True)

    def tool_switch(self, messages: Conversation) -> Conversation:
        """``messages`` with the system message's tool line (see ``render``), for a model trained with one."""
        if not (self.chat_config.get("tools") and messages and messages[0]["role"] == "system"
                and "Tools:" not in messages[0]["content"]
                and (self.tools or messages[0]["content"] == self.chat_config.get("system_message"))):
            return list(messages)
        line = TOOLS_ON if self.tools else TOOLS_OFF
        return [{**messages[0], "content": f"{messages[0]['content']} {line}"}, *messages[1:]]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _chat_stops(self) -> set[int]:
        # a chat model's turn ends with <|im_end|>; ending with <|endoftext|> is a base model's habit, not a stop
        if IM_END in self.tokenizer.get_vocab():
            return {self.tokenizer.convert_tokens_to_ids(IM_END)}
        return set(self.stop_ids)

    # --- generation -------------------------------------------------------------------------------------------------

    def complete(self, prompt: str, sampling: SamplingParams | None = None, stream: bool = False,
                 stop_strings: list[str] | None = None) -> str:
        """Continue ``prompt`` as a document (a base model's use); return the new text. ``stream`` prints it to
        stdout as it is sampled. With tools registered, their calls and outputs stay in the text between their
        tokens (``<|python_start|>...<|python_end|><|output_start|>...<|output_end|>``)."""
        import torch
        from transformers import TextStreamer, set_seed

        sampling = sampling or SamplingParams(temperature=1.0)
        if sampling.seed is not None:
            set_seed(sampling.seed)
        if not prompt:
            raise ConfigError("prompt: must not be empty")
        if self.tools:  # the tool loop: calls and outputs stay in the text, between their tokens
            return self._complete_with_tools(prompt, sampling, stream)
        inputs = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.model.device)
        kwargs = dict(sampling.generate_kwargs(), pad_token_id=self.pad_id)
        if stop_strings:
            kwargs.update(stop_strings=stop_strings, tokenizer=self.tokenizer)
        if stream:
            kwargs["streamer"] = TextStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        with torch.no_grad():
            out = self.model.generate(**inputs, **kwargs)
        return self.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    def _complete_with_tools(self, prompt: str, sampling: SamplingParams, stream: bool) -> str:
        import sys

        result: dict = {}
        for piece in self._stream_ids(self.tokenizer(prompt, add_special_tokens=False)["input_ids"], sampling,
                                      result):
            if stream:
                sys.stdout.write(piece)
                sys.stdout.flush()
        return result["text"]

    def reply(self, conversations: Sequence[Conversation], sampling: SamplingParams | None = None,
              batch_size: int = 16) -> list[dict]:
        """The assistant's next turn after each conversation (greedy by default).

        Returns one ``{"reply", "text", "stopped", "tokens", "tool_calls", "tool_tokens"}`` per conversation:
        ``reply`` is the answer (after the last tool output), ``text`` the whole turn with its tool calls and outputs
        between their tokens (what the conversation's history keeps); ``stopped`` is whether the model ended its turn
        with ``<|im_end|>`` (or the model's stop token) within ``max_new_tokens``; ``tokens`` counts the reply's
        tokens before the stop token; ``tool_calls`` lists ``{"tool", "input", "output", "ok"}``; ``tool_tokens``
        is whether the reply holds a tool token at all (a call made with no tool registered counts).
        """
        from transformers import set_seed

        sampling = sampling or SamplingParams()
        if sampling.seed is not None:
            set_seed(sampling.seed)
        if self.tools:
            stops = self.stop_ids, self._chat_stops()
            return [self._finish(self._generate_row(self.tokenizer(self.render(c), add_special_tokens=False)
                                                    ["input_ids"], sampling), stops) for c in conversations]
        return self._reply_batched(conversations, sampling, batch_size)

    def _reply_batched(self, conversations, sampling: SamplingParams, batch_size: int) -> list[dict]:
        stops = self.stop_ids, self._chat_stops()  # once: each reads the vocabulary
        rows = self._generate_batched([self.render(c) for c in conversations], sampling, batch_size, stops[0])
        return [self._finish({"ids": row, "tool_calls": []}, stops) for row in rows]

    def complete_batch(self, prompts: Sequence[str], sampling: SamplingParams | None = None,
                       batch_size: int = 16) -> list[str]:
        """``complete`` for many prompts at once (left-padded batches): the new text of each, up to an end token."""
        from transformers import set_seed

        sampling = sampling or SamplingParams(temperature=1.0)
        if sampling.seed is not None:
            set_seed(sampling.seed)
        if not all(prompts):
            raise ConfigError("prompt: must not be empty")
        stop_ids = self.stop_ids
        rows = self._generate_batched(list(prompts), sampling, batch_size, stop_ids)
        return [self.tokenizer.decode(row[:next((i for i, t in enumerate(row) if t in stop_ids), None)],
                                      skip_special_tokens=True) for row in rows]

    def _generate_batched(self, prompts: list[str], sampling: SamplingParams, batch_size: int,
                          stop_ids: list[int]) -> list[list[int]]:
        """The new token ids of each prompt (a row may run on after its stop token, as padding)."""
        import torch

        kwargs = dict(sampling.generate_kwargs(), eos_token_id=stop_ids, pad_token_id=self.pad_id)
        side, self.tokenizer.padding_side = self.tokenizer.padding_side, "left"
        out = []
        try:
            for start in range(0, len(prompts), batch_size):
                inputs = self.tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True,
                                        add_special_tokens=False).to(self.model.device)
                with torch.no_grad():
                    out += self.model.generate(**inputs, **kwargs)[:, inputs["input_ids"].shape[1]:].tolist()
        finally:
            self.tokenizer.padding_side = side
        return out

    def _finish(self, result: dict, stops: tuple[list[int], set[int]] | None = None) -> dict:
        """Generated ids -> the reply's text (up to the first stop token), whether it stopped, its length.
        ``stops``: ``(self.stop_ids, self._chat_stops())``, computed once for a batch."""
        row = result["ids"]
        stop_ids, chat_stops = stops or (self.stop_ids, self._chat_stops())
        end = next((i for i, t in enumerate(row) if t in stop_ids), None)
        body = row[:end]
        output_end = self._tool_ids().get(OUTPUT_END)
        last_output = max((i for i, t in enumerate(body) if t == output_end), default=-1)
        return {
            "reply": self.tokenizer.decode(body[last_output + 1:], skip_special_tokens=True).strip(),
            "text": self.decode(body).strip(),
            "stopped": end is not None and row[end] in chat_stops,
            "tokens": len(row) if end is None else end,
            "tool_calls": result["tool_calls"],
            "tool_tokens": any(t in self._tool_ids().values() for t in body),
        }

    def _tool_ids(self) -> dict[str, int]:
        if not hasattr(self, "_tool_id_map"):
            vocab = self.tokenizer.get_vocab()
            self._tool_id_map = {t: vocab[t] for t in TOOL_TOKENS if t in vocab}
        return self._tool_id_map

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` with the tool tokens kept (calls and outputs stay visible), other special tokens
        dropped: what goes back into a conversation's history."""
        tool_ids = {i: t for t, i in self._tool_ids().items()}
        parts, run = [], []
        for i in ids:
            if i in tool_ids:
                parts.append(self.tokenizer.decode(run, skip_special_tokens=True) + tool_ids[i])
                run = []
            else:
                run.append(i)
        return "".join(parts) + self.tokenizer.decode(run, skip_special_tokens=True)

    def _generate_row(self, prompt_ids: list[int], sampling: SamplingParams, on_tokens=None,
                      stop_event: threading.Event | None = None) -> dict:
        """One sequence, pausing at each tool call: ``{"ids": new token ids (forced tool outputs included),
        "tool_calls": [...]}``. ``on_tokens(ids)`` sees every new token as it comes; ``stop_event`` ends early."""
        import torch
        from transformers import DynamicCache, StoppingCriteria, StoppingCriteriaList

        class Interrupted(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), bool(stop_event and stop_event.is_set()),
                                  device=input_ids.device, dtype=torch.bool)

        relay = _Relay(on_tokens) if on_tokens else None
        kwargs = dict(sampling.generate_kwargs(), eos_token_id=self.stop_ids + list(self.tools),
                      pad_token_id=self.pad_id, return_dict_in_generate=True,
                      stopping_criteria=StoppingCriteriaList([Interrupted()]))
        vocab = self.tokenizer.get_vocab()
        ids, new, calls = list(prompt_ids), [], []
        cache = DynamicCache(config=self.model.config)
        budget = sampling.max_new_tokens
        while budget > 0 and not (stop_event and stop_event.is_set()):
            inputs = torch.tensor([ids], device=self.model.device)
            kwargs["max_new_tokens"] = budget
            if relay:
                relay.skip_next = True  # generate first hands the streamer the prompt
            with torch.no_grad():
                out = self.model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), cache=cache,
                                          streamer=relay, **kwargs)
            cache = getattr(out, "cache", None) or cache
            generated = out.sequences[0, len(ids):].tolist()
            ids += generated
            new += generated
            budget -= len(generated)
            tool = self.tools.get(generated[-1]) if generated else None
            if tool is None:
                break
            start_id, output_end = vocab[tool.start], vocab[OUTPUT_END]
            since = max((i for i, t in enumerate(new[:-1]) if t == output_end), default=-1)  # this call only
            opened = max((i for i in range(since + 1, len(new) - 1) if new[i] == start_id), default=None)
            call = self.tokenizer.decode(new[opened + 1:-1] if opened is not None else [], skip_special_tokens=True)
            output, ok = self._run_tool(tool, call, opened is not None, len(calls))
            # the output is text: a "<|im_end|>" printed by the code stays characters, never the protocol token
            forced = ([vocab[OUTPUT_START]] + self.tokenizer(output, add_special_tokens=False,
                                                             split_special_tokens=True)["input_ids"]
                      + [vocab[OUTPUT_END]])
            calls.append({"tool": tool.name, "input": call, "output": output, "ok": ok})
            if self.on_tool_call:  # e.g. the server, streaming each call to its client as it finishes
                self.on_tool_call(calls[-1])
            ids += forced
            new += forced
            budget -= len(forced)
            if on_tokens:
                on_tokens(forced)
        return {"ids": new, "tool_calls": calls}

    def _run_tool(self, tool: Tool, call: str, opened: bool, made: int) -> tuple[str, bool]:
        """``(output, ok)`` of one call; never raises: a failure is the output the model reads."""
        if not opened:
            return f"error: no {tool.start} before {tool.end}", False
        if made >= self.max_tool_calls:
            return f"error: no more tool calls in this reply (limit {self.max_tool_calls})", False
        try:
            result = tool.run(call)
        except Exception as e:  # the model made a bad call: it reads the error, as a programmer would
            return f"error: {type(e).__name__}: {e}", False
        if hasattr(result, "output"):
            return str(result.output), bool(getattr(result, "ok", True))
        return str(result), not str(result).startswith("error:")

    def stream(self, messages: Conversation, sampling: SamplingParams | None = None,
               result: dict | None = None) -> Iterator[str]:
        """Generate one reply, yielding its text as it comes; ``result`` (a dict) receives what ``reply`` returns.

        Generation runs in a worker thread; closing the iterator early (or an interrupt in the caller) stops it
        and waits for it, so the process never exits with the thread still inside torch.
        """
        from transformers import set_seed

        sampling = sampling or SamplingParams()
        if sampling.seed is not None:
            set_seed(sampling.seed)
        prompt_ids = self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"]
        yield from self._stream_ids(prompt_ids, sampling, result)

    def _stream_ids(self, prompt_ids: list[int], sampling: SamplingParams, result: dict | None) -> Iterator[str]:
        """``stream`` after the prompt is tokenized (``complete`` with tools uses it too)."""
        pieces: queue.Queue = queue.Queue()
        stop = threading.Event()
        outcome: dict = {}
        done = object()

        def work():
            try:
                outcome["result"] = self._generate_row(prompt_ids, sampling, on_tokens=pieces.put, stop_event=stop)
            except BaseException as e:  # re-raised in the caller's thread
                outcome["error"] = e
            finally:
                pieces.put(done)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        ids: list[int] = []
        shown = ""
        try:
            while (item := pieces.get()) is not done:
                ids += item
                text = self.decode(ids)
                if len(text) > len(shown) and not text.endswith("\ufffd"):  # wait for a whole UTF-8 character
                    yield text[len(shown):]
                    shown = text
        finally:
            stop.set()
            thread.join()
        if "error" in outcome:
            raise outcome["error"]
        finished = self._finish(outcome["result"])
        text = self.decode(outcome["result"]["ids"][:finished["tokens"]])
        if len(text) > len(shown):
            yield text[len(shown):]
        if result is not None:
            result.update(finished)


class _Relay:
    """A ``generate`` streamer that hands each new token id to a callback, skipping the prompt, and never ends the
    stream (the tool loop calls ``generate`` several times for one reply)."""

    def __init__(self, callback):
        self.callback, self.skip_next = callback, True

    def put(self, value):
        if self.skip_next:
            self.skip_next = False
            return
        self.callback(value.reshape(-1).tolist())

    def end(self):
        pass


def stop_token_ids(model, tokenizer) -> list[int]:
    """The ids that end an assistant turn: ``<|im_end|>`` (if in the vocabulary), EOS, the generation config's."""
    ids = []
    im_end = tokenizer.convert_tokens_to_ids(IM_END) if IM_END in tokenizer.get_vocab() else None
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for i in [im_end, tokenizer.eos_token_id, *(configured if isinstance(configured, list) else [configured])]:
        if i is not None and i not in ids:
            ids.append(i)
    return ids


class ChatSession:
    """A conversation with a model: ``send`` (or ``stream``) a user turn, get the reply; history is kept.

    ``model``: a reference (str), an ``Engine``, or a loaded model (then pass ``tokenizer``). ``system``: the system
    message; None takes the model folder's default (chat_config.json), "" none. ``temperature`` 0 is greedy.
    ``max_context_tokens``: drop the oldest turns when the prompt and the reply would not fit (default: the model's
    context length).
    """

    def __init__(self, model, tokenizer=None, system: str | None = None, temperature: float = 0.7,
                 top_k: int | None = 50, top_p: float | None = 0.95, max_new_tokens: int = 256,
                 seed: int | None = None, max_context_tokens: int | None = None, tools: Sequence[Tool] = ()):
        if isinstance(model, Engine):
            self.engine = model
        elif isinstance(model, (str, Path)):
            self.engine = Engine.load(str(model), tools=tools, chat=True)
        elif tokenizer is None:
            raise ValueError("ChatSession: pass the tokenizer with a loaded model")
        else:
            self.engine = Engine(model, tokenizer, tools=tools)
        self.model, self.tokenizer = self.engine.model, self.engine.tokenizer
        chat_config = self.engine.chat_config
        self.system = chat_config.get("system_message") if system is None else (system or None)
        self.assistant_name = chat_config.get("assistant_name") or "assistant"
        self.sampling = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                       top_p=top_p)
        self.max_context_tokens = max_context_tokens or self.engine.context_length
        self.messages: list[dict] = []
        self.last_prompt: str | None = None  # the rendered prompt of the last turn, history included
        self.last_result: dict = {}  # what Engine.reply returns for the last turn (stopped, tokens, tool_calls)
        if seed is not None:
            from transformers import set_seed

            set_seed(seed)
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (the system message stays)."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def _prompt(self) -> str:
        prompt = self.engine.render(self.messages)
        budget = self.max_context_tokens
        while budget and self.engine.count_tokens(prompt) + self.sampling.max_new_tokens > budget:
            first = 1 if self.messages[0]["role"] == "system" else 0
            if len(self.messages) - first <= 1:  # only the new user turn is left
                break
            del self.messages[first:first + 2]  # the oldest user turn and its reply
            prompt = self.engine.render(self.messages)
        return prompt

    def stream(self, text: str) -> Iterator[str]:
        """Send a user turn; yield the reply's text as it is generated. The full reply joins the history; an
        interrupted turn leaves the history as it was."""
        self.messages.append({"role": "user", "content": text})
        self.last_prompt = self._prompt()
        result: dict = {}
        try:
            yield from self.engine.stream(self.messages, self.sampling, result=result)
        finally:
            if not result:  # interrupted or failed: the user's turn is taken back
                self.messages.pop()
        self.last_result = result
        self.messages.append({"role": "assistant", "content": result["text"]})

    def send(self, text: str) -> str:
        """Send a user turn and return the assistant's reply (its answer: tool calls are in ``last_result``)."""
        for _ in self.stream(text):
            pass
        return self.last_result["reply"]


def chat(model, message: str, tokenizer=None, system: str | None = None, **kwargs) -> str:
    """One user turn, one reply (no history kept); ``kwargs`` as for ``ChatSession``."""
    return ChatSession(model, tokenizer, system=system, **kwargs).send(message)
