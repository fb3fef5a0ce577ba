"""The ranking UIs: parse_order, the terminal (a real subprocess on a pipe) and the web page (uvicorn + Chromium)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from hf_pipeline.preferences import check_ranks
from hf_pipeline.ranking_ui import format_order, parse_order, rank_in_terminal, serve_ranking_page

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
LONG = ("The mitochondria is the powerhouse of the cell, and this completion keeps going for a while so that it has "
        "to be wrapped over several lines of a narrow terminal without losing a single word of what it says.")
ITEMS = [
    {"id": "a", "prompt": "Name a colour.", "completions": ["Blue.", "Seven.", "Red, like a ripe tomato.", "blue"]},
    {"id": "b", "prompt": "What is 2 + 2?", "completions": ["4", "5", "four"]},
    {"id": "c", "prompt": "Explain the cell.\nIn one sentence.", "completions": [LONG, "Cells are small.", "?"]},
    {"id": "d", "prompt": "Say hi.", "completions": ["hi", "hello"]},
]


@pytest.mark.parametrize("text, k, ranks", [
    ("3 1 4 2", 4, [2, 4, 1, 3]),
    ("1 2 3 4", 4, [1, 2, 3, 4]),
    ("3=1 4 2", 4, [1, 4, 1, 3]),
    ("3 = 1, 4,2", 4, [1, 4, 1, 3]),
    ("2,1", 2, [2, 1]),
    ("  1=2=3  ", 3, [1, 1, 1]),
    ("1 2=3 4", 4, [1, 2, 2, 4]),
])
def test_parse_order(text, k, ranks):
    assert parse_order(text, k) == ranks
    assert check_ranks(ranks, k) == ranks
    assert parse_order(format_order(ranks), k) == ranks


@pytest.mark.parametrize("text, message", [
    ("1 2 3", "completion 4 is missing"),
    ("1 2", "completions 3 and 4 are missing"),
    ("1 2 3 5", "5 is not between 1 and 4"),
    ("0 1 2 3 4", "0 is not between 1 and 4"),
    ("1 1 2 3 4", "completion 1 is given more than once"),
    ("1 2=2 3 4", "completion 2 is given more than once"),
    ("1 2 x 3 4", "'x' is not a completion number"),
    ("1.5 2 3 4", "'1.5' is not a completion number"),
    ("1 2 3 4=", "'=' joins two completion numbers"),
    ("", "enter an order"),
    ("   ", "enter an order"),
])
def test_parse_order_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_order(text, 4)


@pytest.mark.parametrize("ranks, message", [
    ([1, 2, 2, 3], "rank 3 should be 4"),
    ([2, 2, 3, 4], "rank 2 should be 1"),
    ([1, 2, 3], "expected 4 ranks"),
    ([1, 2, 3, 5], "not between 1 and 4"),
    ([1, 2, "3", 4], "not an integer"),
    ([1, True, 3, 4], "not an integer"),
    ("1234", "must be a list"),
])
def test_check_ranks_errors(ranks, message):
    with pytest.raises(ValueError, match=message):
        check_ranks(ranks, 4)


TERMINAL_SCRIPT = """
import json, sys
from hf_pipeline.ranking_ui import rank_in_terminal
items = json.load(open(sys.argv[1]))
def save(ranking):
    with open(sys.argv[2], "a") as f:
        f.write(json.dumps(ranking) + "\\n")
n = rank_in_terminal(items, save, annotator="tester")
print("RESULT", json.dumps({"n": n, "web_imported": "fastapi" in sys.modules or "uvicorn" in sys.modules}))
"""


def test_terminal_in_a_subprocess(tmp_path):
    items_file, saved_file = tmp_path / "items.json", tmp_path / "rankings.jsonl"
    items_file.write_text(json.dumps(ITEMS))
    # a: an invalid line (a repeat), then an order; b: skipped; c: ties with commas; d: the input ends
    lines = "1 1 2 3\n3 1 4 2\ns\n2=1, 3\n"
    env = {**os.environ, "COLUMNS": "60", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", TERMINAL_SCRIPT, str(items_file), str(saved_file)], input=lines,
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    result = json.loads(out.rsplit("RESULT ", 1)[1])
    assert result == {"n": 2, "web_imported": False}
    assert [json.loads(line) for line in saved_file.read_text().splitlines()] == [
        {"id": "a", "ranks": [2, 4, 1, 3], "annotator": "tester"},
        {"id": "c", "ranks": [1, 1, 3], "annotator": "tester"},
    ]
    assert "not accepted: completion 1 is given more than once" in out
    assert out.count("prompt 1 of 4") == 1 and "prompt 2 of 4" in out and "prompt 4 of 4" in out
    assert "skipped" in out and "end of input" in out
    # item a: the prompt asked twice (the invalid line), each completion numbered
    assert out.split("prompt 2 of 4")[0].count("order, best first") == 2
    assert "[3] Red, like a ripe tomato." in out
    # the long completion wrapped to the 60 columns, continuation lines indented under the text, no word lost
    block = out.split("[1] The mitochondria")[1].split("[2]")[0]
    wrapped = ("[1] The mitochondria" + block).strip().splitlines()
    assert len(wrapped) >= 3 and all(len(line) <= 60 for line in wrapped)
    assert all(line.startswith("    ") for line in wrapped[1:])
    assert " ".join(line.strip() for line in wrapped)[len("[1] "):] == LONG
    assert "Explain the cell.\nIn one sentence." in out  # the prompt's own line break kept


def test_terminal_quit_and_reask():
    saved, out = [], io.StringIO()
    n = rank_in_terminal(ITEMS, saved.append, input=io.StringIO("\n2 1 3 5\n1 2 3 4\nq\n3 2 1\n"), output=out)
    assert n == 1 and saved == [{"id": "a", "ranks": [1, 2, 3, 4], "annotator": "human"}]
    text = out.getvalue()
    assert "not accepted: enter an order" in text and "not accepted: 5 is not between 1 and 4" in text
    assert "stopped, 1 ranked" in text and "prompt 3 of 4" not in text


def test_bad_items_are_refused():
    with pytest.raises(ValueError, match="at least 2 completions"):
        rank_in_terminal([{"id": "x", "prompt": "p", "completions": ["only one"]}], print, input=io.StringIO())
    with pytest.raises(ValueError, match="used twice"):
        rank_in_terminal([ITEMS[0], ITEMS[0]], print, input=io.StringIO())


class Served:
    """``serve_ranking_page`` in a thread: ``url`` once it listens, ``result`` once it ended by itself."""

    def __init__(self, items, **kwargs):
        self.saved, self.result, self.url = [], [], None
        ready = threading.Event()

        def on_ready(url):
            self.url = url
            ready.set()

        self.thread = threading.Thread(
            target=lambda: self.result.append(serve_ranking_page(items, self.saved.append, port=0, on_ready=on_ready,
                                                                 **kwargs)), daemon=True)
        self.thread.start()
        assert ready.wait(30), "the ranking server did not start"
        assert self.url.startswith("http://127.0.0.1:") and not self.url.endswith(":0/")

    def request(self, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def ended(self, timeout=10):
        self.thread.join(timeout)
        return not self.thread.is_alive()


def test_api_validates_and_stops_by_itself():
    served = Served(ITEMS[:2])
    status, state = served.request("api/next")
    assert status == 200 and state == {"done": False, "item": ITEMS[0], "ranked": 0, "skipped": 0, "total": 2}
    status, error = served.request("api/rank", {"id": "nope", "ranks": [1, 2, 3, 4]})
    assert status == 404 and "nope" in error["detail"]
    for ranks, message in [([1, 2, 2, 3], "rank 3 should be 4"), ([1, 2, 3], "expected 4 ranks"),
                           ([0, 1, 2, 3], "not between 1 and 4"), (None, "must be a list")]:
        status, error = served.request("api/rank", {"id": "a", "ranks": ranks})
        assert status == 422 and message in error["detail"], (ranks, error)
    status, error = served.request("api/rank", {"ranks": [1, 2, 3, 4]})
    assert status == 422 and "id" in error["detail"]
    assert served.saved == []
    status, state = served.request("api/rank", {"id": "a", "ranks": [1, 2, 2, 4]})
    assert status == 200 and state["item"]["id"] == "b" and state["ranked"] == 1 and not state["done"]
    status, error = served.request("api/rank", {"id": "a", "ranks": [1, 2, 3, 4]})
    assert status == 409
    status, state = served.request("api/skip", {"id": "b"})
    assert status == 200 and state == {"done": True, "item": None, "ranked": 1, "skipped": 1, "total": 2}
    assert served.ended(), "the server did not stop once every item was handled"
    assert served.result == [1]
    assert served.saved == [{"id": "a", "ranks": [1, 2, 2, 4], "annotator": "web"}]


def test_ctrl_c_stops_the_server(tmp_path):
    script = ("import sys; from hf_pipeline.ranking_ui import serve_ranking_page; "
              "items = [{'id': 'a', 'prompt': 'p', 'completions': ['x', 'y']}]; "
              "print('RESULT', serve_ranking_page(items, print), flush=True)")
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        first = process.stdout.readline()
        assert first.startswith("ranking page: http://127.0.0.1:") and "(Ctrl-C stops; what is ranked is kept)" in first
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "ranking page stopped: 0 ranked, 0 skipped, 1 left" in out and "RESULT 0" in out


def test_page_in_chromium(tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian's chromium package drives the browser test)")
    from playwright.sync_api import expect, sync_playwright

    items = [ITEMS[0], {"id": "e", "prompt": "Pick the best greeting.", "completions": ["Hello!", "Hi", "Hey", "Yo"]}]
    served = Served(items, annotator="clicker")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.set_default_timeout(10_000)
            requested = []
            page.on("request", lambda request: requested.append(request.url))
            page.goto(served.url)
            progress, submit = page.get_by_test_id("progress"), page.get_by_test_id("submit")
            expect(progress).to_have_text("1 / 2")
            expect(page.get_by_test_id("prompt")).to_have_text("Name a colour.")
            expect(page.get_by_test_id("completion-3")).to_contain_text("Red, like a ripe tomato.")
            screenshot = tmp_path / "ranking_page.png"
            page.screenshot(path=str(screenshot), full_page=True)
            assert screenshot.stat().st_size > 1000 and screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

            # item a: click the cards best first (3 1 4 2); a ranked card clicked again is cleared, the gap closed
            expect(submit).to_be_disabled()
            for n in (3, 2, 1):
                page.get_by_test_id(f"completion-{n}").locator(".card-head").click()
            page.get_by_test_id("completion-2").locator(".card-head").click()  # clears 2: 3 -> #1, 1 -> #2
            expect(page.get_by_test_id("badge-1")).to_have_text("#2")
            for n in (4, 2):
                page.get_by_test_id(f"completion-{n}").locator(".card-head").click()
            for n, badge in ((1, "#2"), (2, "#4"), (3, "#1"), (4, "#3")):
                expect(page.get_by_test_id(f"badge-{n}")).to_have_text(badge)
            expect(page.locator('[data-testid="rank-3"] button[data-rank="1"]')).to_have_attribute("aria-pressed",
                                                                                                 "true")
            submit.click()

            # item e: the rank buttons, with a tie (1 2 2 4); an inconsistent tie is refused on the page first
            expect(progress).to_have_text("2 / 2")
            expect(page.get_by_test_id("prompt")).to_have_text("Pick the best greeting.")
            for n, rank in ((1, 1), (2, 2), (3, 2), (4, 3)):
                page.locator(f'[data-testid="rank-{n}"] button[data-rank="{rank}"]').click()
            expect(page.get_by_test_id("message")).to_contain_text("rank 3 should be 4")
            submit.click()
            expect(page.get_by_test_id("message")).to_contain_text("rank 3 should be 4")
            assert len(served.saved) == 1
            page.locator('[data-testid="rank-4"] button[data-rank="4"]').click()
            page.screenshot(path=str(tmp_path / "ranking_tie.png"))
            submit.click()

            done = page.get_by_test_id("done")
            expect(done).to_be_visible()
            expect(done).to_contain_text("All done: 2 ranked, 0 skipped")
            expect(progress).to_have_text("2 / 2")
            expect(submit).to_be_hidden()
            page.screenshot(path=str(tmp_path / "ranking_done.png"))
        finally:
            browser.close()
    assert served.ended(), "the server did not stop once every item was ranked"
    assert served.result == [2]
    assert served.saved == [{"id": "a", "ranks": [2, 4, 1, 3], "annotator": "clicker"},
                            {"id": "e", "ranks": [1, 2, 2, 4], "annotator": "clicker"}]
    assert requested and all(url.startswith(served.url) for url in requested), requested  # self-contained page
