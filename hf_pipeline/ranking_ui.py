"""Ranking rollouts by hand: the two ways a person orders K completions of a prompt (RLHF's data collection).

    from hf_pipeline.ranking_ui import parse_order, rank_in_terminal, serve_ranking_page
    items = [{"id": "p1", "prompt": "Name a colour.", "completions": ["Blue.", "Seven.", "Red!", "blue"]}]
    save = lambda ranking: out.write(json.dumps(ranking) + "\\n")      # called once per ranked item, at once
    rank_in_terminal(items, save, annotator="alice")        # one line per prompt: "3 1 4 2", "3=1 4 2", s, q
    serve_ranking_page(items, save, port=8000)              # a local page: http://127.0.0.1:8000/
    parse_order("3=1 4 2", k=4)                             # -> [1, 4, 1, 3]

Like InstructGPT's labellers, the person sees a prompt and its K completions (K >= 2, usually 4) and orders them,
best first; ties are allowed. The ``rank`` stage generates the rollouts, calls one of these and stores what ``save``
receives (one JSON line per ranking, so an interrupted session keeps what was ranked):

    item      {"id": str, "prompt": str, "completions": [str, ...]}
    ranking   {"id": str, "ranks": [int, ...], "annotator": str}   ranks[i]: rank of completion i, 1 = best

Ranks are standard competition ranks: tied completions share a rank and the next rank skips ([1, 2, 2, 4]).
``check_ranks`` enforces that, ``parse_order`` turns a typed order into ranks and ``format_order`` back.

- **Terminal** (``rank_in_terminal``): each prompt and its numbered completions, wrapped to the terminal; one line per
  prompt: an order (``3 1 4 2``; ties ``3=1 4 2``; commas or spaces), ``s`` skips, ``q`` or the end of the input
  stops (Ctrl-C too); an invalid line says why and asks again. Imports nothing beyond the standard library.
- **Web page** (``serve_ranking_page``): a FastAPI app run by uvicorn in the calling thread; one self-contained page
  (inline CSS and JS, nothing fetched from elsewhere) shows the prompt and the completions as cards; a card's rank
  buttons 1..K set its rank (the same number on two cards is a tie), clicking a card gives it the next rank (click
  the cards best first; clicking a ranked card clears it); Submit saves and shows the next prompt. The server stops
  by itself once every item is ranked or skipped (and on Ctrl-C); ``port=0`` picks a free port.
  API: ``GET /api/next`` -> ``{"done", "item", "ranked", "skipped", "total"}``; ``POST /api/rank``
  ``{"id", "ranks"}`` and ``POST /api/skip`` ``{"id"}`` answer the same state (the next item): an unknown id is
  404, an item already ranked or skipped 409, bad ranks 422 with a message for the person.
"""

from __future__ import annotations

import logging
import re
import shutil
import sys
import textwrap
from collections.abc import Callable, Iterable

from .preferences import check_ranks
from .webapp import run_app

logger = logging.getLogger("hf_pipeline")

Save = Callable[[dict], object]

_TOKEN = re.compile(r"[+-]?\d+")


def _numbers(ns: Iterable[int]) -> str:
    ns = list(ns)
    return ", ".join(map(str, ns[:-1])) + " and " + str(ns[-1]) if len(ns) > 1 else str(ns[0])


def parse_order(text: str, k: int) -> list[int]:
    """Ranks (``ranks[i]`` of completion i + 1, 1 = best) from an order, best first, of the numbers 1..k.

    ``"3 1 4 2"`` -> ``[2, 4, 1, 3]``; ties joined with ``=``: ``"3=1 4 2"`` -> ``[1, 4, 1, 3]``. Commas or spaces
    separate. Every completion must appear exactly once; otherwise a ``ValueError`` says what is wrong.
    """
    text = re.sub(r"\s*=\s*", "=", text.strip())
    if not text:
        raise ValueError(f"enter an order, best first, e.g. {' '.join(map(str, range(1, k + 1)))} (ties: 1=2)")
    groups: list[list[int]] = []
    seen: set[int] = set()
    for group in re.split(r"[,\s]+", text.strip(", ")):
        members = []
        for part in group.split("="):
            if not part:
                raise ValueError(f"'{group}': '=' joins two completion numbers, e.g. 3=1")
            if not _TOKEN.fullmatch(part):
                raise ValueError(f"'{part}' is not a completion number (1 to {k})")
            number = int(part)
            if not 1 <= number <= k:
                raise ValueError(f"{number} is not between 1 and {k}")
            if number in seen:
                raise ValueError(f"completion {number} is given more than once")
            seen.add(number)
            members.append(number)
        groups.append(members)
    missing = [n for n in range(1, k + 1) if n not in seen]
    if missing:
        raise ValueError(f"completion {missing[0]} is missing" if len(missing) == 1
                         else f"completions {_numbers(missing)} are missing")
    ranks = [0] * k
    placed = 0
    for members in groups:
        for number in members:
            ranks[number - 1] = placed + 1
        placed += len(members)
    return ranks


def format_order(ranks: list[int]) -> str:
    """The order, best first, that ``parse_order`` reads back into ``ranks``: ``[1, 4, 1, 3]`` -> ``"1=3 4 2"``."""
    groups: dict[int, list[int]] = {}
    for i, rank in enumerate(ranks):
        groups.setdefault(rank, []).append(i + 1)
    return " ".join("=".join(map(str, groups[rank])) for rank in sorted(groups))


def _check_items(items: Iterable[dict]) -> list[dict]:
    items = list(items)
    seen = set()
    for n, item in enumerate(items):
        where = f"item {n}"
        if not isinstance(item, dict) or not {"id", "prompt", "completions"} <= item.keys():
            raise ValueError(f"{where}: expected a dict with id, prompt and completions")
        where += f" (id {item['id']!r})"
        if str(item["id"]) in seen:
            raise ValueError(f"{where}: the id is used twice")
        seen.add(str(item["id"]))
        if not isinstance(item["prompt"], str):
            raise ValueError(f"{where}: the prompt is not a string")
        completions = item["completions"]
        if not isinstance(completions, (list, tuple)) or not all(isinstance(c, str) for c in completions):
            raise ValueError(f"{where}: completions must be a list of strings")
        if len(completions) < 2:
            raise ValueError(f"{where}: needs at least 2 completions to rank, has {len(completions)}")
    return items


def _wrap(text: str, width: int, indent: str = "") -> str:
    """``text`` wrapped to ``width``, its own line breaks and blank lines kept, every line prefixed by ``indent``."""
    lines = []
    for line in text.expandtabs(4).splitlines() or [""]:
        lines += textwrap.wrap(line, width - len(indent), break_on_hyphens=False) or [""]
    return "\n".join((indent + line).rstrip() for line in lines)


def rank_in_terminal(items, save: Save, annotator: str = "human", input=None, output=None) -> int:
    """Ask for an order of each item's completions, one line per item; each ranking goes to ``save`` at once.

    ``input``/``output`` default to stdin/stdout. A line is an order (``3 1 4 2``, ties ``3=1 4 2``), ``s`` (skip:
    nothing saved) or ``q`` (stop); the end of the input and Ctrl-C stop too. Returns the number of items ranked.
    """
    items = _check_items(items)
    input = sys.stdin if input is None else input
    output = sys.stdout if output is None else output
    width = max(40, min(100, shutil.get_terminal_size((100, 24)).columns))
    ranked = skipped = 0
    isatty = getattr(input, "isatty", None)
    interactive = bool(isatty and isatty())

    def say(text: str = "", end: str = "\n") -> None:
        output.write(text + end)
        output.flush()

    try:
        for n, item in enumerate(items, 1):
            k = len(item["completions"])
            say("=" * width)
            say(f"prompt {n} of {len(items)}  (id {item['id']}, {k} completions)")
            say("-" * width)
            say(_wrap(item["prompt"], width))
            say("-" * width)
            for i, completion in enumerate(item["completions"], 1):
                if i > 1:
                    say()
                label = f"[{i}] "
                say(label + _wrap(completion, width, " " * len(label))[len(label):])
            say("-" * width)
            while True:
                say(f"order, best first (e.g. {' '.join(map(str, range(1, k + 1)))}; ties 1=2), "
                    "s = skip, q = quit: ", end="")
                line = input.readline()
                if line and not interactive:  # a piped answer: echoed, so that the transcript reads as typed
                    say(line.rstrip("\n"))
                if not line:  # end of the input
                    say()
                    say(f"end of input: stopped, {ranked} ranked")
                    return ranked
                answer = line.strip()
                if answer.lower() in ("q", "quit"):
                    say(f"stopped, {ranked} ranked")
                    return ranked
                if answer.lower() in ("s", "skip"):
                    skipped += 1
                    say("skipped")
                    break
                try:
                    ranks = parse_order(answer, k)
                except ValueError as e:
                    say(f"  not accepted: {e}")
                    continue
                save({"id": item["id"], "ranks": ranks, "annotator": annotator})
                ranked += 1
                say(f"saved: {format_order(ranks)} (ranks {' '.join(map(str, ranks))})")
                break
    except KeyboardInterrupt:
        say()
        say(f"interrupted: stopped, {ranked} ranked")
        return ranked
    say("=" * width)
    say(f"done: {ranked} ranked, {skipped} skipped")
    return ranked


def serve_ranking_page(items, save: Save, host: str = "127.0.0.1", port: int = 0, annotator: str = "web",
                       on_ready: Callable[[str], object] | None = None) -> int:
    """Serve the ranking page until every item is ranked or skipped (or Ctrl-C); returns the number ranked.

    Runs uvicorn in the calling thread. ``port=0`` picks a free port; once the server listens its URL is printed
    and passed to ``on_ready(url)``. Each ranking goes to ``save`` as soon as it is submitted.
    """
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.background import BackgroundTask

    items = _check_items(items)
    by_id = {str(item["id"]): item for item in items}
    handled: set[str] = set()  # ranked or skipped
    counts = {"ranked": 0, "skipped": 0}
    if not items:
        print("ranking page: nothing to rank", flush=True)
        return 0

    def state() -> dict:
        pending = next((item for item in items if str(item["id"]) not in handled), None)
        shown = None if pending is None else {key: pending[key] for key in ("id", "prompt", "completions")}
        return {"done": pending is None, "item": shown, **counts, "total": len(items)}

    def answer(status: int = 200, detail: str | None = None) -> JSONResponse:
        if detail is not None:
            return JSONResponse({"detail": detail}, status_code=status)
        finished = len(handled) == len(items)
        return JSONResponse(state(), background=BackgroundTask(stop) if finished else None)

    def stop() -> None:  # a background task: runs once the response has gone out
        app.state.server.should_exit = True

    async def target(request: Request) -> tuple[dict | None, JSONResponse | None]:
        try:
            body = await request.json()
        except ValueError:
            return None, answer(422, "the request body is not JSON")
        if not isinstance(body, dict) or "id" not in body:
            return None, answer(422, 'expected a JSON object with "id"')
        key = str(body["id"])
        if key not in by_id:
            return None, answer(404, f"no item with id {body['id']!r}")
        if key in handled:
            return None, answer(409, f"item {body['id']!r} was already ranked or skipped")
        return body, None

    app = FastAPI(title="hf-pipeline ranking", docs_url=None, redoc_url=None, openapi_url=None)

    # plain Starlette routes (the handler gets the Request): no signature for FastAPI to read, the JSON checked here
    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(PAGE, headers={"Cache-Control": "no-store"})

    async def next_item(request: Request) -> JSONResponse:
        return JSONResponse(state())

    async def rank(request: Request) -> JSONResponse:
        body, error = await target(request)
        if error is not None:
            return error
        item = by_id[str(body["id"])]
        try:
            ranks = check_ranks(body.get("ranks"), len(item["completions"]))
        except ValueError as e:
            return answer(422, str(e))
        try:
            save({"id": item["id"], "ranks": ranks, "annotator": annotator})
        except Exception as e:  # the item stays pending: the person can submit again
            logger.exception("could not save the ranking of %r", item["id"])
            return answer(500, f"could not save the ranking: {e}")
        handled.add(str(item["id"]))
        counts["ranked"] += 1
        return answer()

    async def skip(request: Request) -> JSONResponse:
        body, error = await target(request)
        if error is not None:
            return error
        handled.add(str(body["id"]))
        counts["skipped"] += 1
        return answer()

    app.add_route("/", page, methods=["GET"])
    app.add_route("/api/next", next_item, methods=["GET"])
    app.add_route("/api/rank", rank, methods=["POST"])
    app.add_route("/api/skip", skip, methods=["POST"])

    def ready(url: str) -> None:
        print(f"ranking page: {url} (Ctrl-C stops; what is ranked is kept)", flush=True)
        if on_ready is not None:
            on_ready(url)

    run_app(app, host, port, ready)
    print(f"ranking page stopped: {counts['ranked']} ranked, {counts['skipped']} skipped, "
          f"{len(items) - len(handled)} left", flush=True)
    return counts["ranked"]


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>Rank the completions</title>
<style>
:root { color-scheme: light dark; --accent: #2563eb; --muted: #6b7280; --card: #ffffff; --bg: #f3f4f6;
        --border: #d1d5db; --text: #111827; --bad: #b91c1c; }
@media (prefers-color-scheme: dark) {
  :root { --card: #1f2937; --bg: #111827; --border: #374151; --muted: #9ca3af; --text: #f3f4f6; --bad: #f87171; }
}
* { box-sizing: border-box; }
[hidden] { display: none !important; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; background: var(--bg);
       color: var(--text); }
header { position: sticky; top: 0; z-index: 2; display: flex; align-items: center; gap: 1rem;
         padding: .6rem 1.2rem; background: var(--card); border-bottom: 1px solid var(--border); }
header h1 { font-size: 1.05rem; margin: 0; flex: 1; }
#progress { font-variant-numeric: tabular-nums; color: var(--muted); }
main { max-width: 1280px; margin: 0 auto; padding: 1rem 1.2rem 6rem; }
.label { font-size: .8rem; text-transform: uppercase; letter-spacing: .05em; color: var(--muted); margin: 0 0 .3rem; }
.prompt { white-space: pre-wrap; overflow-wrap: anywhere; background: var(--card); border-left: 4px solid var(--accent);
          border-radius: 6px; padding: .8rem 1rem; margin: 0; font: inherit; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr)); gap: 1rem; margin-top: 1rem; }
.card { display: flex; flex-direction: column; gap: .5rem; background: var(--card); border: 2px solid var(--border);
        border-radius: 8px; padding: .7rem .9rem; cursor: pointer; user-select: text; }
.card:hover { border-color: var(--muted); }
.card.ranked { border-color: var(--accent); }
.card-head { display: flex; align-items: center; gap: .5rem; }
.card-head .name { font-weight: 600; flex: 1; }
.badge { min-width: 2.2rem; text-align: center; border-radius: 999px; padding: .05rem .5rem; font-weight: 700;
         background: var(--bg); color: var(--muted); border: 1px solid var(--border); }
.card.ranked .badge { background: var(--accent); color: #fff; border-color: var(--accent); }
.text { white-space: pre-wrap; overflow-wrap: anywhere; margin: 0; font: inherit; flex: 1; }
.ranks { display: flex; flex-wrap: wrap; gap: .3rem; align-items: center; }
.ranks span { color: var(--muted); font-size: .85rem; margin-right: .2rem; }
.ranks button { min-width: 2rem; padding: .15rem .45rem; border: 1px solid var(--border); border-radius: 5px;
                background: var(--bg); color: var(--text); cursor: pointer; font: inherit; }
.ranks button[aria-pressed="true"] { background: var(--accent); border-color: var(--accent); color: #fff; }
footer { position: fixed; bottom: 0; left: 0; right: 0; display: flex; align-items: center; gap: .8rem;
         padding: .6rem 1.2rem; background: var(--card); border-top: 1px solid var(--border); }
#message { flex: 1; color: var(--muted); }
#message.bad { color: var(--bad); }
footer button { font: inherit; padding: .4rem 1.1rem; border-radius: 6px; cursor: pointer;
                border: 1px solid var(--border); background: var(--bg); color: var(--text); }
footer button.primary { background: var(--accent); border-color: var(--accent); color: #fff; font-weight: 600; }
footer button:disabled { opacity: .45; cursor: not-allowed; }
#done { font-size: 1.2rem; text-align: center; padding: 3rem 1rem; }
</style>
</head>
<body>
<header><h1>Rank the completions, best first</h1><span id="progress" data-testid="progress">&ndash;</span></header>
<main>
  <section id="work" hidden>
    <p class="label">Prompt</p>
    <pre class="prompt" id="prompt" data-testid="prompt"></pre>
    <div class="cards" id="cards"></div>
  </section>
  <p id="done" data-testid="done" hidden></p>
</main>
<footer id="bar">
  <span id="message" data-testid="message" role="status">Loading&hellip;</span>
  <button id="skip" data-testid="skip" type="button">Skip</button>
  <button id="submit" data-testid="submit" type="button" class="primary" disabled>Submit</button>
</footer>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const HINT = "Click the cards best first, or pick each card's rank (1 = best; the same number on two cards is a tie).";
let item = null, ranks = [], busy = false;

async function call(method, path, body) {
  let response;
  try {
    response = await fetch(path, {method, headers: body ? {"Content-Type": "application/json"} : {},
                                  body: body ? JSON.stringify(body) : undefined, cache: "no-store"});
  } catch (e) {
    throw Object.assign(new Error("cannot reach the ranking server (has it stopped?)"), {status: 0});
  }
  let data = null;
  try { data = await response.json(); } catch (e) { /* not JSON */ }
  if (!response.ok) {
    const detail = data && data.detail;
    throw Object.assign(new Error(typeof detail === "string" ? detail : response.status + " " + response.statusText),
                        {status: response.status});
  }
  return data;
}

function say(text, bad) { $("message").textContent = text; $("message").classList.toggle("bad", !!bad); }

function show(state) {
  const handled = state.ranked + state.skipped;
  if (state.done) {
    item = null;
    $("progress").textContent = state.total + " / " + state.total;
    $("work").hidden = true;
    $("bar").hidden = true;
    $("done").hidden = false;
    $("done").textContent = "All done: " + state.ranked + " ranked, " + state.skipped +
      " skipped. The ranking server has stopped; you can close this page.";
    return;
  }
  item = state.item;
  ranks = item.completions.map(() => null);
  $("progress").textContent = (handled + 1) + " / " + state.total;
  $("prompt").textContent = item.prompt;
  const cards = $("cards");
  cards.replaceChildren();
  const k = item.completions.length;
  item.completions.forEach((text, i) => {
    const n = i + 1;
    const card = document.createElement("article");
    card.className = "card";
    card.dataset.testid = "completion-" + n;
    card.addEventListener("click", (event) => {
      if (event.target.closest(".ranks") || String(window.getSelection())) return;
      clickCard(i);
    });
    const head = document.createElement("div");
    head.className = "card-head";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = "Completion " + n;
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.dataset.testid = "badge-" + n;
    head.append(name, badge);
    const body = document.createElement("pre");
    body.className = "text";
    body.textContent = text;
    const group = document.createElement("div");
    group.className = "ranks";
    group.setAttribute("role", "group");
    group.setAttribute("aria-label", "rank of completion " + n);
    group.dataset.testid = "rank-" + n;
    const label = document.createElement("span");
    label.textContent = "rank";
    group.append(label);
    for (let r = 1; r <= k; r++) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = r;
      button.dataset.rank = r;
      button.title = r === 1 ? "best" : (r === k ? "worst" : "rank " + r);
      button.addEventListener("click", () => { ranks[i] = ranks[i] === r ? null : r; update(); });
      group.append(button);
    }
    card.append(head, body, group);
    cards.append(card);
  });
  $("work").hidden = false;
  update();
  say(HINT);
  window.scrollTo(0, 0);
}

function clickCard(i) {
  if (ranks[i] === null) {
    ranks[i] = 1 + ranks.filter((r) => r !== null).length;
  } else {  // clear it, and close the gap it leaves (ties kept)
    ranks[i] = null;
    const kept = ranks.filter((r) => r !== null);
    ranks = ranks.map((r) => r === null ? null : 1 + kept.filter((other) => other < r).length);
  }
  update();
}

function problem() {  // the server's rules (hf_pipeline.ranking_ui.check_ranks)
  if (ranks.some((r) => r === null)) return "rank every completion";
  for (const r of [...new Set(ranks)].sort((a, b) => a - b)) {
    const above = ranks.filter((other) => other < r).length;
    if (r !== above + 1) {
      const who = above ? above + " completion" + (above > 1 ? "s" : "") + " rank" : "no completion ranks";
      return "rank " + r + " should be " + (above + 1) + ": " + who +
        " above it (tied completions share a rank and the next rank skips, e.g. 1 2 2 4)";
    }
  }
  return null;
}

function update() {
  document.querySelectorAll(".card").forEach((card, i) => {
    const r = ranks[i];
    card.classList.toggle("ranked", r !== null);
    card.querySelector(".badge").textContent = r === null ? "\\u2013" : "#" + r;
    card.querySelectorAll(".ranks button").forEach((b) => {
      b.setAttribute("aria-pressed", String(+b.dataset.rank === r));
    });
  });
  const why = problem();
  $("submit").disabled = busy || ranks.some((r) => r === null);
  if (why && !ranks.some((r) => r === null)) say(why, true); else if (!busy) say(HINT);
}

async function send(path, body) {
  if (busy || !item) return;
  busy = true;
  $("submit").disabled = $("skip").disabled = true;
  say("Saving\\u2026");
  try {
    show(await call("POST", path, body));
  } catch (e) {
    say(e.message, true);
    if (e.status === 404 || e.status === 409) {  // ranked elsewhere (another tab): move on
      try { show(await call("GET", "api/next")); } catch (e2) { say(e2.message, true); }
    }
  } finally {
    busy = false;
    $("skip").disabled = false;
    if (item) $("submit").disabled = ranks.some((r) => r === null);
  }
}

$("submit").addEventListener("click", () => {
  const why = problem();
  if (why) { say(why, true); return; }
  send("api/rank", {id: item.id, ranks: ranks});
});
$("skip").addEventListener("click", () => send("api/skip", {id: item.id}));

call("GET", "api/next").then(show, (e) => say(e.message, true));
</script>
</body>
</html>
"""
