"""Chat serving latency and throughput: ``hf-pipeline serve`` against ``transformers serve`` on the same model.

    python benchmarks/serve.py                                  # runs/tiny/sft
    python benchmarks/serve.py runs/tiny/sft --requests 8 --clients 4 --per_client 2 --max_tokens 128 --threads 1

Each server runs in a subprocess of its own, offline (``HF_HUB_OFFLINE=1``), one after the other (never both at
once), is warmed up with two requests and then asked, over HTTP, streamed (``stream_options.include_usage`` for the
token counts):

    single      --requests requests one after another: time to first token (request sent -> first content chunk)
                and tokens/s of each reply (completion tokens after the first / time from first to last chunk);
                medians
    concurrent  --clients clients at once, each sending --per_client requests in turn: aggregate tokens/s (all
                completion tokens / wall time) and each request's time to first token (median and max)

Both get the same messages: the model's default system message with its ``Tools: none.`` line already written (so
both render the same prompt; ours adds it by itself), a question, temperature 1 with seed i for request i (the tiny
model's greedy replies are a few tokens long: too short to time a rate). A greedy request to both first checks that
they say the same thing. ``transformers serve`` needs ``transformers[serving]`` (fastapi, uvicorn, openai, pydantic,
rich, accelerate, kernels); it is looked for beside this Python (``--transformers_python`` names another, e.g. a side
venv's); if it is missing or does not start offline, the benchmark says so and prints our figures alone. The goal
for ours on the tiny model: first token under 300 ms, at least 20 tokens/s. ``--threads`` sets ``OMP_NUM_THREADS``
for both servers (torch's default is one thread per core; on a busy 2-core machine one thread can be faster).
Last line: ``serve ttft_ms ours=<a> transformers=<b> tokens_per_s ours=<c> transformers=<d> ratio=<c/d>
concurrent_tokens_per_s ours=<e> transformers=<f>``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ["Tell me about the history of Rome.", "Write a long story about a dragon.",
             "Describe your favourite city.", "What do you know about the sea?"]


def cpu() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    return platform.processor()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server subprocess: started, waited for (``/health``), stopped with Ctrl-C."""

    def __init__(self, name: str, command: list[str], url: str | None, env: dict):
        self.name, self.url = name, url
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE if url is None else self.log,
                                        stderr=self.log, text=True, cwd=ROOT, env=env)

    def wait(self, timeout: float = 180) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        if self.url is None:  # ours prints its URL once it listens
            line = self.process.stdout.readline()
            match = re.search(r"at (http://\S+/) ", line)
            if not match:
                raise RuntimeError(f"{self.name} did not start: {line}{self.output()}")
            self.url = match.group(1)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.process.returncode}): {self.output()}")
            try:
                if httpx.get(self.url + "health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} did not answer /health in {timeout:.0f} s: {self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()[-2000:]

    def stop(self) -> None:
        import signal

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def stream_one(client, url: str, model: str, messages: list[dict], max_tokens: int, temperature: float,
               seed: int | None) -> dict:
    """One streamed request: ``{"ttft", "tokens", "rate", "seconds", "text"}``."""
    body = {"model": model, "messages": messages, "stream": True, "stream_options": {"include_usage": True},
            "max_tokens": max_tokens, "temperature": temperature, "top_p": 1.0}
    if seed is not None:
        body["seed"] = seed
    start = time.perf_counter()
    first = last = None
    text, tokens = [], None
    with client.stream("POST", url + "v1/chat/completions", json=body, timeout=300) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {response.read()[:500]}")
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    last = time.perf_counter()
                    first = first or last
                    text.append(choice["delta"]["content"])
    end = time.perf_counter()
    tokens = tokens if tokens is not None else len(text)
    rate = (tokens - 1) / (last - first) if first and last and last > first and tokens > 1 else float("nan")
    return {"ttft": (first or end) - start, "tokens": tokens, "rate": rate, "seconds": end - start,
            "text": "".join(text)}


def measure(server: Server, args, messages_for, greedy_messages: list[dict]) -> dict:
    import httpx

    url = server.url
    with httpx.Client() as client:
        model = client.get(url + "v1/models").json()["data"][0]["id"]
        for seed in range(2):  # warm-up
            stream_one(client, url, model, messages_for(seed), args.max_tokens, 1.0, seed)
        greedy = stream_one(client, url, model, greedy_messages, args.max_tokens, 0.0, None)["text"]
        single = [stream_one(client, url, model, messages_for(i), args.max_tokens, 1.0, i)
                  for i in range(args.requests)]

    results: list[dict] = []
    lock = threading.Lock()

    def client_thread(c: int) -> None:
        with httpx.Client() as own:
            for r in range(args.per_client):
                seed = 1000 + c * args.per_client + r
                one = stream_one(own, url, model, messages_for(seed), args.max_tokens, 1.0, seed)
                with lock:
                    results.append(one)

    threads = [threading.Thread(target=client_thread, args=(c,)) for c in range(args.clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    rates = [r["rate"] for r in single if r["rate"] == r["rate"]]
    return {
        "greedy": greedy,
        "ttft_ms": 1000 * statistics.median(r["ttft"] for r in single),
        "tokens_per_s": statistics.median(rates) if rates else float("nan"),
        "tokens": statistics.median(r["tokens"] for r in single),
        "e2e_tokens_per_s": sum(r["tokens"] for r in single) / sum(r["seconds"] for r in single),
        "concurrent_tokens_per_s": sum(r["tokens"] for r in results) / wall,
        "concurrent_ttft_ms": 1000 * statistics.median(r["ttft"] for r in results),
        "concurrent_ttft_max_ms": 1000 * max(r["ttft"] for r in results),
        "concurrent_requests": len(results),
    }


def report(name: str, m: dict, args) -> None:
    print(f"  {name:<13} single: first token {m['ttft_ms']:7.1f} ms, {m['tokens_per_s']:6.1f} tokens/s "
          f"(median of {args.requests}, median reply {m['tokens']:.0f} tokens; end to end "
          f"{m['e2e_tokens_per_s']:.1f} tokens/s)")
    print(f"  {'':<13} {args.clients} clients: {m['concurrent_tokens_per_s']:6.1f} tokens/s in all, first token "
          f"median {m['concurrent_ttft_ms']:.0f} ms, max {m['concurrent_ttft_max_ms']:.0f} ms "
          f"({m['concurrent_requests']} requests)")


def transformers_command(python: str) -> list[str] | None:
    script = Path(python).parent / "transformers"
    check = subprocess.run([python, "-c", "from transformers.utils.import_utils import is_serve_available as a; "
                                          "import sys; sys.exit(0 if a() else 1)"], capture_output=True)
    if check.returncode != 0 or not script.exists():
        return None
    return [str(script), "serve"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="runs/tiny/sft")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--per_client", type=int, default=2)
    parser.add_argument("--max_tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for both servers.")
    parser.add_argument("--transformers_python", default=sys.executable,
                        help="The Python whose transformers[serving] runs `transformers serve`.")
    parser.add_argument("--skip_transformers", action="store_true")
    args = parser.parse_args()

    model = Path(args.model)
    config = json.loads((model / "chat_config.json").read_text()) if (model / "chat_config.json").is_file() else {}
    system = config.get("system_message", "")
    if config.get("tools"):
        system = f"{system} {config['tools'].get('off', 'Tools: none.')}"

    head = [{"role": "system", "content": system}] if system else []  # an empty one: ours sends none, the peer ""

    def messages_for(i: int) -> list[dict]:
        return [*head, {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]

    greedy_messages = [*head, {"role": "user", "content": "Hi!"}]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    print(f"CPU: {cpu()}; model {args.model}; threads {args.threads or 'torch default'}; max_tokens {args.max_tokens}")

    ours = Server("hf-pipeline serve", [sys.executable, "-m", "hf_pipeline", "serve", str(model), "--port", "0",
                                        "--max_tokens_limit", str(max(args.max_tokens, 2048))], None, env)
    try:
        ours.wait()
        figures = {"ours": measure(ours, args, messages_for, greedy_messages)}
    finally:
        ours.stop()
    report("hf-pipeline", figures["ours"], args)

    peer_note = None
    command = None if args.skip_transformers else transformers_command(args.transformers_python)
    if args.skip_transformers:
        peer_note = "skipped (--skip_transformers)"
    elif command is None:
        peer_note = (f"not available: {args.transformers_python} has no transformers[serving] "
                     "(try a side venv and --transformers_python)")
    else:
        port = free_port()
        peer = Server("transformers serve", [*command, str(model), "--host", "127.0.0.1", "--port", str(port),
                                             "--log-level", "warning"], f"http://127.0.0.1:{port}/", env)
        try:
            peer.wait()
            figures["transformers"] = measure(peer, args, messages_for, greedy_messages)
        except Exception as e:  # e.g. it tried to reach the Hub: say so, print ours alone
            peer_note = f"could not run offline: {str(e).strip().splitlines()[-1][:300] if str(e).strip() else e}"
        finally:
            peer.stop()
    if "transformers" in figures:
        report("transformers", figures["transformers"], args)
        same = figures["ours"]["greedy"] == figures["transformers"]["greedy"]
        print(f"  greedy reply to 'Hi!' identical: {same} ({figures['ours']['greedy']!r}"
              + ("" if same else f" vs {figures['transformers']['greedy']!r}") + ")")
    else:
        print(f"  transformers serve: {peer_note}")
    o, t = figures["ours"], figures.get("transformers")
    if t:
        print(f"serve ttft_ms ours={o['ttft_ms']:.1f} transformers={t['ttft_ms']:.1f} "
              f"tokens_per_s ours={o['tokens_per_s']:.1f} transformers={t['tokens_per_s']:.1f} "
              f"ratio={o['tokens_per_s'] / t['tokens_per_s']:.2f} "
              f"concurrent_tokens_per_s ours={o['concurrent_tokens_per_s']:.1f} "
              f"transformers={t['concurrent_tokens_per_s']:.1f}")
    else:
        print(f"serve ttft_ms ours={o['ttft_ms']:.1f} tokens_per_s ours={o['tokens_per_s']:.1f} "
              f"concurrent_tokens_per_s ours={o['concurrent_tokens_per_s']:.1f}")


if __name__ == "__main__":
    main()
