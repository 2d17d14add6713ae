"""A fake Hugging Face Hub for the publishing tests: a local HTTP stand-in plus patches at the upload boundary.

Everything above the boundary runs for real: `rlhf_recipes.hub` picks the files (its allow-list), resolves the
repository and checks its visibility, the Trainer saves and pushes. `HF_ENDPOINT` points at a small HTTP server on
127.0.0.1 that answers, over real HTTP, the calls that decide whether and where the Hub takes a push:

* `GET /api/whoami-v2`            the token's owner (`FakeHub.user`), whose namespace a bare `name` goes to
                                  (401 for a token in `FakeHub.revoked_tokens`, as every GET here);
* `GET /api/models/<id>`,
  `GET /api/datasets/<id>`        a repository's info (`private`), or 404 RepoNotFound: put a repository in
                                  `FakeHub.repos` to have it exist before the test (e.g. public);
* `POST /api/repos/create`        records the repository (id, type, private, the token sent); 409 when it exists;
* `POST /api/validate-yaml`       the Hub's check of the model card's metadata: 400 with the Hub's message when
                                  `base_model` is not the id of a model on the Hub (one created here or in
                                  `FakeHub.models`) or `datasets` holds something that is not a Hub id.

The file transfer itself (LFS/Xet and the commit call) is patched, because it is not what these tests are about:

* `HfApi.run_as_future`           runs background uploads at once (and keeps their errors, which the Trainer
                                  would never look at);
* `HfApi.create_commit` and
  `_upload_pipeline.pipelined_upload` (the path `upload_folder` takes when `hf_xet` is installed)
                                  record each commit: repository, message, token, and the bytes of every file
                                  (`create_commit` first has the stand-in validate a README.md, as the real one does).

Any other request reaches the stand-in, which answers 404, and fails the test.
"""

from __future__ import annotations

import io
import json
import re
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

# What the Hub accepts as a repository id (namespace/name, or a legacy name without namespace).
HUB_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class Commit:
    repo_id: str
    message: str
    authorization: str | None
    files: dict[str, bytes]


@dataclass
class FakeHub:
    repos: dict[str, dict] = field(default_factory=dict)
    commits: list[Commit] = field(default_factory=list)
    errors: list[Exception] = field(default_factory=list)  # raised inside background (future) uploads
    models: set[str] = field(default_factory=lambda: {"openai-community/gpt2"})  # public models "on the Hub"
    refused_cards: list[str] = field(default_factory=list)  # the Hub's messages for cards it refused
    user: str = "me"  # the owner of every token: `name` alone means `me/name`
    revoked_tokens: set[str] = field(default_factory=set)  # answered 401, as the Hub does for a revoked token

    def files(self, repo_id: str) -> set[str]:
        """Every path ever uploaded to `repo_id`."""
        return {path for c in self.commits if c.repo_id == repo_id for path in c.files}

    def last_commit(self, repo_id: str) -> Commit:
        commits = [c for c in self.commits if c.repo_id == repo_id]
        assert commits, f"nothing was committed to {repo_id}; commits: {[c.repo_id for c in self.commits]}"
        return commits[-1]


def _metadata_errors(hub: FakeHub, content: str) -> list[str]:
    """The Hub's verdict on a README's metadata block: the messages it would answer 400 with."""
    if not content.startswith("---\n"):
        return []  # no metadata block at all is allowed
    metadata = yaml.safe_load(content.split("---\n")[1])
    if not isinstance(metadata, dict):
        return [f"metadata must be a YAML mapping, got {metadata!r}"]
    errors = []
    base_models = metadata.get("base_model", [])
    for base in [base_models] if isinstance(base_models, str) else base_models:
        if not (isinstance(base, str) and HUB_ID.match(base) and (base in hub.models or base in hub.repos)):
            errors.append(f'"base_model" with value "{base}" is not valid. Use a model id from https://hf.co/models')
    datasets = metadata.get("datasets", [])
    for dataset in [datasets] if isinstance(datasets, str) else datasets:
        if not (isinstance(dataset, str) and HUB_ID.match(dataset)):
            errors.append(f'"datasets" with value "{dataset}" is not valid. Use a dataset id from '
                          "https://hf.co/datasets")
    return errors


class _HubHandler(BaseHTTPRequestHandler):
    hub: FakeHub | None = None  # the FakeHub of the test being run

    def _reply(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        hub = type(self).hub
        if self.headers.get("Authorization") in {f"Bearer {t}" for t in hub.revoked_tokens}:
            message = "Invalid credentials in Authorization header"
            return self._reply(401, {"error": message}, {"X-Error-Message": message})
        if self.path == "/api/whoami-v2":
            return self._reply(200, {"type": "user", "name": hub.user, "auth": {}})
        match = re.fullmatch(r"/api/(models|datasets)/(.+?)(?:/revision/[^/]+)?", self.path.split("?")[0])
        if match:
            repo_id, repo_type = match.group(2), "dataset" if match.group(1) == "datasets" else "model"
            repo = hub.repos.get(repo_id)
            if repo is None or (repo.get("repo_type") or "model") != repo_type:
                return self._reply(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            return self._reply(200, {"id": repo_id, "private": repo["private"], "sha": "0" * 40, "siblings": []})
        return self._reply(404, {"error": f"the stand-in Hub does not serve GET {self.path}"})

    def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        hub = type(self).hub
        if self.path == "/api/repos/create":
            repo_id = f"{body.get('organization') or hub.user}/{body['name']}"
            if repo_id in hub.repos:
                return self._reply(409, {"error": "You already created this model repo", "url": repo_id})
            hub.repos[repo_id] = {"private": body.get("visibility") == "private",
                                  "authorization": self.headers.get("Authorization"),
                                  "repo_type": body.get("type") or "model"}
            return self._reply(200, {"url": f"http://{self.headers['Host']}/{repo_id}"})
        if self.path == "/api/validate-yaml":
            errors = _metadata_errors(hub, body.get("content", ""))
            hub.refused_cards += errors
            return self._reply(400 if errors else 200, {"errors": [{"message": e} for e in errors], "warnings": []})
        return self._reply(404, {"error": f"the stand-in Hub does not serve POST {self.path}"})

    def log_message(self, *args) -> None:  # keep the test output clean
        pass


_server: ThreadingHTTPServer | None = None


def _endpoint() -> str:
    """Start the stand-in once per test process (a daemon thread on 127.0.0.1, gone with the process)."""
    global _server
    if _server is None:
        _server = ThreadingHTTPServer(("127.0.0.1", 0), _HubHandler)
        threading.Thread(target=_server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{_server.server_address[1]}"


def _read(operation) -> bytes:
    source = operation.path_or_fileobj
    if isinstance(source, str | Path):
        return Path(source).read_bytes()
    if isinstance(source, bytes):
        return source
    assert isinstance(source, io.BufferedIOBase | io.BytesIO), type(source)
    return source.read()


def _authorization(api, token) -> str | None:
    return api._build_hf_headers(token=token).get("authorization")


def install_fake_hub(monkeypatch) -> FakeHub:
    import huggingface_hub
    from huggingface_hub import CommitInfo, HfApi, _upload_pipeline, constants
    from huggingface_hub._commit_api import CommitOperationAdd

    hub = FakeHub()
    _HubHandler.hub = hub
    endpoint = _endpoint()
    # HF_ENDPOINT is read when huggingface_hub is imported: set both. Requests may leave this process only for
    # the stand-in, so offline mode is lifted for huggingface_hub alone.
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # Clients made before the test keep the endpoint they were made with: huggingface_hub's module-level one,
    # and the one transformers shares (made again, with the stand-in's endpoint, on first use).
    import transformers.utils.hub

    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", endpoint)
    monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)

    def record(api, repo_id, operations, commit_message, token) -> CommitInfo:
        if repo_id not in hub.repos:
            raise AssertionError(f"commit to {repo_id}, which was never created")
        files = {op.path_in_repo: _read(op) for op in operations if isinstance(op, CommitOperationAdd)}
        hub.commits.append(Commit(repo_id, commit_message, _authorization(api, token), files))
        return CommitInfo(commit_url=f"{api.endpoint}/{repo_id}/commit/{'0' * 40}", commit_message=commit_message,
                          commit_description="", oid="0" * 40, _endpoint=api.endpoint)

    def create_commit(self, repo_id, operations, *, commit_message, token=None, repo_type=None, **_):
        operations = list(operations)
        for op in operations:  # as the real create_commit: the card's metadata is checked by the Hub first
            if isinstance(op, CommitOperationAdd) and op.path_in_repo == "README.md":
                with op.as_file() as file:
                    self._validate_yaml(file.read().decode(), repo_type=repo_type, token=token)
        return record(self, repo_id, operations, commit_message, token)

    def pipelined_upload(api, *, repo_id, add_operations, delete_operations, commit_message, token=None, **_):
        return record(api, repo_id, list(delete_operations) + list(add_operations), commit_message, token)

    def run_now(self, fn, *args, **kwargs) -> Future:
        # The Trainer pushes checkpoints in the background while it keeps writing to the same folder; the test runs
        # each push at once so that what it records does not depend on thread timing.
        future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as err:  # noqa: BLE001 - handed to whoever waits on the future, as the real one does
            hub.errors.append(err)
            future.set_exception(err)
        return future

    monkeypatch.setattr(HfApi, "run_as_future", run_now)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    monkeypatch.setattr(_upload_pipeline, "pipelined_upload", pipelined_upload)
    assert huggingface_hub.HfApi is HfApi
    return hub


def remove_every_token(monkeypatch, tmp_path: Path) -> None:
    """No token anywhere: no env variable, and a Hugging Face home (and token file) that holds none."""
    from huggingface_hub import constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_OIDC_ID_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "hf_home"
    home.mkdir()
    monkeypatch.setenv("HF_HOME", str(home))
    # huggingface_hub resolves its paths at import time: point them at the empty home too.
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
