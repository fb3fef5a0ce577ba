"""The chat server: ``hf-pipeline serve MODEL``, an OpenAI-compatible API that runs its own tools, and a web page.

    hf-pipeline serve runs/tiny/sft                       # the page at http://127.0.0.1:8000/, the API at /v1
    hf-pipeline serve runs/tiny --port 0 --temperature 0 --tools python search --index runs/tiny/index

    from openai import OpenAI                             # any OpenAI client, curl, or the page
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.chat.completions.create(model="sft", messages=[{"role": "user", "content": "What is 415 * 391?"}])

One model, loaded once (``hf_pipeline.engine.Engine``) before the server listens: a model that does not load is a
``ConfigError`` (one line, exit 2). Once listening it prints ``serving MODEL at http://HOST:PORT/ (OpenAI API at
/v1)`` (``--port 0`` picks a free port). FastAPI + uvicorn with server-sent events, the stack ``transformers serve``
uses. Nothing is written to disk; Ctrl-C stops it.

**Endpoints**

    POST /v1/chat/completions   the chat API below
    GET  /v1/models             {"object": "list", "data": [{"id": MODEL_ID, "object": "model", ...}]}
    GET  /health                {"status": "ok", "model": MODEL_ID, "queued": N}
    GET  /config                the page's defaults: model, system message, sampling, limits, tools
    GET  /                      the chat page (``hf_pipeline/static/chat.html``)

**Request** (JSON): ``messages`` (roles ``system``, ``developer`` (= system), ``user``, ``assistant``; ``content`` a
string or a list of ``{"type": "text", "text"}`` parts), ``stream``, ``stream_options.include_usage``,
``max_completion_tokens`` or ``max_tokens`` (1..``--max_tokens_limit``; a reply never runs past the model's context:
the budget is cut to what is left of it), ``temperature`` (0..2, 0 greedy), ``top_p`` (0, 1], ``top_k`` (an
extension, >= 0), ``seed`` (>= 0), ``model`` (optional; if given, the served id or the path given on the command
line, else 404), ``n`` (1 only). Without a system message the default one (``--system``, else the model's
``chat_config.json``) comes first; a system message with empty content means none. ``tools`` from the client are
refused (400): the server runs its own tools (``--tools python search --index RUN/index``, as ``hf-pipeline chat``),
mid-generation, and reports each call. ``stop`` is refused unless empty (a turn ends at ``<|im_end|>``). Other
fields (``frequency_penalty``, ``user``...) are ignored. The engine adds ``Tools: python, search.`` or ``Tools:
none.`` to the system message as the model was trained (``Engine.render``).

**Response** (``stream`` false)::

    {"id": "chatcmpl-...", "object": "chat.completion", "created": 1700000000, "model": MODEL_ID,
     "choices": [{"index": 0, "finish_reason": "stop" | "length", "logprobs": null,
                  "message": {"role": "assistant", "content": "The answer is 42.",
                              "tool_calls_executed": [{"tool": "python", "input": "print(6 * 7)",
                                                       "output": "42", "ok": true}]}}],
     "usage": {"prompt_tokens": 31, "completion_tokens": 22, "total_tokens": 53}}

``content`` is the reply's text outside the tool calls and their outputs (for a reply that calls first and then
answers, the answer after the last output: ``Engine.reply``'s ``reply``); ``tool_calls_executed`` lists the calls the
server ran, in order (``ok``: the call ran without an error). ``completion_tokens`` counts the tool outputs put into
the context too (they use the reply's budget). ``finish_reason`` is ``length`` when the budget ran out.

**Stream** (``stream`` true): ``text/event-stream``, one ``data: {chunk}`` line (and a blank line) per event, then
``data: [DONE]``. Chunks are ``{"id", "object": "chat.completion.chunk", "created", "model", "choices": [{"index":
0, "delta": {...}, "finish_reason": null}]}``; the deltas: ``{"role": "assistant", "content": ""}`` first, then
``{"content": TEXT}`` pieces and, as each tool call finishes, ``{"tool_call_executed": {"tool", "input", "output",
"ok"}}`` (an extra field: the OpenAI client gives it as ``delta.model_extra``), and a last ``{}`` with the
``finish_reason``; with ``stream_options: {"include_usage": true}`` a chunk with ``"choices": []`` and ``usage``
follows. The pieces joined are the non-streamed ``content``. A piece never ends inside a multi-byte character
(the engine withholds text ending in U+FFFD until the character is whole), and whitespace at the end of the text so
far waits for what follows (the reply is stripped, as ``Engine.reply``'s). A failure during generation is a last
``data: {"error": {...}}`` before ``[DONE]``.

**Errors**: OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``: 400 for a body that is not JSON or
not an object, a field of the wrong type or out of range, an unknown role, empty or too many ``messages``
(``--max_messages``, 500), a message over ``--max_message_chars`` (8,000) or all of them over ``--max_total_chars``
(32,000), a prompt that fills the model's context (code ``context_length_exceeded``); 404 for another model; 413 for
a body over 8 bytes per allowed character; 503 when ``--max_queue`` requests are already waiting.

**Concurrency**: requests are served concurrently and generated one at a time, in the order they came, by one
worker thread (one model, one set of weights: no outputs mixed, and seeded requests reproducible); the event loop
keeps answering (``/health``, the page, other requests' chunks) while it generates. A streamed request whose client
goes away stops its generation at the next token; a waiting request whose client went away is dropped.

**The page** (``/``, ``hf_pipeline/static/chat.html``): one self-contained file (inline CSS and JS, nothing fetched
from elsewhere) that is a client of the same API: the conversation, the reply streamed, each tool call a collapsible
block with its input and output, a system-message box, temperature, top-p and max tokens, new chat and stop buttons.
A small static page, not Gradio: no heavy dependency for a pipeline that has none, and the page uses only the
OpenAI API any other client uses, so what the page shows is what the API does (a Hugging Face Space can run
``hf-pipeline serve`` as well as a Gradio app).

There is no authentication and the python sandbox is meant for a model's snippets (``hf_pipeline.tools.python``):
the server listens on 127.0.0.1 unless ``--host`` says otherwise; put it behind a proxy with authentication, in a
container, to serve others.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import queue
import re
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .config import ArgumentParser, ConfigError
from .tokenizer import OUTPUT_END, OUTPUT_START, PYTHON_START, SEARCH_START, TOOL_TOKENS

logger = logging.getLogger("hf_pipeline")

PAGE = Path(__file__).parent / "static" / "chat.html"
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# A token goes from the generating thread to the worker thread to the event loop; each waits for the GIL, which a
# running thread gives up every switch interval (5 ms by default): 1 ms makes those hand-offs quicker
SWITCH_INTERVAL = 0.001
BYTES_PER_CHAR = 8  # the request body may hold this many bytes per allowed character (JSON escapes, UTF-8)
_TOOL_TOKEN = re.compile("|".join(map(re.escape, TOOL_TOKENS)))
_OPENERS = {PYTHON_START, SEARCH_START, OUTPUT_START}


# --- requests ---------------------------------------------------------------------------------------------------


class ApiError(Exception):
    """A request the server refuses, answered in OpenAI's error shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class Settings:
    """What the command line sets: the served id, defaults and limits."""

    model_id: str
    aliases: tuple[str, ...] = ()
    system: str | None = None
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 50
    max_tokens: int = 256
    seed: int | None = None
    max_messages: int = 500
    max_message_chars: int = 8000
    max_total_chars: int = 32000
    max_tokens_limit: int = 2048
    max_queue: int = 32
    context: int | None = None
    tools: list[str] = field(default_factory=list)
    protocol_tokens: tuple[str, ...] = ()  # the tokenizer's special tokens: refused inside a message's text


@dataclass
class ChatRequest:
    messages: list[dict]
    stream: bool
    include_usage: bool
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int | None


def _number(body: dict, name: str, low: float, high: float, low_open: bool = False) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ApiError(400, f"{name}: must be a number, not {json.dumps(value)[:40]}", name, "invalid_type")
    if value < low or value > high or (low_open and value == low):
        bounds = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise ApiError(400, f"{name}: must be in {bounds}, not {value}", name, "invalid_value")
    return float(value)


def _integer(body: dict, name: str, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{name}: must be an integer, not {json.dumps(value)[:40]}", name, "invalid_type")
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in {low}..{high}"
        raise ApiError(400, f"{name}: must be {bounds}, not {value}", name, "invalid_value")
    return value


def _content(message: dict, where: str) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": "..."}], as the OpenAI client may send
        texts = []
        for n, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise ApiError(400, f"{where}.content[{n}]: only text parts ({{\"type\": \"text\", \"text\": ...}}) "
                                    "are supported", f"{where}.content", "invalid_value")
            texts.append(part["text"])
        return "".join(texts)
    raise ApiError(400, f"{where}.content: must be a string or a list of text parts", f"{where}.content",
                   "invalid_type")


def parse_request(body, settings: Settings) -> ChatRequest:
    """The checked request, or an ``ApiError`` that names the field."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", None, "invalid_body")
    model = body.get("model")
    if model is not None and model not in (settings.model_id, *settings.aliases):
        raise ApiError(404, f"model: '{model}' is not served here (this server serves '{settings.model_id}')",
                       "model", "model_not_found")
    if body.get("tools"):
        raise ApiError(400, "tools: this server runs its own tools (hf-pipeline serve --tools "
                            f"{' '.join(settings.tools) or '...'}); it takes no tool definitions", "tools",
                       "unsupported_parameter")
    if body.get("stop"):
        raise ApiError(400, "stop: not supported (a reply ends with the model's end of turn)", "stop",
                       "unsupported_parameter")
    if body.get("n") not in (None, 1):
        raise ApiError(400, f"n: only 1 choice per request, not {json.dumps(body['n'])[:40]}", "n", "invalid_value")
    messages = body.get("messages")
    if messages is None:
        raise ApiError(400, "messages: required (a list of {role, content})", "messages", "missing_required_parameter")
    if not isinstance(messages, list):
        raise ApiError(400, "messages: must be a list of {role, content}", "messages", "invalid_type")
    if not messages:
        raise ApiError(400, "messages: must not be empty", "messages", "invalid_value")
    if len(messages) > settings.max_messages:
        raise ApiError(400, f"messages: {len(messages)} messages, the limit is {settings.max_messages}",
                       "messages", "too_many_messages")
    checked, total = [], 0
    for n, message in enumerate(messages):
        where = f"messages[{n}]"
        if not isinstance(message, dict):
            raise ApiError(400, f"{where}: must be an object with role and content", where, "invalid_type")
        role = message.get("role")
        if role not in ROLES:
            raise ApiError(400, f"{where}.role: unknown role {json.dumps(role)[:40]} (system, developer, user or "
                                "assistant)", f"{where}.role", "invalid_value")
        content = _content(message, where)
        if len(content) > settings.max_message_chars:
            raise ApiError(400, f"{where}.content: {len(content)} characters, the limit is "
                                f"{settings.max_message_chars}", f"{where}.content", "message_too_long")
        forged = next((token for token in settings.protocol_tokens if token in content), None)
        if forged:  # rendered by the chat template it would be the real token: a forged turn or tool output
            raise ApiError(400, f"{where}.content: holds the protocol token {forged!r}, which only the server writes",
                           f"{where}.content", "invalid_value")
        total += len(content)
        checked.append({"role": ROLES[role], "content": content})
    if total > settings.max_total_chars:
        raise ApiError(400, f"messages: {total} characters in all, the limit is {settings.max_total_chars}",
                       "messages", "messages_too_long")
    if checked[0]["role"] == "system":
        if not checked[0]["content"]:
            checked = checked[1:]  # an empty system message: none at all
    elif settings.system:
        checked = [{"role": "system", "content": settings.system}, *checked]
    if not checked:
        raise ApiError(400, "messages: nothing but an empty system message", "messages", "invalid_value")
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise ApiError(400, "stream: must be true or false", "stream", "invalid_type")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "stream_options: must be an object", "stream_options", "invalid_type")
    limit = settings.max_tokens_limit
    max_tokens = _integer(body, "max_completion_tokens", 1, limit)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1, limit)
    temperature = _number(body, "temperature", 0, 2)
    top_p = _number(body, "top_p", 0, 1, low_open=True)
    top_k = _integer(body, "top_k", 0)
    seed = _integer(body, "seed", 0)
    return ChatRequest(
        messages=checked, stream=bool(stream), include_usage=bool(options.get("include_usage")),
        max_tokens=max_tokens or min(settings.max_tokens, limit),
        temperature=settings.temperature if temperature is None else temperature,
        top_p=settings.top_p if top_p is None else top_p, top_k=settings.top_k if top_k is None else top_k,
        seed=settings.seed if seed is None else seed,
    )


# --- replies ----------------------------------------------------------------------------------------------------


def answer_text(text: str) -> str:
    """The reply's text outside tool calls and outputs (``<|python_start|>...<|python_end|>``,
    ``<|output_start|>...<|output_end|>``), without leading whitespace."""
    parts, inside, start = [], False, 0
    for match in _TOOL_TOKEN.finditer(text):
        if not inside:
            parts.append(text[start:match.start()])
        inside = match.group() in _OPENERS
        start = match.end()
    if not inside:
        parts.append(text[start:])
    return "".join(parts).lstrip()


class TurnParser:
    """Turns the engine's stream of a reply (text with the tool tokens kept) into events: ``("content", text)``
    pieces of the answer and ``("tool", call)`` for each call the engine ran (``calls``, appended by the engine as
    each call runs, before its output enters the stream)."""

    def __init__(self, calls: list[dict]):
        self.text, self.sent, self.calls, self.reported = "", "", calls, 0

    def feed(self, piece: str) -> list[tuple[str, object]]:
        self.text += piece
        events: list[tuple[str, object]] = []
        finished = self.text.count(OUTPUT_END)
        while self.reported < min(finished, len(self.calls)):
            events.append(("tool", self.calls[self.reported]))
            self.reported += 1
        shown = answer_text(self.text).rstrip()  # trailing whitespace waits: the reply is stripped
        if len(shown) > len(self.sent) and shown.startswith(self.sent):
            events.append(("content", shown[len(self.sent):]))
            self.sent = shown
        return events

    def finish(self) -> list[tuple[str, object]]:
        """Calls not reported yet (a call whose output was cut by the budget)."""
        events = [("tool", call) for call in self.calls[self.reported:]]
        self.reported = len(self.calls)
        return events


class Job:
    """One request's generation: the worker thread fills ``events`` (an asyncio queue, through the loop)."""

    def __init__(self, loop, request: ChatRequest):
        self.loop, self.request = loop, request
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()

    def emit(self, kind: str, value=None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: the server stopped
            self.cancelled.set()

    async def next_event(self, request=None, poll: float = 0.5) -> tuple[str, object]:
        """The next event; while waiting, a client that went away cancels the job (the event is ``gone``)."""
        if request is None:
            return await self.events.get()
        while True:
            try:
                return await asyncio.wait_for(self.events.get(), poll)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    self.cancelled.set()
                    return "gone", None


class Worker:
    """The one thread that generates: jobs in the order they came, one at a time."""

    def __init__(self, engine, settings: Settings):
        self.engine, self.settings = engine, settings
        self.jobs: queue.Queue = queue.Queue()
        self.pending = 0  # waiting or running
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="hf-pipeline-serve-worker", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> bool:
        with self.lock:
            if self.pending > self.settings.max_queue:
                return False
            self.pending += 1
        self.jobs.put(job)
        return True

    def stop(self, timeout: float = 10) -> None:
        self.stopping.set()
        self.jobs.put(None)
        self.thread.join(timeout)

    def _loop(self) -> None:
        while (job := self.jobs.get()) is not None:
            try:
                if not (job.cancelled.is_set() or self.stopping.is_set()):
                    self._run(job)
            except Exception as e:  # a bug or a torch failure: this request fails, the server goes on
                logger.exception("generation failed")
                job.emit("error", f"generation failed: {type(e).__name__}: {e}")
            finally:
                with self.lock:
                    self.pending -= 1

    def _run(self, job: Job) -> None:
        from .engine import SamplingParams

        engine, request = self.engine, job.request
        prompt_tokens = engine.count_tokens(engine.render(request.messages))
        context = self.settings.context
        if context and prompt_tokens >= context:
            job.emit("rejected", ApiError(
                400, f"messages: the prompt is {prompt_tokens} tokens and the model's context is {context} tokens "
                     "(start a new conversation or send fewer messages)", "messages", "context_length_exceeded"))
            return
        budget = min(request.max_tokens, context - prompt_tokens) if context else request.max_tokens
        sampling = SamplingParams(max_new_tokens=budget, temperature=request.temperature,
                                  top_k=request.top_k or None, top_p=request.top_p, seed=request.seed)
        job.emit("start", prompt_tokens)
        calls: list = []
        engine.on_tool_call = calls.append  # each call as it finishes, for the stream's tool chunks
        parser = TurnParser(calls)
        result: dict = {}
        pieces = engine.stream(request.messages, sampling, result=result)
        try:
            for piece in pieces:
                for kind, value in parser.feed(piece):
                    job.emit(kind, value)
                if job.cancelled.is_set() or self.stopping.is_set():
                    return
        finally:
            pieces.close()  # stops and joins the engine's thread if the reply was cut short
            engine.on_tool_call = None
        for kind, value in parser.finish():
            job.emit(kind, value)
        stopped_early = not result["stopped"] and result["tokens"] >= budget
        job.emit("done", {"content": parser.sent, "tool_calls": result["tool_calls"],
                          "finish_reason": "length" if stopped_early else "stop",
                          "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": result["tokens"],
                                    "total_tokens": prompt_tokens + result["tokens"]}})


# --- the app ----------------------------------------------------------------------------------------------------


def build_app(engine, settings: Settings, worker: Worker):
    """The FastAPI app. Plain Starlette routes (each handler gets the Request and checks the JSON itself): no
    signature for FastAPI to read, so ``from __future__ import annotations`` is harmless, and every refusal has
    OpenAI's error shape."""
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException

    page = PAGE.read_text(encoding="utf-8")
    body_limit = BYTES_PER_CHAR * settings.max_total_chars + 65536
    app = FastAPI(title="hf-pipeline serve", docs_url=None, redoc_url=None, openapi_url=None)

    def error(e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error(ApiError(exc.status_code, str(exc.detail), None, None,
                              "not_found_error" if exc.status_code == 404 else "invalid_request_error"))

    app.add_exception_handler(HTTPException, http_error)

    async def read_json(request: Request):
        size, chunks = 0, []
        async for chunk in request.stream():
            size += len(chunk)
            if size > body_limit:
                raise ApiError(413, f"the request body is over {body_limit} bytes", None, "request_too_large")
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks))
        except ValueError as e:  # UnicodeDecodeError too
            raise ApiError(400, f"the request body is not valid JSON ({e})", None, "invalid_json") from None

    def chunk(base: dict, delta: dict | None, finish_reason: str | None = None, usage: dict | None = None) -> str:
        data = {**base, "object": "chat.completion.chunk"}
        if usage is None:
            data["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
        else:
            data.update(choices=[], usage=usage)
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    async def completions(request: Request):
        try:
            chat = parse_request(await read_json(request), settings)
        except ApiError as e:
            return error(e)
        job = Job(asyncio.get_running_loop(), chat)
        if not worker.submit(job):
            return error(ApiError(503, f"the server is busy ({settings.max_queue} requests waiting); try again",
                                  None, "server_busy", "server_error"))
        kind, value = await job.next_event(request)
        if kind == "gone":  # nobody to answer
            return Response(status_code=499)
        if kind == "rejected":
            return error(value)
        if kind == "error":
            return error(ApiError(500, value, None, "generation_failed", "server_error"))
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": settings.model_id,
                "system_fingerprint": None}
        if chat.stream:
            return StreamingResponse(events(job, base), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            while True:
                kind, value = await job.next_event(request)
                if kind in ("done", "gone"):
                    break
                if kind == "error":
                    return error(ApiError(500, value, None, "generation_failed", "server_error"))
        finally:
            job.cancelled.set()  # done, failed or the client left: nothing more to generate
        if kind == "gone":
            return Response(status_code=499)
        message = {"role": "assistant", "content": value["content"], "tool_calls_executed": value["tool_calls"]}
        return JSONResponse({**base, "object": "chat.completion", "usage": value["usage"], "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": value["finish_reason"]}]})

    async def events(job: Job, base: dict):
        try:
            yield chunk(base, {"role": "assistant", "content": ""})
            while True:
                kind, value = await job.next_event()
                if kind == "content":
                    yield chunk(base, {"content": value})
                elif kind == "tool":
                    yield chunk(base, {"tool_call_executed": value})
                elif kind == "done":
                    yield chunk(base, {}, value["finish_reason"])
                    if job.request.include_usage:
                        yield chunk(base, None, usage=value["usage"])
                    break
                elif kind == "error":
                    failure = ApiError(500, value, None, "generation_failed", "server_error")
                    yield f"data: {json.dumps(failure.body(), ensure_ascii=False)}\n\n"
                    break
            yield "data: [DONE]\n\n"
        finally:  # finished, or the client went away: the worker stops at the next token
            job.cancelled.set()

    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [
            {"id": settings.model_id, "object": "model", "created": int(time.time()), "owned_by": "hf-pipeline"}]})

    async def health(request: Request):
        return JSONResponse({"status": "ok", "model": settings.model_id, "queued": worker.pending})

    async def config(request: Request):
        return JSONResponse({
            "model": settings.model_id, "system": settings.system or "", "temperature": settings.temperature,
            "top_p": settings.top_p, "max_tokens": min(settings.max_tokens, settings.max_tokens_limit),
            "max_tokens_limit": settings.max_tokens_limit, "context": settings.context, "tools": settings.tools,
            "assistant_name": engine.chat_config.get("assistant_name") or "assistant",
        })

    async def index(request: Request):
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    app.add_route("/v1/chat/completions", completions, methods=["POST"])
    app.add_route("/v1/models", models, methods=["GET"])
    app.add_route("/health", health, methods=["GET"])
    app.add_route("/config", config, methods=["GET"])
    app.add_route("/", index, methods=["GET"])
    return app


# --- the command ------------------------------------------------------------------------------------------------


def _model_id(ref: str) -> str:
    path = Path(ref).expanduser()
    return path.resolve().name if path.exists() else ref


def main(argv: list[str] | None = None) -> int:
    from .chat import add_tool_args, register_tools
    from .engine import SamplingParams

    parser = ArgumentParser(prog="hf-pipeline serve",
                            description="Serve a chat model: an OpenAI-compatible API at /v1 and a chat page at /.")
    parser.add_argument("model", help="Run folder, model folder, adapter folder or Hub id.")
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on (0.0.0.0: every interface).")
    parser.add_argument("--port", type=int, default=8000, help="Port (0: a free one).")
    parser.add_argument("--model_id", "--model-id", default=None,
                        help="The id the API serves (default: the model folder's name).")
    parser.add_argument("--system", default=None,
                        help="Default system message (default: the model folder's chat_config.json; '' for none).")
    parser.add_argument("--temperature", type=float, default=0.7, help="Default temperature (0: greedy).")
    parser.add_argument("--top_p", "--top-p", type=float, default=0.95, help="Default top-p.")
    parser.add_argument("--top_k", "--top-k", type=int, default=50, help="Default top-k (0: off).")
    parser.add_argument("--max_tokens", "--max-tokens", type=int, default=256, help="Default reply budget.")
    parser.add_argument("--seed", type=int, default=None, help="Default seed of a request that sets none.")
    parser.add_argument("--max_tokens_limit", "--max-tokens-limit", type=int, default=2048,
                        help="The largest max_tokens a request may ask for (capped by the model's context).")
    parser.add_argument("--max_messages", "--max-messages", type=int, default=500, help="Messages per request.")
    parser.add_argument("--max_message_chars", "--max-message-chars", type=int, default=8000,
                        help="Characters per message.")
    parser.add_argument("--max_total_chars", "--max-total-chars", type=int, default=32000,
                        help="Characters of all the messages of a request.")
    parser.add_argument("--max_queue", "--max-queue", type=int, default=32,
                        help="Requests that may wait for the model; more are refused with 503.")
    add_tool_args(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port: must be in 0..65535, not {args.port}")
    for name in ("max_tokens", "max_tokens_limit", "max_messages", "max_message_chars", "max_total_chars"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name}: must be >= 1, not {getattr(args, name)}")
    if args.max_queue < 0:
        raise ConfigError(f"--max_queue: must be >= 0, not {args.max_queue}")
    if not 0 <= args.temperature <= 2:
        raise ConfigError(f"--temperature: must be in [0, 2], not {args.temperature}")
    SamplingParams(max_new_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                   seed=args.seed)  # range-checked before the model loads
    if "search" in args.tools and not args.index:
        raise ConfigError("--tools search: needs --index (a RUN/index folder)")

    from .engine import Engine

    engine = Engine.load(args.model, chat=True)
    register_tools(engine, args)
    context = engine.context_length
    system = engine.chat_config.get("system_message") if args.system is None else (args.system or None)
    settings = Settings(
        model_id=args.model_id or _model_id(args.model), aliases=(args.model, str(getattr(engine, "path", ""))),
        system=system, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        max_tokens=min(args.max_tokens, context or args.max_tokens), seed=args.seed,
        max_messages=args.max_messages, max_message_chars=args.max_message_chars,
        max_total_chars=args.max_total_chars, max_tokens_limit=min(args.max_tokens_limit, context or 1 << 30),
        max_queue=args.max_queue, context=context, tools=list(args.tools),
        protocol_tokens=tuple(t for t in engine.tokenizer.all_special_tokens if t.startswith("<|")),
    )
    worker = Worker(engine, settings)
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        from .webapp import run_app

        run_app(build_app(engine, settings, worker), args.host, args.port,
                lambda url: print(f"serving {settings.model_id} at {url} (OpenAI API at /v1)", flush=True))
    finally:
        worker.stop()
    print("server stopped", flush=True)
    return 0


