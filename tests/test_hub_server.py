"""The test Hub server (tests/hub_server.py) driven by the real huggingface_hub / transformers clients."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SHARED_DATA
from hub_server import HubServer

import huggingface_hub  # noqa: E402
from huggingface_hub import HfApi, hf_hub_download, snapshot_download  # noqa: E402
from huggingface_hub.errors import (  # noqa: E402
    EntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

SHAKESPEARE = SHARED_DATA / "text" / "tinyshakespeare.txt"
MODEL_ID = "org/tiny-llama"
PROMPT = "First Citizen: Before we proceed"


@pytest.fixture(scope="module", autouse=True)
def _online():
    # HF_HUB_OFFLINE is read at import time; the loopback Hub must be reachable even on an offline CI box.
    mp = pytest.MonkeyPatch()
    mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    yield
    mp.undo()


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with HubServer(tmp_path_factory.mktemp("hub")) as server:
        yield server


@pytest.fixture(scope="module")
def api(hub):
    return HfApi(endpoint=hub.url, token="hf_dummy")


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and ".cache" not in p.parts}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A real tokenizer (BPE trained on tinyshakespeare) + a tiny LlamaForCausalLM, saved with save_pretrained."""
    import tokenizers
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if not SHAKESPEARE.is_file():
        pytest.skip(f"{SHAKESPEARE} not available")
    lines = SHAKESPEARE.read_text().splitlines()[:2000]
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(lines, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>")

    out = tmp_path_factory.mktemp("tiny-llama")
    tok.save_pretrained(out)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def pushed(api, model_dir):
    api.create_repo(MODEL_ID)
    info = api.upload_folder(repo_id=MODEL_ID, folder_path=model_dir, commit_message="add tiny llama")
    return info


def test_upload_folder_then_snapshot_download_same_bytes(api, hub, model_dir, pushed, tmp_path):
    local = _files(model_dir)
    assert {"tokenizer.json", "config.json", "model.safetensors"} <= set(local)
    path = snapshot_download(MODEL_ID, endpoint=hub.url, cache_dir=tmp_path / "cache", token="hf_dummy")
    downloaded = _files(Path(path))
    assert Path(path).name == pushed.oid  # snapshot of the commit upload_folder created
    assert set(downloaded) == set(local) | {".gitattributes"}  # Hub repos start with .gitattributes
    for name, data in local.items():
        assert downloaded[name] == data, name
    # local_dir mode too (different client code path)
    path2 = snapshot_download(MODEL_ID, endpoint=hub.url, local_dir=tmp_path / "local", token="hf_dummy")
    assert {k: v for k, v in _files(Path(path2)).items() if k != ".gitattributes"} == local


def test_repo_info_siblings_and_history(api, model_dir, pushed):
    local = _files(model_dir)
    info = api.model_info(MODEL_ID, files_metadata=True)
    assert info.id == MODEL_ID and info.sha == pushed.oid
    sizes = {s.rfilename: s.size for s in info.siblings}
    assert sizes == {**{k: len(v) for k, v in local.items()}, ".gitattributes": sizes[".gitattributes"]}
    assert api.repo_info(MODEL_ID).sha == pushed.oid
    assert api.repo_exists(MODEL_ID)
    assert sorted(api.list_repo_files(MODEL_ID)) == sorted([*local, ".gitattributes"])
    commits = api.list_repo_commits(MODEL_ID)
    assert [c.title for c in commits][:2] == ["add tiny llama", "initial commit"]
    assert commits[0].commit_id == pushed.oid


def test_second_commit_overwrites_file_on_main(api, hub, tmp_path):
    repo = "org/overwrite"
    api.create_repo(repo)
    first = api.upload_file(path_or_fileobj=b"version 1\n", path_in_repo="notes/a.txt", repo_id=repo,
                            commit_message="v1")
    second = api.upload_file(path_or_fileobj=b"version 2\n", path_in_repo="notes/a.txt", repo_id=repo,
                             commit_message="v2")
    assert first.oid != second.oid and api.repo_info(repo).sha == second.oid
    dl = dict(endpoint=hub.url, cache_dir=tmp_path, token="hf_dummy")
    assert Path(hf_hub_download(repo, "notes/a.txt", **dl)).read_bytes() == b"version 2\n"
    assert Path(hf_hub_download(repo, "notes/a.txt", revision=first.oid, **dl)).read_bytes() == b"version 1\n"
    # Unchanged content is detected through the preupload "oid" and produces no new commit.
    same = api.upload_file(path_or_fileobj=b"version 2\n", path_in_repo="notes/a.txt", repo_id=repo)
    assert same.oid == second.oid
    api.delete_file("notes/a.txt", repo_id=repo)
    assert api.list_repo_files(repo) == [".gitattributes"]
    assert len(api.list_repo_commits(repo)) == 4  # initial, v1, v2, delete


def test_large_binary_file_is_committed_inline(api, hub, tmp_path):
    """~5 MB safetensors-like binary: preupload says "regular", so no LFS/Xet protocol is involved."""
    repo = "org/big"
    api.create_repo(repo)
    blob = os.urandom(5 * 1024 * 1024 + 17)
    api.upload_file(path_or_fileobj=blob, path_in_repo="model.safetensors", repo_id=repo)
    path = hf_hub_download(repo, "model.safetensors", endpoint=hub.url, cache_dir=tmp_path, token="hf_dummy")
    assert Path(path).read_bytes() == blob
    (entry,) = [f for f in api.list_repo_tree(repo) if f.path == "model.safetensors"]
    assert entry.size == len(blob) and entry.lfs is None and entry.xet_hash is None


def test_missing_repo_raises_repository_not_found(api, hub, tmp_path):
    with pytest.raises(RepositoryNotFoundError):
        api.repo_info("org/does-not-exist")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/does-not-exist", "config.json", endpoint=hub.url, cache_dir=tmp_path, token="x")
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("org/does-not-exist", endpoint=hub.url, cache_dir=tmp_path, token="x")
    assert not api.repo_exists("org/does-not-exist")


def test_missing_file_and_revision(api, hub, pushed, tmp_path):
    with pytest.raises(RemoteEntryNotFoundError) as err:
        hf_hub_download(MODEL_ID, "nope.bin", endpoint=hub.url, cache_dir=tmp_path, token="x")
    assert isinstance(err.value, EntryNotFoundError)
    assert not api.file_exists(MODEL_ID, "nope.bin") and api.file_exists(MODEL_ID, "config.json")
    with pytest.raises(RevisionNotFoundError):
        api.repo_info(MODEL_ID, revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(MODEL_ID, "config.json", revision="0" * 40, endpoint=hub.url, cache_dir=tmp_path)


def test_create_repo_conflict_and_delete(api):
    url = api.create_repo("org/tmp-repo", private=True)
    assert url.repo_id == "org/tmp-repo" and api.repo_info("org/tmp-repo").private is True
    with pytest.raises(huggingface_hub.errors.HfHubHTTPError) as err:
        api.create_repo("org/tmp-repo")
    assert err.value.response.status_code == 409
    assert api.create_repo("org/tmp-repo", exist_ok=True).repo_id == "org/tmp-repo"
    api.delete_repo("org/tmp-repo")
    assert not api.repo_exists("org/tmp-repo")


def test_dataset_repo_roundtrip(api, hub, tmp_path):
    repo = "org/tiny-data"
    url = api.create_repo(repo, repo_type="dataset")
    assert url.repo_type == "dataset" and "/datasets/" in url
    rows = "".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(50)).encode()
    api.upload_file(path_or_fileobj=rows, path_in_repo="data/train.jsonl", repo_id=repo, repo_type="dataset")
    assert api.list_repo_files(repo, repo_type="dataset") == [".gitattributes", "data/train.jsonl"]
    assert [s.rfilename for s in api.dataset_info(repo).siblings] == [".gitattributes", "data/train.jsonl"]
    path = hf_hub_download(repo, "data/train.jsonl", repo_type="dataset", endpoint=hub.url, cache_dir=tmp_path)
    assert Path(path).read_bytes() == rows and "datasets--org--tiny-data" in path
    snap = snapshot_download(repo, repo_type="dataset", endpoint=hub.url, local_dir=tmp_path / "ds")
    assert (Path(snap) / "data/train.jsonl").read_bytes() == rows
    with pytest.raises(RepositoryNotFoundError):  # same id as a model does not exist
        api.repo_info(repo)


_LOAD_SCRIPT = """
import json, sys
import huggingface_hub, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
ids = tok(sys.argv[2], return_tensors="pt")
out = model.generate(**ids, max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=tok.eos_token_id)
print(json.dumps({"endpoint": huggingface_hub.constants.ENDPOINT, "prompt_ids": ids.input_ids[0].tolist(),
                  "output_ids": out[0].tolist()}))
"""


def test_transformers_from_pretrained_by_hub_id_in_subprocess(hub, model_dir, pushed, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    proc = subprocess.run([sys.executable, "-c", _LOAD_SCRIPT, MODEL_ID, PROMPT], env=hub.env(tmp_path / "hf"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["endpoint"] == hub.url
    assert len(result["output_ids"]) == len(result["prompt_ids"]) + 3
    # The files really came from the loopback Hub into the subprocess' fresh HF_HOME cache...
    snapshot = tmp_path / "hf" / "hub" / "models--org--tiny-llama" / "snapshots" / pushed.oid
    assert (snapshot / "model.safetensors").read_bytes() == (model_dir / "model.safetensors").read_bytes()
    # ...and greedy generation matches the model loaded from the original folder.
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = tok(PROMPT, return_tensors="pt")
    assert ids.input_ids[0].tolist() == result["prompt_ids"]
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=3, min_new_tokens=3, do_sample=False,
                             pad_token_id=tok.eos_token_id)
    assert out[0].tolist() == result["output_ids"]


def test_cli_serves_the_api(tmp_path):
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("hub_server.py")), "--root",
                             str(tmp_path / "root"), "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = line.split(" on ", 1)[1].split(" ", 1)[0]
        cli_api = HfApi(endpoint=url, token="hf_dummy")
        assert cli_api.whoami()["name"] == "test-user"
        cli_api.create_repo("org/cli")
        assert cli_api.list_repo_files("org/cli") == [".gitattributes"]
        assert (tmp_path / "root" / "models" / "org" / "cli.json").is_file()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
