"""Push and pull of stage artifacts through a real Hub-compatible server on loopback (tests/hub_server.py)."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from huggingface_hub import HfApi

from conftest import ROOT, SHAKESPEARE, SHARED_DATA, run_cli
from hub_server import HubServer
from hf_pipeline.hub import SCRUBBED_FILES


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with HubServer(tmp_path_factory.mktemp("hub")) as server:
        yield server


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and ".cache" not in p.parts}


def test_push_then_pull_a_model_stage_with_its_model_card(tiny_run, hub, tmp_path):
    env = hub.env(tmp_path / "hf")
    stage = tiny_run / "pretrain"
    pushed = run_cli("push", stage, "--repo-id", "me/tiny-base", env=env)
    assert pushed.returncode == 0, pushed.stderr[-2000:]
    assert not (stage / "README.md").exists()  # the card is uploaded, the local folder is left as it was

    pulled = run_cli("pull", "me/tiny-base", "--to", tmp_path / "pulled", env=env)
    assert pulled.returncode == 0, pulled.stderr[-2000:]
    got = _files(tmp_path / "pulled")
    for name, data in _files(stage).items():
        if name == "training_args.bin":
            assert name not in got  # a pickle: never uploaded
        elif name == "config.yaml":  # uploaded with the local paths shortened
            config = yaml.safe_load(data)
            config["output_dir"] = "RUN"
            config["corpus"][0]["path"] = SHAKESPEARE.name
            assert yaml.safe_load(got[name]) == config
        else:
            assert got[name] == data, name
    card = got["README.md"].decode()
    header = yaml.safe_load(card.split("---")[1])
    assert header["library_name"] == "transformers" and "hf-pipeline-pretrain" in header["tags"]
    metrics = json.loads((stage / "metrics.json").read_text())
    assert "| heldout_bpb |" in card and f"{metrics['heldout_bpb']:.4g}" in card
    assert "depth: 2" in card and 'AutoModelForCausalLM.from_pretrained("me/tiny-base")' in card


def test_artifacts_load_by_hub_id_where_a_path_is_expected(tiny_run, hub, tmp_path):
    env = hub.env(tmp_path / "hf")
    assert run_cli("push", tiny_run / "tokenizer", "--repo-id", "me/tiny-tok", env=env).returncode == 0
    assert run_cli("push", tiny_run / "pretrain", "--repo-id", "me/tiny-lm", env=env).returncode == 0

    generated = run_cli("generate", "me/tiny-lm", "--prompt", "ROMEO:", "--max_new_tokens", "5", "--temperature",
                        "0", "--no_stream", env=env)
    assert generated.returncode == 0, generated.stderr[-2000:]
    local = run_cli("generate", tiny_run / "pretrain", "--prompt", "ROMEO:", "--max_new_tokens", "5",
                    "--temperature", "0", "--no_stream")
    assert generated.stdout == local.stdout  # the same weights, from the Hub

    trained = run_cli("pretrain", "--output_dir", tmp_path / "run", "--tokenizer", "me/tiny-tok", "--corpus",
                      SHAKESPEARE, "--depth", "1", "--aspect_ratio", "32", "--head_dim", "32", "--seq_len", "32",
                      "--batch_size", "4", "--max_steps", "2", "--num_proc", "1", env=env)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "pretrain" / "metrics.json").read_text())["steps"] == 2


def test_push_refuses_an_incomplete_stage_and_pull_names_a_missing_repo(tiny_run, hub, tmp_path):
    partial = tmp_path / "pretrain.incomplete"
    partial.mkdir()
    env = hub.env(tmp_path / "hf")
    out = run_cli("push", partial, "--repo-id", "me/partial", env=env)
    assert out.returncode == 2 and "did not finish" in out.stderr
    assert not HfApi(endpoint=hub.url, token="x").repo_exists("me/partial")
    missing = run_cli("pull", "me/does-not-exist", "--to", tmp_path / "x", env=env)
    assert missing.returncode == 2 and "me/does-not-exist" in missing.stderr.strip().splitlines()[-1]


def test_push_then_pull_the_data_stage_as_a_dataset_repo(web_run, hub, tmp_path):
    import datasets

    env = hub.env(tmp_path / "hf")
    pushed = run_cli("push", web_run / "data", "--repo-id", "me/tiny-web", env=env)
    assert pushed.returncode == 0, pushed.stderr[-2000:]
    pulled = run_cli("pull", "me/tiny-web", "--repo-type", "dataset", "--to", tmp_path / "pulled", env=env)
    assert pulled.returncode == 0, pulled.stderr[-2000:]
    card = (tmp_path / "pulled" / "README.md").read_text()
    assert 'load_dataset("me/tiny-web")' in card and "docs_out" in card
    original = datasets.load_dataset(str(web_run / "data"), split="train")
    copy = datasets.load_dataset(str(tmp_path / "pulled"), split="train")
    assert sorted(copy["id"]) == sorted(original["id"]) and sorted(copy["text"]) == sorted(original["text"])


# ---- reliability: every expected failure is one line on stderr, exit status 2, no traceback -------------------------


def _one_line_error(out) -> str:
    """The command failed as a user error: exit status 2 and a single stderr line, returned without its prefix."""
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and "Traceback" not in out.stderr and len(lines) == 1, out.stderr[-3000:]
    assert lines[0].startswith("hf-pipeline: error: "), lines
    return lines[0].removeprefix("hf-pipeline: error: ")


def _closed_port() -> int:
    with socket.socket() as s:  # bound, then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_push_and_pull_say_in_one_line_that_the_hub_is_unreachable(tiny_run, hub, tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}"
    env = {**hub.env(tmp_path / "hf"), "HF_ENDPOINT": url}
    pushed = run_cli("push", tiny_run / "tokenizer", "--repo-id", "me/tok", env=env)
    assert _one_line_error(pushed) == f"push: the Hub at {url} is unreachable (connection refused)"
    pulled = run_cli("pull", "me/tok", "--to", tmp_path / "pulled", env=env)
    assert _one_line_error(pulled) == f"pull: the Hub at {url} is unreachable (connection refused)"


@pytest.mark.parametrize("repo_id", ["a/b/c", "../x"])
def test_push_and_pull_refuse_an_invalid_repo_id_in_one_line(tiny_run, hub, tmp_path, repo_id):
    env = hub.env(tmp_path / "hf")
    for command in (["push", tiny_run / "tokenizer", "--repo-id", repo_id], ["pull", repo_id]):
        message = _one_line_error(run_cli(*command, env=env))
        assert message.startswith(f"{command[0]}: invalid repo id '{repo_id}' (expected 'name' or 'namespace/name'")
    assert not (hub.root / "models" / "a").exists()


def test_pull_names_a_missing_repo_a_missing_revision_and_a_file_given_as_folder(tiny_run, hub, tmp_path):
    env = hub.env(tmp_path / "hf")
    missing = _one_line_error(run_cli("pull", "me/nope", "--to", tmp_path / "x", env=env))
    assert missing == f"pull: no model repo 'me/nope' on {hub.url} (a dataset? --repo-type dataset)"
    missing = _one_line_error(run_cli("pull", "me/nope", "--repo-type", "dataset", env=env))
    assert missing == f"pull: no dataset repo 'me/nope' on {hub.url} (a model? --repo-type model)"

    HfApi(endpoint=hub.url, token="x").create_repo("me/one-commit")
    revision = _one_line_error(run_cli("pull", "me/one-commit", "--revision", "v2", env=env))
    assert revision == f"pull: no revision 'v2' in model repo 'me/one-commit' on {hub.url}"

    a_file = tmp_path / "x.txt"
    a_file.write_text("keep me\n")
    to_file = _one_line_error(run_cli("pull", "me/one-commit", "--to", a_file, env=env))
    assert to_file == f"pull: --to {a_file} is a file, not a folder" and a_file.read_text() == "keep me\n"


class _RefusingHub(BaseHTTPRequestHandler):
    """A Hub that takes no token: 401 to every read, 403 to every write (as huggingface.co answers a bad token)."""

    protocol_version = "HTTP/1.1"

    def _refuse(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status = 401 if self.command in ("GET", "HEAD") else 403
        message = "Invalid credentials in Authorization header" if status == 401 else "You have no write access"
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Error-Message", message)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _refuse

    def log_message(self, *args):
        pass


def test_push_and_pull_say_not_authorised_when_the_hub_refuses_the_token(tiny_run, hub, tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RefusingHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    env = {**hub.env(tmp_path / "hf"), "HF_ENDPOINT": url}
    try:
        pushed = _one_line_error(run_cli("push", tiny_run / "tokenizer", "--repo-id", "me/tok", env=env))
        pulled = _one_line_error(run_cli("pull", "me/tok", env=env))
    finally:
        server.shutdown()
        server.server_close()
    assert pushed == (f"push: not authorised: HF_TOKEN? ({url} answered 403 for model repo 'me/tok': "
                      "You have no write access)")
    assert pulled == (f"pull: not authorised: HF_TOKEN? ({url} answered 401 for model repo 'me/tok': "
                      "Invalid credentials in Authorization header)")


# ---- privacy: no pickle and no local path of this machine leaves it -----------------------------------------------


def _is_pickle(data: bytes) -> bool:
    if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return True
    if data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return any(name.endswith(".pkl") for name in archive.namelist())
    return False


def test_push_uploads_no_pickle_and_no_local_path_and_leaves_the_folder_alone(tiny_run, hub, tmp_path):
    """An SFT-like stage folder (a copy of the real pretrain stage) whose records name this machine's paths."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path / "run"
    stage = run / "sft"
    shutil.copytree(tiny_run / "pretrain", stage)
    shutil.copytree(tiny_run / "tokenizer", run / "tokenizer")
    assert (stage / "training_args.bin").is_file()  # written by the real Trainer
    torch.save({"state": {}, "param_groups": []}, stage / "optimizer.pt")
    torch.save({"python": [1, 2]}, stage / "rng_state.pth")
    torch.save({"step": 3}, stage / "extra_state.bin")  # a pickle by content, whatever its name
    (stage / "notes.pkl").write_bytes(b"\x80\x04K\x01.")
    home = Path.home()
    config = yaml.safe_load((stage / "config.yaml").read_text())
    config.update(stage="sft", output_dir=str(run), model=str(run / "pretrain"),
                  data_files=[str(home / "chats" / "mine.jsonl"), str(ROOT / "recipes" / "x.jsonl")],
                  resume_from=str(tiny_run / "pretrain"))
    (stage / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    metrics = json.loads((stage / "metrics.json").read_text())
    metrics.update(start_model=str(run / "pretrain"), resumed_from=str(run / "sft.incomplete" / "checkpoint-20"))
    (stage / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    (stage / "chat_config.json").write_text(json.dumps({"system_message": f"Files are in {ROOT}/data.",
                                                        "assistant_name": "tiny"}))
    (stage / "samples.json").write_text(json.dumps({"before": [f"see {SHAKESPEARE}"], "after": ["ROMEO: a/b"]}))
    before = _files(run)

    env = hub.env(tmp_path / "hf")
    pushed = run_cli("push", stage, "--repo-id", "me/tiny-sft", env=env, cwd=ROOT)
    assert pushed.returncode == 0, pushed.stderr[-2000:]
    assert _files(run) == before  # nothing written to, or removed from, the local folder

    pulled = tmp_path / "pulled"
    out = run_cli("pull", "me/tiny-sft", "--to", pulled, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    got = _files(pulled)  # every file of the repo
    assert not {"training_args.bin", "optimizer.pt", "rng_state.pth", "extra_state.bin", "notes.pkl"} & set(got)
    assert {"model.safetensors", "config.json", "tokenizer.json", "config.yaml", "metrics.json", "chat_config.json",
            "samples.json", "log_history.json", "README.md"} <= set(got)
    local = [str(tmp_path), str(tiny_run), str(home), os.getcwd(), str(ROOT), str(SHARED_DATA)]
    for name, data in got.items():
        assert not _is_pickle(data), name
        for path in local:
            assert path.encode() not in data, (name, path)

    config = yaml.safe_load(got["config.yaml"])
    assert config["output_dir"] == "RUN" and config["model"] == "RUN/pretrain"
    assert config["data_files"] == ["~/chats/mine.jsonl", "./recipes/x.jsonl"] and config["resume_from"] == "pretrain"
    assert config["corpus"][0]["path"] == "tinyshakespeare.txt" and config["depth"] == 2
    metrics = json.loads(got["metrics.json"])
    assert metrics["start_model"] == "RUN/pretrain" and metrics["resumed_from"] == "RUN/sft.incomplete/checkpoint-20"
    assert json.loads(got["chat_config.json"])["system_message"] == "Files are in ./data."
    assert json.loads(got["samples.json"]) == {"before": ["see tinyshakespeare.txt"], "after": ["ROMEO: a/b"]}
    card = got["README.md"].decode()
    assert "| start_model | RUN/pretrain |" in card and "output_dir: RUN" in card and "hf-pipeline-sft" in card
    assert "`RUN` is the run folder" in card and "`pretrain`, `tinyshakespeare.txt`" in card
    assert got["model.safetensors"] == before["sft/model.safetensors"]

    model = AutoModelForCausalLM.from_pretrained(pulled)
    tokenizer = AutoTokenizer.from_pretrained(pulled)
    reference = AutoModelForCausalLM.from_pretrained(tiny_run / "pretrain")
    ids = tokenizer("ROMEO:", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)


def test_push_refuses_weights_that_are_only_a_pickle(hub, tmp_path):
    import torch

    folder = tmp_path / "old-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    torch.save({"w": torch.zeros(1)}, folder / "pytorch_model.bin")
    message = _one_line_error(run_cli("push", folder, "--repo-id", "me/old", env=hub.env(tmp_path / "hf")))
    weights = folder / "pytorch_model.bin"
    assert message.startswith(f"push: {weights}: the weights are a pickle, which is never uploaded")
    assert not HfApi(endpoint=hub.url, token="x").repo_exists("me/old")


def test_the_path_scrubber_shortens_local_paths_only(tmp_path):
    from hf_pipeline.hub import PathScrubber

    run = tmp_path / "run"
    (run / "pretrain").mkdir(parents=True)
    scrub = PathScrubber(run)
    assert scrub.text(f"{run}/pretrain, {run}. {run}") == "RUN/pretrain, RUN. RUN"
    assert scrub.text(f"{run}x/y {Path.home()}/a {os.getcwd()}/b") == "y ~/a ./b"  # a sibling is not the run folder
    assert scrub.text(f"file://{tmp_path}/gone.") == "file://gone."  # a deleted file of this machine: its name
    for kept in ("https://huggingface.co/me/x", "http://127.0.0.1:9/api/models", "/v1/chat", "and/or", "RUN/a"):
        assert scrub.text(kept) == kept
    assert scrub.data({"paths": [str(run / "pretrain")], str(tmp_path): 1}) == {"paths": ["RUN/pretrain"],
                                                                                 tmp_path.name: 1}
    assert scrub.used == {"RUN", "~", "."} and scrub.names == {"y", "gone", tmp_path.name}


def test_push_and_pull_a_whole_run(tiny_run, hub, tmp_path):
    """A run folder: every finished stage to ORG/NAME-<stage> with its card, the index and report to ORG/NAME; an
    unfinished stage named and skipped; pull brings every stage back where it was."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "sft.incomplete").mkdir()  # a stage that did not finish
    (run / "report.md").write_text(f"# Report\n\nmade in {run}\n\n![curve](pretrain/curve.png)\n")
    env = hub.env(tmp_path / "hf")
    pushed = run_cli("push", run, "--repo-id", "me/tiny-run", env=env)
    assert pushed.returncode == 0, pushed.stderr[-2000:]
    assert "skipping sft: the stage did not finish" in pushed.stderr

    pulled = run_cli("pull", "me/tiny-run", "--to", tmp_path / "back", env=env)
    assert pulled.returncode == 0, pulled.stderr[-2000:]
    back = tmp_path / "back"
    index = json.loads((back / "run.json").read_text())
    assert set(index["stages"]) == {"tokenizer", "pretrain"} and index["skipped"] == ["sft"]
    assert index["stages"]["pretrain"]["repo_id"] == "me/tiny-run-pretrain"
    for stage in ("tokenizer", "pretrain"):
        for name, data in _files(run / stage).items():
            if name != "training_args.bin" and name not in SCRUBBED_FILES:  # those have local paths shortened
                assert _files(back / stage)[name] == data, (stage, name)
    readme = (back / "README.md").read_text()
    assert "me/tiny-run-pretrain" in readme and "# Report" in readme and str(run) not in readme  # scrubbed
    assert "(pretrain/curve.png)" not in readme and "me/tiny-run-pretrain/resolve/main/curve.png)" in readme
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(back / "pretrain"))  # loads as pushed


def test_push_refuses_a_run_with_no_finished_stage(tiny_run, hub, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run / "pretrain", run / "pretrain.incomplete")  # killed before it finished
    pushed = run_cli("push", run, "--repo-id", "me/unfinished", env=hub.env(tmp_path / "hf"))
    assert pushed.returncode == 2 and f"push: {run}: no finished stage to push" in pushed.stderr
    assert "Traceback" not in pushed.stderr
