"""A small, real, Hub-compatible HTTP server for tests (stdlib only).

This is a *test double of the Hugging Face Hub's HTTP API*, not a mock of the client: the real
``huggingface_hub`` / ``transformers`` / ``datasets`` code runs unchanged and talks HTTP to it on
loopback. Repos live on disk under ``root`` (``root/blobs/<git-oid>`` content-addressed blobs,
``root/<type>s/<org>/<name>.json`` metadata + a linear commit history of full file snapshots), so
``revision="main"`` resolves to the latest commit and any older commit sha stays readable.

Endpoints (``{t}`` is ``models``, ``datasets`` or ``spaces``; ``{rev}`` is ``main`` or a 40-hex sha):

* ``GET  /api/whoami-v2``                       -> fixed user ``test-user`` (any token accepted)
* ``POST /api/repos/create`` / ``DELETE /api/repos/delete``  (409 if the repo already exists)
* ``POST /api/validate-yaml``                   -> always valid (called when a README.md is pushed)
* ``GET  /api/{t}/{org}/{name}[/revision/{rev}]`` -> repo info (``sha``, ``siblings``; sizes with ``?blobs=1``)
* ``GET  /api/{t}/{org}/{name}/tree/{rev}[/{path}]?recursive=`` -> list_repo_tree / list_repo_files
* ``POST /api/{t}/{org}/{name}/paths-info/{rev}`` -> get_paths_info
* ``GET  /api/{t}/{org}/{name}/commits/{rev}`` and ``/refs`` -> list_repo_commits / list_repo_refs
* ``POST /api/{t}/{org}/{name}/preupload/{rev}`` -> ``uploadMode: "regular"`` for every file, so the
  client inlines base64 content in the commit and no LFS/Xet transfer protocol is ever needed
* ``POST /api/{t}/{org}/{name}/commit/{rev}``   -> ndjson ``header`` / ``file`` / ``deletedFile`` /
  ``deletedFolder`` lines (``lfsFile`` is refused with 400), optional ``parentCommit`` check (412)
* ``GET|HEAD /[datasets/|spaces/]{org}/{name}/resolve/{rev}/{path}`` -> file bytes with ``X-Repo-Commit``,
  ``ETag`` (git blob oid) and ``Content-Length``; no redirect and no ``X-Xet-Hash``, so the plain HTTP
  download path is used; ``Range: bytes=a-b`` is honoured.

Errors are 404s carrying ``X-Error-Code: RepoNotFound | RevisionNotFound | EntryNotFound`` (plus
``X-Error-Message``) like the real Hub, so the client raises ``RepositoryNotFoundError``,
``RevisionNotFoundError`` and ``RemoteEntryNotFoundError`` (a subclass of ``EntryNotFoundError``).
Not implemented: branches other than ``main``, tags, PRs (``create_pr``), LFS/Xet, gating, auth.

How to point the client at it:

* In-process, pass the endpoint explicitly: ``HfApi(endpoint=hub.url, token="dummy")`` and
  ``hf_hub_download(..., endpoint=hub.url)`` / ``snapshot_download(..., endpoint=hub.url)``.
  ``HF_ENDPOINT`` is read once, at import, into ``huggingface_hub.constants.ENDPOINT``; setting it
  later in ``os.environ`` has no effect on an already-imported client.
* For code that only knows the default endpoint (``transformers`` ``from_pretrained("org/name")``,
  ``datasets.load_dataset``), start a subprocess with ``env=hub.env(hf_home)``: it sets
  ``HF_ENDPOINT``, ``HF_HOME`` (fresh cache), a dummy ``HF_TOKEN`` and removes the offline flags.

Usage::

    with HubServer(tmp_path / "hub") as hub:
        api = HfApi(endpoint=hub.url, token="dummy")
        api.create_repo("org/name"); api.upload_folder(repo_id="org/name", folder_path=...)

CLI: ``python tests/hub_server.py --root DIR [--port N] [--verbose]``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import threading
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
USER = "test-user"
# The real Hub seeds every new repo with an "initial commit" holding .gitattributes; so do we.
GITATTRIBUTES = b"*.bin filter=lfs diff=lfs merge=lfs -text\n*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
API_RE = re.compile(r"^/api/(models|datasets|spaces)/([^/]+/[^/]+)(?:/([a-z-]+)(?:/([^/]+)(?:/(.*))?)?)?$")
REPO_ID_RE = re.compile(r"[\w.-]+/[\w.-]+")
RESOLVE_RE = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.code, self.commit, self.extra = status, message, code, commit, extra


def git_oid(data: bytes) -> str:
    """Git blob id, the same value the client computes to skip unchanged files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class RepoStore:
    """Repos on disk. Each commit stores the full ``{path: [oid, size]}`` snapshot (linear history)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()

    def _meta(self, repo_type: str, repo_id: str) -> Path:
        if not REPO_ID_RE.fullmatch(repo_id) or ".." in repo_id:
            raise HubError(400, f"Invalid repo id {repo_id!r} (expected 'namespace/name')")
        return self.root / f"{repo_type}s" / f"{repo_id}.json"

    def put_blob(self, data: bytes) -> str:
        oid = git_oid(data)
        path = self.root / "blobs" / oid
        if not path.exists():
            tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return oid

    def blob(self, oid: str) -> bytes:
        return (self.root / "blobs" / oid).read_bytes()

    def load(self, repo_type: str, repo_id: str) -> dict:
        path = self._meta(repo_type, repo_id)
        if not path.is_file():
            raise HubError(404, f"Repository Not Found for {repo_type} {repo_id}", "RepoNotFound")
        return json.loads(path.read_text())

    def _save(self, repo: dict) -> None:
        path = self._meta(repo["type"], repo["id"])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(repo, indent=1))
        tmp.replace(path)

    def create(self, repo_type: str, repo_id: str, private: bool, url: str) -> dict:
        with self.lock:
            if self._meta(repo_type, repo_id).is_file():  # the client reads "url" even from the 409 (exist_ok)
                raise HubError(409, f"You already created this {repo_type} repo", url=url)
            repo = {"type": repo_type, "id": repo_id, "private": private, "created": _now(), "commits": []}
            self._append(repo, {".gitattributes": [self.put_blob(GITATTRIBUTES), len(GITATTRIBUTES)]},
                         "initial commit", "")
            return repo

    def delete(self, repo_type: str, repo_id: str) -> None:
        with self.lock:
            self.load(repo_type, repo_id)
            self._meta(repo_type, repo_id).unlink()

    @staticmethod
    def resolve(repo: dict, rev: str) -> dict:
        if rev in ("main", "refs/heads/main"):
            return repo["commits"][-1]
        for commit in repo["commits"]:
            if commit["id"] == rev:
                return commit
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def _append(self, repo: dict, files: dict, title: str, message: str) -> dict:
        parent = repo["commits"][-1]["id"] if repo["commits"] else ""
        cid = hashlib.sha1(f"{parent}\n{title}\n{uuid.uuid4()}".encode()).hexdigest()
        commit = {"id": cid, "parent": parent, "title": title, "message": message, "date": _now(), "files": files}
        repo["commits"].append(commit)
        self._save(repo)
        return commit

    def commit(self, repo_type: str, repo_id: str, rev: str, lines: list[dict]) -> dict:
        with self.lock:
            repo = self.load(repo_type, repo_id)
            if rev != "main":
                raise HubError(404, f"Invalid rev id: {rev} (this test hub only has 'main')", "RevisionNotFound")
            head = repo["commits"][-1]
            header = next((ln["value"] for ln in lines if ln.get("key") == "header"), {})
            if header.get("parentCommit") not in (None, head["id"]):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(head["files"])
            for line in lines:
                key, value = line.get("key"), line.get("value", {})
                path = value.get("path", "")
                if key == "file":
                    raw = value["content"]
                    data = base64.b64decode(raw) if value.get("encoding") == "base64" else raw.encode()
                    files[path] = [self.put_blob(data), len(data)]
                elif key == "deletedFile":
                    if files.pop(path, None) is None:
                        raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                elif key == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    gone = [p for p in files if p.startswith(prefix)]
                    if not gone:
                        raise HubError(404, "A folder with this name doesn't exist", "EntryNotFound")
                    for p in gone:
                        del files[p]
                elif key == "lfsFile":
                    raise HubError(400, "LFS is not supported by this test hub (preupload answers 'regular')")
                elif key != "header":
                    raise HubError(400, f"Unknown commit operation {key!r}")
            return self._append(repo, files, header.get("summary", ""), header.get("description", ""))


def tree_entries(files: dict, path: str, recursive: bool, expand: bool = False, commit: dict | None = None):
    """Hub ``/tree`` items (directories first) under ``path``; 404 EntryNotFound if nothing is there."""
    prefix = path.strip("/") + "/" if path.strip("/") else ""
    dirs, out = set(), []
    for p, (oid, size) in sorted(files.items()):
        if not p.startswith(prefix):
            continue
        parts = p[len(prefix):].split("/")
        dirs.update(prefix + "/".join(parts[:i]) for i in range(1, len(parts) if recursive else min(2, len(parts))))
        if recursive or len(parts) == 1:
            out.append({"type": "file", "oid": oid, "size": size, "path": p})
    if prefix and not out and not dirs:
        raise HubError(404, f"{path} does not exist on this revision", "EntryNotFound")
    dir_items = [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
                 for d in sorted(dirs)]
    items = dir_items + out
    if expand and commit is not None:
        for item in items:
            item["lastCommit"] = {"id": commit["id"], "title": commit["title"], "date": commit["date"]}
    return items


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every response carries a Content-Length
    server: "_Server"

    # ---- plumbing -------------------------------------------------------------------------------
    def log_message(self, fmt, *args):  # quiet unless verbose
        if self.server.hub.verbose:
            super().log_message(fmt, *args)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while (size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)) > 0:
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes = b"", ctype: str = "application/json", headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status: int = 200):
        self._send(status, json.dumps(obj).encode())

    def _dispatch(self):
        try:
            self._route(urlsplit(self.path))
        except HubError as e:
            headers = {"X-Error-Message": e.message}
            if e.code:
                headers["X-Error-Code"] = e.code
            if e.commit:
                headers["X-Repo-Commit"] = e.commit
            self._send(e.status, json.dumps({"error": e.message, **e.extra}).encode(), headers=headers)
        except Exception as e:  # a server bug: report it instead of hanging the client
            self._send(500, json.dumps({"error": f"{type(e).__name__}: {e}"}).encode())

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    # ---- routing --------------------------------------------------------------------------------
    def _route(self, url):
        store, method, query = self.server.hub.store, self.command, parse_qs(url.query)
        body = self._body() if method in ("POST", "PUT", "DELETE") else b""
        if url.path == "/api/whoami-v2" and method == "GET":
            return self._json({"type": "user", "id": "0" * 24, "name": USER, "fullname": "Test User",
                               "orgs": [], "auth": {"type": "access_token",
                                                    "accessToken": {"displayName": "dummy", "role": "write"}}})
        if url.path == "/api/validate-yaml" and method == "POST":
            return self._json({"errors": [], "warnings": []})
        if url.path in ("/api/repos/create", "/api/repos/delete"):
            payload = json.loads(body or b"{}")
            repo_type = payload.get("type") or "model"
            repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
            if method == "DELETE":
                store.delete(repo_type, repo_id)
                return self._send(200, b"", ctype="text/plain")
            repo_url = f"{self.server.hub.url}/{PREFIX[repo_type]}{repo_id}"
            private = payload.get("visibility") == "private" or bool(payload.get("private"))
            store.create(repo_type, repo_id, private, repo_url)
            return self._json({"url": repo_url, "name": repo_id, "id": repo_id})
        if m := RESOLVE_RE.match(url.path):
            repo_type = TYPES[m[1]] if m[1] else "model"
            return self._resolve(repo_type, unquote(m[2]), unquote(m[3]), unquote(m[4]))
        if m := API_RE.match(url.path):
            repo_type, repo_id, action = TYPES[m[1]], unquote(m[2]), m[3]
            rev, path = unquote(m[4] or "main"), unquote(m[5] or "")
            return self._api(repo_type, repo_id, action, rev, path, method, query, body)
        raise HubError(404, f"Not found: {method} {url.path}")

    def _api(self, repo_type, repo_id, action, rev, path, method, query, body):
        store, flag = self.server.hub.store, (lambda k: query.get(k, ["false"])[0].lower() in ("1", "true"))
        repo = store.load(repo_type, repo_id)
        if action is None or (action == "revision" and method == "GET"):
            commit = store.resolve(repo, rev)
            blobs = flag("blobs")
            siblings = [{"rfilename": p, **({"size": s, "blobId": o} if blobs else {})}
                        for p, (o, s) in sorted(commit["files"].items())]
            return self._json({"_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id,
                               "author": repo_id.split("/")[0], "sha": commit["id"], "private": repo["private"],
                               "lastModified": commit["date"], "createdAt": repo["created"], "gated": False,
                               "disabled": False, "downloads": 0, "likes": 0, "tags": [], "siblings": siblings})
        if action == "refs" and method == "GET":
            head = repo["commits"][-1]["id"]
            return self._json({"branches": [{"name": "main", "ref": "refs/heads/main", "targetCommit": head}],
                               "tags": [], "converts": [], "pullRequests": []})
        if action == "tree" and method == "GET":
            commit = store.resolve(repo, rev)
            return self._json(tree_entries(commit["files"], path, flag("recursive"), flag("expand"), commit))
        if action == "paths-info" and method == "POST":
            commit = store.resolve(repo, rev)
            wanted = parse_qs(body.decode()).get("paths", [])
            items = tree_entries(commit["files"], "", recursive=True)
            return self._json([item for item in items if item["path"] in wanted])
        if action == "commits" and method == "GET":
            commit = store.resolve(repo, rev)
            history = repo["commits"][: repo["commits"].index(commit) + 1][::-1]
            return self._json([{"id": c["id"], "title": c["title"], "message": c["message"], "date": c["date"],
                                "authors": [{"user": USER}]} for c in history])
        if action == "preupload" and method == "POST":
            files = store.resolve(repo, rev)["files"] if rev == "main" else {}
            return self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                          "oid": files.get(f["path"], [None])[0]}
                                         for f in json.loads(body)["files"]]})
        if action == "commit" and method == "POST":
            if flag("create_pr"):
                raise HubError(400, "create_pr is not supported by this test hub")
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            commit = store.commit(repo_type, repo_id, rev, lines)
            commit_url = f"{self.server.hub.url}/{PREFIX[repo_type]}{repo_id}/commit/{commit['id']}"
            return self._json({"success": True, "commitOid": commit["id"], "commitUrl": commit_url,
                               "hookOutput": ""})
        raise HubError(404, f"Not found: {method} {action}")

    def _resolve(self, repo_type, repo_id, rev, path):
        store = self.server.hub.store
        if self.command not in ("GET", "HEAD"):
            raise HubError(405, "Method not allowed")
        commit = store.resolve(store.load(repo_type, repo_id), rev)
        if path not in commit["files"]:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", commit=commit["id"])
        oid, size = commit["files"][path]
        data, status = store.blob(oid), 200
        headers = {"X-Repo-Commit": commit["id"], "ETag": f'"{oid}"', "Accept-Ranges": "bytes"}
        if m := re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "")):
            start, end = int(m[1]), min(int(m[2] or size - 1), size - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            data, status = data[start : end + 1], 206
        self._send(status, data, ctype="application/octet-stream", headers=headers)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: "HubServer"


class HubServer:
    """``with HubServer(root) as hub: hub.url`` -> ``"http://127.0.0.1:PORT"`` (or ``start()`` / ``stop()``)."""

    def __init__(self, root: str | os.PathLike, port: int = 0, verbose: bool = False):
        self.store = RepoStore(root)
        self.port, self.verbose = port, verbose
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def root(self) -> Path:
        return self.store.root

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("HubServer is not started")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> "HubServer":
        self._httpd = _Server(("127.0.0.1", self.port), _Handler)
        self._httpd.hub = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = self._thread = None

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def env(self, hf_home: str | os.PathLike, base: dict | None = None) -> dict:
        """Environment for a subprocess whose Hub client must use this server (set before import)."""
        env = dict(os.environ if base is None else base)
        for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_CACHE",
                    "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_DATASETS_CACHE", "HF_TOKEN_PATH"):
            env.pop(key, None)
        env.update(HF_ENDPOINT=self.url, HF_HOME=str(hf_home), HF_TOKEN="hf_dummy_test_token",
                   HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
        return env


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the test Hub server in the foreground.")
    parser.add_argument("--root", required=True, help="directory holding the repos")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = any free port)")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args()
    hub = HubServer(args.root, port=args.port, verbose=args.verbose).start()
    print(f"Hub test server on {hub.url} (root {hub.root}); export HF_ENDPOINT={hub.url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        hub.stop()


if __name__ == "__main__":
    main()
