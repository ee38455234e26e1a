"""A fake Hugging Face Hub on 127.0.0.1, for tests of `compactlm.release.upload` (huggingface_hub's upload_large_folder).

The Hub cannot run here, so this fake speaks its HTTP API for exactly the calls that `HfApi.create_repo`,
`HfApi.upload_folder` and `HfApi.upload_large_folder` make through the plain Git LFS protocol (huggingface_hub 1.33
with HF_HUB_DISABLE_XET=1), as huggingface_hub's `hf_api.py`, `_commit_api.py` and `lfs.py` send them and read the
answers:

    POST /api/repos/create                          {name, organization, type, visibility?} -> 200 {url} | 409 {url}
    POST /api/validate-yaml                         {content, repoType} (a README.md) -> 200 {errors, warnings} | 400
    GET  /api/models/{repo}[/revision/{rev}]        -> 200 ModelInfo {id, sha, siblings: [{rfilename}], private}
    GET  /api/models/{repo}/commits/{rev}           -> 200 [{id, title, message, authors: [{user}], date}]
    POST /api/models/{repo}/preupload/{rev}         {files: [{path, sample, size}]}
                                                    -> 200 {files: [{path, uploadMode, shouldIgnore, oid?}]}
    POST /{repo}.git/info/lfs/objects/batch         Git LFS batch API {operation: upload, transfers, objects, ref}
                                                    -> 200 {transfer: basic, objects: [{oid, size, actions?}]}
    PUT  /_storage/{oid}?sig=...                    the object's bytes (the "presigned URL": no Authorization)
    POST /{repo}.git/info/lfs/objects/verify        {oid, size} -> 200 | 404
    POST /api/models/{repo}/commit/{rev}            application/x-ndjson: header, file (base64), lfsFile
                                                    -> 200 {success, commitOid, commitUrl}

Like the Hub: every call but the storage PUT needs `Authorization: Bearer <token>` (401 otherwise); an unknown
repository answers 404 with `X-Error-Code: RepoNotFound`; the batch endpoint leaves out `actions` for an object the
storage already holds (the client then sends nothing); a commit that names an LFS object the storage lacks is
refused (422). The upload mode follows the Hub's documented rule: files of 10 MB or more, binary files (a NUL
byte in the 512-byte sample) and the patterns a new repository's `.gitattributes` tracks go through LFS.

What the tests read: `received[sha256]` counts the whole bodies that arrived (an LFS PUT, or a regular file's
content in a commit), `interrupted[oid]` the LFS PUTs that did not arrive whole, `repo_files(repo_id)` the committed
tree {path: bytes}, `commits(repo_id)`. To kill an upload mid-transfer deterministically, `hold(oid)` makes the PUT
of that object read part of its body and then wait; `wait_until(predicate)` returns once the predicate holds (a
failure after `timeout`, never a sleep race); `release_held()` then drops the held connection without storing
anything, as a storage does with a PUT whose client died. Nothing here writes the token anywhere.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import secrets
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import yaml

LFS_THRESHOLD = 10 * 1000 * 1000  # 10 MB
# What the `.gitattributes` of a new model repository tracks with LFS (a subset of the Hub's default file).
LFS_PATTERNS = (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.gguf", "*.gz", "*.h5", "*.joblib", "*.msgpack", "*.npy",
    "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar",
    "*.safetensors", "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst",
)  # fmt: skip
REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
ROUTES = (  # (method, compiled path pattern, handler name)
    ("POST", r"/api/repos/create", "create_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("GET", rf"/api/models/{REPO}(?:/revision/(?P<rev>[^/]+))?", "model_info"),
    ("GET", rf"/api/models/{REPO}/commits/(?P<rev>[^/]+)", "list_commits"),
    ("POST", rf"/api/models/{REPO}/preupload/(?P<rev>[^/]+)", "preupload"),
    ("POST", rf"/api/models/{REPO}/commit/(?P<rev>[^/]+)", "commit"),
    ("POST", rf"/{REPO}\.git/info/lfs/objects/batch", "lfs_batch"),
    ("POST", rf"/{REPO}\.git/info/lfs/objects/verify", "lfs_verify"),
    ("PUT", r"/_storage/(?P<oid>[0-9a-f]{64})", "storage_put"),
)
ROUTES = tuple((m, re.compile(p + r"$"), h) for m, p, h in ROUTES)


def git_blob_oid(data: bytes) -> str:
    """The git object id of a regular file (what the Hub reports as a non-LFS file's oid)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


@dataclass
class RepoFile:
    sha256: str
    size: int
    lfs: bool
    oid: str  # sha256 for an LFS file, the git blob id for a regular one


@dataclass
class Repo:
    repo_id: str
    private: bool
    files: dict[str, RepoFile] = field(default_factory=dict)
    commits: list[dict] = field(default_factory=list)  # newest first, as the Hub lists them


class FakeHub:
    """`with FakeHub(token=..., storage=tmp_path / "hub") as hub:`; point huggingface_hub at `hub.url`."""

    def __init__(self, *, token: str, storage: Path):
        self.token = token
        self.storage = Path(storage)
        (self.storage / "objects").mkdir(parents=True, exist_ok=True)
        self.repos: dict[str, Repo] = {}
        self.received: Counter[str] = Counter()  # sha256 -> whole bodies received
        self.interrupted: Counter[str] = Counter()  # oid -> PUTs that did not arrive whole
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.held: set[str] = set()
        self.holding: set[str] = set()  # held oids whose PUT is in progress
        self._signature = secrets.token_hex(8)
        self._changed = threading.Condition()
        self._release = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle and what tests read ---------------------------------------------------------------------------
    def __enter__(self) -> FakeHub:
        fake = self

        class Handler(_Handler):
            hub = fake

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def hold(self, oid: str) -> None:
        """Make the PUT of object `oid` stop after part of its body until `release_held()` drops it."""
        self.held.add(oid)

    def release_held(self) -> None:
        """Drop every held PUT (nothing of it is stored) and stop holding."""
        self.held.clear()
        self._release.set()

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 120) -> None:
        """Return once `predicate()` holds, checked at every change of the fake's state and at least every second
        (so it may also watch a client process); AssertionError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self._changed.wait_for(predicate, 1.0):
                if time.monotonic() > deadline:
                    raise AssertionError(f"the fake Hub never reached the expected state within {timeout} s")

    def stored(self, oid: str) -> bool:
        return (self.storage / "objects" / oid).is_file()

    def repo_files(self, repo_id: str) -> dict[str, bytes]:
        """The committed tree of `repo_id`: path -> content."""
        return {path: self._content(f) for path, f in self.repos[repo_id].files.items()}

    def commits(self, repo_id: str) -> list[dict]:
        return list(self.repos[repo_id].commits)

    def _content(self, f: RepoFile) -> bytes:
        return (self.storage / "objects" / f.sha256).read_bytes()

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    # -- the API ---------------------------------------------------------------------------------------------
    def _repo(self, repo_id: str, rev: str | None = None) -> Repo:
        if repo_id not in self.repos:
            raise HubError(404, "Repository not found", "RepoNotFound")
        if rev not in (None, "main"):
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return self.repos[repo_id]

    def create_repo(self, body: dict, **_) -> tuple[int, object]:
        if body.get("type", "model") != "model":
            raise HubError(400, "the fake Hub holds model repositories only")
        repo_id = f"{body['organization']}/{body['name']}"
        if repo_id in self.repos:
            raise HubError(409, "You already created this model repo", url=f"{self.url}/{repo_id}")  # the Hub's 409
        self.repos[repo_id] = Repo(repo_id, private=body.get("visibility") == "private")
        return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id, "id": secrets.token_hex(12)}

    def validate_yaml(self, body: dict, **_) -> tuple[int, object]:
        """The model card's YAML front matter must parse to a mapping; none at all is a warning, as on the Hub."""
        match = re.match(r"---\n(.*?)\n---(\n|$)", body["content"], re.S)
        if match is None:
            return 200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata in repo card"}]}
        try:
            meta = yaml.safe_load(match.group(1))
        except yaml.YAMLError as err:
            return 400, {"errors": [{"message": f"invalid YAML: {err}"}], "warnings": []}
        if not isinstance(meta, dict):
            return 400, {"errors": [{"message": "the metadata is not a mapping"}], "warnings": []}
        return 200, {"errors": [], "warnings": []}

    def model_info(self, repo: str, rev: str | None = None, **_) -> tuple[int, object]:
        r = self._repo(repo, rev)
        head = r.commits[0]["id"] if r.commits else None
        siblings = [{"rfilename": p} for p in sorted(r.files)]
        return 200, {"id": repo, "modelId": repo, "sha": head, "private": r.private, "siblings": siblings}

    def list_commits(self, repo: str, rev: str, **_) -> tuple[int, object]:
        return 200, self._repo(repo, rev).commits

    def preupload(self, repo: str, rev: str, body: dict, **_) -> tuple[int, object]:
        r = self._repo(repo, rev)
        answers = []
        for f in body["files"]:
            sample = base64.b64decode(f["sample"])
            lfs = (
                f["size"] >= LFS_THRESHOLD
                or b"\0" in sample
                or any(fnmatch.fnmatch(f["path"], p) for p in LFS_PATTERNS)
            )
            answer = {"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
            if f["path"] in r.files:
                answer["oid"] = r.files[f["path"]].oid
            answers.append(answer)
        return 200, {"files": answers, "commitOid": r.commits[0]["id"] if r.commits else None}

    def lfs_batch(self, repo: str, body: dict, **_) -> tuple[int, object]:
        self._repo(repo)
        if body.get("operation") != "upload" or "basic" not in body.get("transfers", ["basic"]):
            raise HubError(422, "the fake Hub takes uploads through the basic transfer only")
        objects = []
        for obj in body["objects"]:
            answer = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if not self.stored(obj["oid"]):  # an object the storage holds needs no upload
                answer["actions"] = {
                    "upload": {"href": f"{self.url}/_storage/{obj['oid']}?sig={self._signature}", "expires_in": 86400},
                    "verify": {"href": f"{self.url}/{repo}.git/info/lfs/objects/verify", "expires_in": 86400},
                }
            objects.append(answer)
        return 200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}

    def lfs_verify(self, repo: str, body: dict, **_) -> tuple[int, object]:
        self._repo(repo)
        path = self.storage / "objects" / body["oid"]
        if not path.is_file() or path.stat().st_size != body["size"]:
            raise HubError(404, f"object {body['oid']} of {body['size']} bytes not found")
        return 200, {}

    def storage_put(self, oid: str, data: bytes, **_) -> tuple[int, object]:
        if hashlib.sha256(data).hexdigest() != oid:
            self.interrupted[oid] += 1
            raise HubError(400, "the body does not match its oid")
        self._store(data)
        return 200, {}

    def commit(self, repo: str, rev: str, lines: list[dict], **_) -> tuple[int, object]:
        r = self._repo(repo, rev)
        header = next(line["value"] for line in lines if line["key"] == "header")
        changes: dict[str, RepoFile] = {}
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "file":
                data = base64.b64decode(value["content"])
                sha = self._store(data)
                changes[value["path"]] = RepoFile(sha, len(data), False, git_blob_oid(data))
            elif key == "lfsFile":
                if not self.stored(value["oid"]):
                    raise HubError(422, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                changes[value["path"]] = RepoFile(value["oid"], value["size"], True, value["oid"])
            elif key != "header":
                raise HubError(400, f"the fake Hub does not take '{key}' operations")
        r.files.update(changes)
        oid = hashlib.sha1(json.dumps([header, sorted(changes)]).encode() + secrets.token_bytes(8)).hexdigest()
        date = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        message = header.get("description") or ""
        r.commits.insert(0, {"id": oid, "title": header["summary"], "message": message, "authors": [{"user": "fake"}],
                             "date": date, "files": sorted(changes)})  # fmt: skip
        return 200, {"success": True, "commitOid": oid, "commitUrl": f"{self.url}/{repo}/commit/{oid}"}

    def _store(self, data: bytes) -> str:
        """Keep `data` in the object storage; count it as received."""
        sha = hashlib.sha256(data).hexdigest()
        path = self.storage / "objects" / sha
        tmp = path.with_suffix(".part")
        tmp.write_bytes(data)
        tmp.replace(path)
        self.received[sha] += 1
        return sha


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        """A client killed mid-request resets its connection: expected here, not worth a traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        hub = self.hub
        with hub._changed:
            hub.requests.append((method, url.path))
        try:
            route = next(((h, p.match(url.path)) for m, p, h in ROUTES if m == method and p.match(url.path)), None)
            if route is None:
                raise HubError(404, f"no route for {method} {url.path}")
            name, match = route
            params = {k: v for k, v in match.groupdict().items() if v is not None}
            if name == "storage_put":
                if parse_qs(url.query).get("sig") != [hub._signature]:
                    raise HubError(403, "bad signature")
                data = self._read_put(params["oid"])
                if data is None:
                    return  # dropped: the client died mid-transfer
                with hub._changed:
                    status, payload = hub.storage_put(data=data, **params)
            else:
                if self.headers.get("Authorization") != f"Bearer {hub.token}":
                    raise HubError(401, "Invalid credentials in Authorization header")
                raw = self._read_body()
                if name == "commit":
                    params["lines"] = [json.loads(line) for line in raw.splitlines() if line.strip()]
                elif raw:
                    params["body"] = json.loads(raw)
                with hub._changed:
                    status, payload = getattr(hub, name)(**params)
            self._send(status, payload)
        except HubError as err:
            self._send(err.status, {"error": err.message, **err.extra}, err.code)
        finally:
            hub._notify()

    def _read_body(self, limit: int | None = None) -> bytes:
        """The request body (Content-Length or chunked); at most `limit` bytes when given."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while limit is None or len(out) < limit:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                out += self.rfile.read(size)
                self.rfile.readline()
            return bytes(out)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length if limit is None else min(limit, length))

    def _read_put(self, oid: str) -> bytes | None:
        """A storage PUT's body; for a held object, part of it, then wait for `release_held()` and drop it."""
        hub = self.hub
        if oid not in hub.held:
            return self._read_body()
        self._read_body(limit=64 * 1024)  # the transfer has started...
        with hub._changed:
            hub.holding.add(oid)
            hub._changed.notify_all()
        hub._release.wait(timeout=300)  # ...and stalls until the test has killed the client
        with hub._changed:
            hub.holding.discard(oid)
            hub.interrupted[oid] += 1
        self.close_connection = True
        return None

    def _send(self, status: int, payload: object, code: str | None = None) -> None:
        body = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if code:
                self.send_header("X-Error-Code", code)
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            self.close_connection = True  # the client is gone

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")
