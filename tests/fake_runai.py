"""A fake NVIDIA Run:ai control plane (REST API v1) on 127.0.0.1, for tests of NeMo-Run's `DGXCloudExecutor`.

Run:ai is a cloud service and cannot run here, so this fake speaks its HTTP API: the endpoints, methods, request
fields and response fields below are those of the Run:ai OpenAPI document (the `swagger.json` that the official
`runapy` client is generated from, version 1.224.0) restricted to what NeMo-Run 0.11.1 calls:

    POST   /api/v1/token                                  TokenRequest -> 200 TokenResponse {accessToken, ...}
    GET    /api/v1/org-unit/projects                      -> 200 {"projects": [Project], "next"}
    POST   /api/v1/workloads/workspaces                   WorkspaceCreationRequest -> 202 Workspace
    GET    /api/v1/workloads/workspaces/{workloadId}      -> 200 Workspace (actualPhase)
    DELETE /api/v1/workloads/workspaces/{workloadId}      -> 202
    POST   /api/v1/workloads/trainings                    TrainingCreationRequest -> 202 Training (nodes == 1)
    POST   /api/v1/workloads/distributed                  DistributedCreationRequest -> 202 DistributedWorkload
    GET    /api/v1/workloads/{trainings|distributed}/{id} -> 200 (actualPhase)
    DELETE /api/v1/workloads/{trainings|distributed}/{id} -> 202
    POST   /api/v1/workloads/{trainings|distributed}/{id}/suspend -> 202  (GET -> 405: the API has no GET here)
    GET    /api/v1/workloads/{workloadId}                 -> 200 WorkloadDetailed (phase)

Every call but /token needs `Authorization: Bearer <a token this server issued>` (401 otherwise, body
`{"code", "message"}` like the real API). Workloads move Creating -> Pending -> Running -> Completed (or
`outcome="Failed"`) one step per status poll (`polls_per_phase`).

NeMo-Run moves the job directory onto the PVC with short-lived busybox *workspaces* whose `sh -c` command
carries the files base64-encoded (the "data mover"). The fake plays those commands against `pvc_root`: a file
written under a PVC mount `path` lands in `pvc_root/<claimName>/<path below the mount>`; writes outside every
mount are lost (container filesystem), as on a real cluster. A training whose `/bin/bash <script>` is not on a
mounted PVC ends Failed, as its pod would.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import re
import shutil
import tarfile
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

API = "/api/v1"
REDACTED = "<redacted>"
# Phases Run:ai reports in `actualPhase` (OpenAPI enum of DistributedWorkload.actualPhase).
PHASES = (
    "Creating",
    "Initializing",
    "Resuming",
    "Pending",
    "Deleting",
    "Running",
    "Updating",
    "Stopped",
    "Stopping",
    "Degraded",
    "Failed",
    "Completed",
    "Terminating",
    "Unknown",
)
DISTRIBUTED_FRAMEWORKS = ("MPI", "PyTorch", "TF", "XGBoost", "JAX")
# NeMo-Run keeps each data-mover command under 9500 chars because of this API limit (dgxcloud.py:217-222).
MAX_ARGS_CHARS = 10_000
K8S_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Recorded:
    """One request as the server saw it: the Authorization header and the token request's secret are redacted."""

    method: str
    path: str  # below /api/v1, e.g. "/workloads/distributed"
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any  # parsed JSON, or None
    status: int = 0


@dataclass
class Workload:
    kind: str  # "workspaces" | "trainings" | "distributed"
    workload_id: str
    request: dict[str, Any]
    response: dict[str, Any]
    phases: list[str]  # what successive status polls report; the last one sticks
    polls: int = 0
    deleted: bool = False
    message: str = ""

    @property
    def spec(self) -> dict[str, Any]:
        return self.request.get("spec") or {}


class FakeRunAI:
    """Start with `with FakeRunAI(client_id=..., client_secret=...) as fake:`; point the executor at `fake.base_url`."""

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        projects: list[dict] | None = None,
        pvc_root: str | Path | None = None,
        polls_per_phase: int = 1,
        outcome: str = "Completed",
    ):
        self.client_id = client_id
        self.client_secret = client_secret
        self.cluster_id = str(uuid.uuid4())
        self.projects = projects or [{"name": "compactlm", "id": "4501"}]
        for p in self.projects:
            p.setdefault("clusterId", self.cluster_id)
        self.pvc_root = Path(pvc_root) if pvc_root else None
        self.polls_per_phase = polls_per_phase
        self.outcome = outcome  # final phase of trainings and distributed workloads
        self.workspace_outcome = "Completed"  # final phase of data-mover workspaces
        self.requests: list[Recorded] = []
        self.workloads: dict[str, Workload] = {}
        self.tokens: set[str] = set()
        self.lost_writes: list[str] = []  # absolute paths written outside every mounted PVC
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> FakeRunAI:
        fake = self

        class Handler(_Handler):
            server_fake = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-runai", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeRunAI:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """What `DGXCloudExecutor(base_url=...)` takes: the host plus /api/v1."""
        assert self._server, "not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}{API}"

    # -- queries for tests ---------------------------------------------------------------------------------------
    def calls(self, method: str | None = None, path: str | None = None) -> list[Recorded]:
        """Recorded requests, optionally only those with this method and path (a regex matched in full)."""
        return [
            r
            for r in self.requests
            if (method is None or r.method == method) and (path is None or re.fullmatch(path, r.path))
        ]

    def sequence(self) -> list[str]:
        """'METHOD /path' of every request in order, workload ids replaced by {id}."""
        out = []
        for r in self.requests:
            path = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "{id}", r.path)
            out.append(f"{r.method} {path}")
        return out

    def of_kind(self, kind: str) -> list[Workload]:
        return [w for w in self.workloads.values() if w.kind == kind]

    def pvc_path(self, claim: str, path_in_claim: str = "") -> Path:
        assert self.pvc_root, "FakeRunAI(pvc_root=...) was not given"
        return self.pvc_root / claim / path_in_claim.lstrip("/")

    # -- request handling (called from the server thread) --------------------------------------------------------
    def handle(self, method: str, raw_path: str, headers: dict[str, str], raw_body: bytes) -> tuple[int, Any]:
        parts = urlsplit(raw_path)
        path = parts.path[len(API) :] if parts.path.startswith(API + "/") else parts.path
        body = None
        if raw_body:
            try:
                body = json.loads(raw_body)
            except ValueError:
                body = raw_body.decode("utf-8", "replace")
        rec = Recorded(method, path, parse_qs(parts.query), _redact_headers(headers), _redact_body(path, body))
        with self._lock:
            self.requests.append(rec)
            if not parts.path.startswith(API + "/"):
                status, payload = _error(404, f"no route {parts.path}")
            else:
                status, payload = self._route(method, path, headers, body)
            rec.status = status
        return status, payload

    def _route(self, method: str, path: str, headers: dict[str, str], body: Any) -> tuple[int, Any]:
        if path == "/token":
            return self._token(body) if method == "POST" else _error(405, "Method Not Allowed")
        auth = {k.lower(): v for k, v in headers.items()}.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[len("Bearer ") :] not in self.tokens:
            return _error(401, "Unauthorized: missing or invalid bearer token")

        if path == "/org-unit/projects":
            if method != "GET":
                return _error(405, "Method Not Allowed")
            return 200, {"projects": [self._project(p) for p in self.projects], "next": 0}

        m = re.fullmatch(r"/workloads/(workspaces|trainings|distributed)", path)
        if m:
            return self._create(m.group(1), body) if method == "POST" else _error(405, "Method Not Allowed")

        m = re.fullmatch(r"/workloads/(workspaces|trainings|distributed)/([^/]+)(/suspend|/resume)?", path)
        if m:
            kind, wid, action = m.groups()
            w = self.workloads.get(wid)
            if w is None or w.kind != kind or w.deleted:
                return _error(404, f"workload {wid} not found")
            if action:
                if method != "POST":
                    return _error(405, "Method Not Allowed")
                w.phases = ["Stopping", "Stopped"] if action == "/suspend" else ["Resuming", "Running", self.outcome]
                w.polls = 0
                return 202, {"code": 202, "message": "Accepted"}
            if method == "GET":
                return 200, self._status(w)
            if method == "DELETE":
                w.deleted = True
                return 202, {"code": 202, "message": "Accepted"}
            return _error(405, "Method Not Allowed")

        m = re.fullmatch(r"/workloads/([^/]+)", path)
        if m and method == "GET":
            w = self.workloads.get(m.group(1))
            if w is None or w.deleted:
                return _error(404, f"workload {m.group(1)} not found")
            detailed = self._status(w)
            return 200, {
                "id": w.workload_id,
                "name": detailed["name"],
                "type": w.kind,
                "projectId": detailed["projectId"],
                "clusterId": detailed["clusterId"],
                "phase": detailed["actualPhase"],
                "phaseMessage": w.message,
                "createdAt": detailed["createdAt"],
            }
        return _error(404, f"no route {method} {API}{path}")

    def _token(self, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON TokenRequest")
        # The OpenAPI spells the keys clientID/clientSecret; NeMo-Run sends clientId. The Run:ai control plane
        # decodes JSON case-insensitively (Go encoding/json), so both reach the same field here too.
        fields = {k.lower(): v for k, v in body.items()}
        if fields.get("granttype") != "client_credentials":
            return _error(400, f"unsupported grantType {fields.get('granttype')!r}")
        if fields.get("clientid") != self.client_id or fields.get("clientsecret") != self.client_secret:
            return _error(401, "invalid client credentials")
        token = "fake-" + uuid.uuid4().hex
        self.tokens.add(token)
        return 200, {"accessToken": token, "idToken": token, "refreshToken": "", "expiresIn": 3600}

    def _project(self, p: dict) -> dict:
        return {
            "id": p["id"],
            "name": p["name"],
            "clusterId": p["clusterId"],
            "parentId": "2",
            "description": "",
            "createdAt": "2026-01-01T00:00:00Z",
            "updatedAt": "2026-01-01T00:00:00Z",
            "enforceRunaiScheduler": True,
            "resources": [],
            "totalResources": {},
            "effective": {},
            "status": {"phase": "Ready"},
        }

    def _create(self, kind: str, body: Any) -> tuple[int, Any]:
        problem = self._validate(kind, body)
        if problem:
            return _error(400, problem)
        name = body["name"]
        if body.get("useGivenNameAsPrefix"):
            name = f"{name}-{uuid.uuid4().hex[:5]}"
        wid = str(uuid.uuid4())
        response = {
            "name": name,
            "requestedName": body["name"],
            "workloadId": wid,
            "projectId": body["projectId"],
            "clusterId": body["clusterId"],
            "departmentId": "2",
            "createdBy": self.client_id,
            "createdAt": _now(),
            "desiredPhase": "Running",
            "actualPhase": "Creating",
            "spec": body.get("spec"),
        }
        w = Workload(kind, wid, body, response, [])
        if kind == "workspaces":
            w.phases = ["Running", self._run_data_mover(w)]
        else:
            w.phases = ["Pending", "Running", self._training_outcome(w)]
        self.workloads[wid] = w
        return 202, response

    def _validate(self, kind: str, body: Any) -> str:
        if not isinstance(body, dict):
            return "request body must be a JSON object"
        for key in ("name", "projectId", "clusterId"):
            if not body.get(key):
                return f"{key} is required"
        if not K8S_NAME.match(body["name"]) or len(body["name"]) > 63:
            return f"name {body['name']!r} must be a lowercase DNS label"
        project = next((p for p in self.projects if p["id"] == body["projectId"]), None)
        if project is None:
            return f"project {body['projectId']} not found"
        if project["clusterId"] != body["clusterId"]:
            return f"project {body['projectId']} is not on cluster {body['clusterId']}"
        spec = body.get("spec") or {}
        if not isinstance(spec.get("image"), str) or not spec["image"]:
            return "spec.image is required"
        for key in ("command", "args"):
            if spec.get(key) is not None and not isinstance(spec[key], str):
                return f"spec.{key} must be a string"
        if len(spec.get("args") or "") > MAX_ARGS_CHARS:
            return f"spec.args exceeds {MAX_ARGS_CHARS} characters"
        for pvc in (spec.get("storage") or {}).get("pvc") or []:
            if not isinstance(pvc, dict) or not pvc.get("path"):
                return "spec.storage.pvc[].path is required"
        gpus = (spec.get("compute") or {}).get("gpuDevicesRequest")
        if gpus is not None and (not isinstance(gpus, int) or gpus < 0):
            return "spec.compute.gpuDevicesRequest must be a non-negative integer"
        for env in spec.get("environmentVariables") or []:
            if not isinstance(env, dict) or not env.get("name"):
                return "spec.environmentVariables[].name is required"
        if kind == "distributed":
            if spec.get("distributedFramework") not in DISTRIBUTED_FRAMEWORKS:
                return f"spec.distributedFramework must be one of {DISTRIBUTED_FRAMEWORKS}"
            for key in ("numWorkers", "minReplicas", "maxReplicas"):
                if spec.get(key) is not None and (not isinstance(spec[key], int) or spec[key] < 1):
                    return f"spec.{key} must be a positive integer"
        return ""

    def _status(self, w: Workload) -> dict:
        step = min(w.polls // self.polls_per_phase, len(w.phases) - 1)
        w.polls += 1
        return {**w.response, "actualPhase": w.phases[step]}

    # -- what the pods would do ----------------------------------------------------------------------------------
    def _local(self, spec: dict, abs_path: str) -> Path | None:
        """Where `abs_path` inside the pod lives in pvc_root, or None when no mounted PVC holds it."""
        if self.pvc_root is None:
            return None
        for pvc in (spec.get("storage") or {}).get("pvc") or []:
            mount = pvc["path"].rstrip("/")
            if abs_path == mount or abs_path.startswith(mount + "/"):
                return self.pvc_root / pvc.get("claimName", "unnamed") / abs_path[len(mount) :].lstrip("/")
        self.lost_writes.append(abs_path)
        return None

    def _run_data_mover(self, w: Workload) -> str:
        """Apply a NeMo-Run data-mover command (`sh -c '<a && b && ...>'`) to pvc_root; its final phase."""
        spec = w.spec
        args = spec.get("args") or ""
        if spec.get("command") != "sh -c" or not (args.startswith("'") and args.endswith("'")):
            w.message = f"unsupported workspace command {spec.get('command')!r}"
            return "Failed"
        try:
            for step in args[1:-1].split(" && "):
                self._shell_step(spec, step.strip())
        except (ValueError, OSError, tarfile.TarError) as e:
            w.message = f"data mover failed: {e}"
            return "Failed"
        return self.workspace_outcome

    def _shell_step(self, spec: dict, step: str) -> None:
        def local(p: str) -> Path | None:
            return self._local(spec, p)

        if m := re.fullmatch(r"rm -rf (\S+)", step):
            if (p := local(m.group(1))) and p.exists():
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        elif m := re.fullmatch(r"mkdir -p (?:\$\(dirname (\S+)\)|(\S+))", step):
            target = m.group(2) or str(Path(m.group(1)).parent)
            if p := local(target):
                p.mkdir(parents=True, exist_ok=True)
        elif m := re.fullmatch(r"echo (\S+) \| base64 -d( \| gunzip)? (>>?) (\S+)", step):
            data = base64.b64decode(m.group(1), validate=True)
            if m.group(2):
                data = gzip.decompress(data)
            if p := local(m.group(4)):
                p.parent.mkdir(parents=True, exist_ok=True)
                with open(p, "ab" if m.group(3) == ">>" else "wb") as f:
                    f.write(data)
        elif m := re.fullmatch(r"tar -xzf (\S+) -C (\S+)", step):
            src, dest = local(m.group(1)), local(m.group(2))
            if src and dest:
                with tarfile.open(src, "r:gz") as tar:
                    tar.extractall(dest, filter="data")
        elif m := re.fullmatch(r"rm (\S+)", step):
            if (p := local(m.group(1))) and p.exists():
                p.unlink()
        elif m := re.fullmatch(r"gunzip -f (\S+)\.gz", step):
            if p := local(m.group(1)):
                p.write_bytes(gzip.decompress(p.with_name(p.name + ".gz").read_bytes()))
                p.with_name(p.name + ".gz").unlink()
        elif m := re.fullmatch(r"chmod \+x (\S+)", step):
            if (p := local(m.group(1))) and p.exists():
                p.chmod(0o755)
        else:
            raise ValueError(f"unsupported step {step[:80]!r}")

    def _training_outcome(self, w: Workload) -> str:
        """A training pod runs `/bin/bash <script>`: it fails when the script is not on a mounted PVC."""
        m = re.fullmatch(r"/bin/bash (\S+)", w.spec.get("command") or "")
        if self.pvc_root is not None and m:
            p = self._local(w.spec, m.group(1))
            if p is None or not p.is_file():
                w.message = f"{m.group(1)}: No such file or directory"
                return "Failed"
        return self.outcome


class _Handler(BaseHTTPRequestHandler):
    server_fake: FakeRunAI
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        status, payload = self.server_fake.handle(self.command, self.path, dict(self.headers.items()), raw)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve

    def log_message(self, *args) -> None:  # keep test output clean
        pass


def _error(code: int, message: str) -> tuple[int, dict]:
    return code, {"code": code, "message": message}


def _redact_headers(headers: dict[str, str]) -> dict[str, str]:
    return {k: (REDACTED if k.lower() == "authorization" else v) for k, v in headers.items()}


def _redact_body(path: str, body: Any) -> Any:
    if path == "/token" and isinstance(body, dict):
        return {k: (REDACTED if k.lower() in ("clientsecret", "appsecret", "password") else v) for k, v in body.items()}
    return body


def tar_members(b64_tarball: str) -> dict[str, bytes]:
    """The files of a base64 tar.gz (as a data-mover command carries it): {name: content}."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(b64_tarball)), mode="r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile():
                out[member.name] = tar.extractfile(member).read()
    return out
