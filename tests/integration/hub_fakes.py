"""A fake Hugging Face Hub for the publishing tests, patched in at `huggingface_hub`'s network boundary.

Everything above the boundary runs for real: `HfApi.upload_folder` lists the folder and applies the ignore
patterns, `Trainer.push_to_hub` saves and picks its files. What would go over HTTP is replaced:

* `HfApi.create_repo`             records the repository (id, private, the token sent);
* `HfApi._validate_yaml`          the Hub's check of the model card's metadata, done locally with PyYAML;
* `HfApi.run_as_future`           runs background uploads at once (and keeps their errors, which the Trainer
                                  would never look at);
* `HfApi.create_commit` and
  `_upload_pipeline.pipelined_upload` (the path `upload_folder` takes when `hf_xet` is installed)
                                  record each commit: repository, message, token, and the bytes of every file.

Any other request would hit `HF_HUB_OFFLINE=1` and fail the test.
"""

from __future__ import annotations

import io
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import yaml


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

    def files(self, repo_id: str) -> set[str]:
        """Every path ever uploaded to `repo_id`."""
        return {path for c in self.commits if c.repo_id == repo_id for path in c.files}

    def last_commit(self, repo_id: str) -> Commit:
        commits = [c for c in self.commits if c.repo_id == repo_id]
        assert commits, f"nothing was committed to {repo_id}; commits: {[c.repo_id for c in self.commits]}"
        return commits[-1]


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
    from huggingface_hub import CommitInfo, HfApi, RepoUrl, _upload_pipeline
    from huggingface_hub._commit_api import CommitOperationAdd

    hub = FakeHub()

    def create_repo(self, repo_id, *, token=None, private=None, exist_ok=False, repo_type=None, **_):
        assert "/" in repo_id, f"a Hub repo id is namespace/name, got {repo_id!r}"
        hub.repos[repo_id] = {"private": private, "authorization": _authorization(self, token),
                              "repo_type": repo_type}
        return RepoUrl(f"{self.endpoint}/{repo_id}", endpoint=self.endpoint)

    def validate_yaml(self, content, *, repo_type=None, token=None):
        if not content.startswith("---\n"):
            return  # no metadata block at all is allowed
        metadata = yaml.safe_load(content.split("---\n")[1])
        if not isinstance(metadata, dict):
            raise ValueError(f"Invalid metadata in README.md: {metadata!r}")

    def record(api, repo_id, operations, commit_message, token) -> CommitInfo:
        if repo_id not in hub.repos:
            raise AssertionError(f"commit to {repo_id}, which was never created")
        files = {op.path_in_repo: _read(op) for op in operations if isinstance(op, CommitOperationAdd)}
        hub.commits.append(Commit(repo_id, commit_message, _authorization(api, token), files))
        return CommitInfo(commit_url=f"{api.endpoint}/{repo_id}/commit/{'0' * 40}", commit_message=commit_message,
                          commit_description="", oid="0" * 40, _endpoint=api.endpoint)

    def create_commit(self, repo_id, operations, *, commit_message, token=None, **_):
        return record(self, repo_id, list(operations), commit_message, token)

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
    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "_validate_yaml", validate_yaml)
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
