"""Push and pull of stage artifacts through a real Hub-compatible server on loopback (tests/hub_server.py)."""

from __future__ import annotations

import json

import pytest
import yaml
from huggingface_hub import HfApi

from conftest import SHAKESPEARE, run_cli
from hub_server import HubServer


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
