"""Crash safety shared by every trainer: atomic, verifiable checkpoints, preemption, a stop on non-finite losses.

Checkpoints are written to a staging folder and renamed when complete. A kill during a save leaves at most a
`tmp-checkpoint-*` folder, which is never picked up (only `checkpoint-<step>` folders are). The last file written
into each checkpoint, just before the rename, is `manifest.json`: every file with its size, and the sha256 of the
weights. `latest_checkpoint` (what `--resume_from_checkpoint latest` uses) checks the newest checkpoints against
their manifests and skips, with a warning, any that is incomplete, altered or cannot be opened; an explicit path to
a damaged checkpoint is an error. A save that fails (disk full, no permission) removes its staging folder, leaves
the previous checkpoints as they were, and stops the run saying why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .config import UserError
from .hub import HubPushMixin
from .preemption import PreemptionCallback

logger = logging.getLogger(__name__)

STAGING_PREFIX = "tmp-"
MANIFEST_FILE = "manifest.json"
HASHED_SUFFIXES = (".safetensors",)  # the weights; optimizer and RNG state are checked by size
CHECKPOINT_PATTERN = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


class NonFiniteError(UserError, RuntimeError):
    """A loss, score or KL became NaN/inf; the message names the step and the quantity (and what to change)."""


class CheckpointError(UserError):
    """A checkpoint that cannot be used or written; the message names it and says what to do."""


# ----------------------------------------------------------------------------------------------------------------
# Manifests
# ----------------------------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: str | os.PathLike) -> Path:
    """Record every file of a finished checkpoint (size; sha256 for weights) in `manifest.json`, written last."""
    folder = Path(folder)
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE):
        entry = {"size": path.stat().st_size}
        if path.suffix in HASHED_SUFFIXES:
            entry["sha256"] = _sha256(path)
        files[path.relative_to(folder).as_posix()] = entry
    manifest = folder / MANIFEST_FILE
    staging = folder / f".{MANIFEST_FILE}.tmp"
    with open(staging, "w") as handle:
        json.dump({"version": 1, "files": files}, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staging, manifest)
    return manifest


def _open_problems(folder: Path) -> list[str]:
    """What cannot be opened: trainer_state.json that does not parse, weights whose header does not read."""
    from safetensors import safe_open

    problems = []
    state = folder / "trainer_state.json"
    if not state.is_file():
        problems.append("no trainer_state.json")
    else:
        try:
            json.loads(state.read_text())
        except (ValueError, OSError) as err:
            problems.append(f"trainer_state.json does not parse ({err})")
    weights = sorted(folder.rglob("*.safetensors"))
    if not weights and not any(folder.glob("global_step*")):
        problems.append("no weights (*.safetensors)")
    for path in weights:
        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except Exception as err:  # noqa: BLE001 - safetensors raises several error types for a bad header
            problems.append(f"{path.relative_to(folder)} cannot be opened ({err})")
    return problems


def checkpoint_problems(folder: str | os.PathLike) -> list[str]:
    """Why a checkpoint cannot be resumed from (an empty list when it can).

    With a manifest: every listed file must be there with its size, and the weights with their sha256. Without one
    (saved before manifests existed, or by another tool) the checkpoint is accepted if its files open.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return ["it is not a folder"]
    manifest_file = folder / MANIFEST_FILE
    if not manifest_file.is_file():
        problems = _open_problems(folder)
        if not problems:
            logger.warning("Checkpoint %s has no %s (saved before manifests); its files open, so it is used.",
                           folder, MANIFEST_FILE)
        return [f"no {MANIFEST_FILE} and {p}" for p in problems]
    try:
        files = json.loads(manifest_file.read_text())["files"]
    except (ValueError, KeyError, OSError) as err:
        return [f"{MANIFEST_FILE} does not parse ({err})"]
    problems = []
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != entry["size"]:
            problems.append(f"{name} has {path.stat().st_size} bytes, the manifest says {entry['size']}")
        elif "sha256" in entry and _sha256(path) != entry["sha256"]:
            problems.append(f"{name} does not match its sha256 (altered or corrupted)")
    return problems or _open_problems(folder)


def sorted_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The `checkpoint-<step>` folders of a run, oldest first (staging folders excluded)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if p.is_dir() and (m := CHECKPOINT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | os.PathLike) -> str | None:
    """The newest checkpoint of `run_dir` that passes `checkpoint_problems`; damaged newer ones are skipped loudly."""
    for checkpoint in reversed(sorted_checkpoints(run_dir)):
        problems = checkpoint_problems(checkpoint)
        if not problems:
            return str(checkpoint)
        logger.warning("Skipping damaged checkpoint %s: %s. Trying the one before it.", checkpoint,
                       "; ".join(problems))
    return None


def verify_checkpoint(path: str | os.PathLike) -> str:
    """Refuse an explicitly named checkpoint that is damaged, saying what is wrong and what to use instead."""
    problems = checkpoint_problems(path)
    if problems:
        run_dir = Path(path).parent
        good = latest_checkpoint(run_dir) if run_dir.is_dir() else None
        instead = (f"The newest good checkpoint there is {good}; use it, or `--resume_from_checkpoint latest`."
                   if good else "Use another checkpoint, or start without --resume_from_checkpoint.")
        raise CheckpointError(f"Cannot resume from {path}: {'; '.join(problems)}. {instead}")
    return str(path)


def _any_rank(flag: bool, device) -> bool:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    value = torch.tensor([int(flag)], dtype=torch.int32, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


class AtomicCheckpointMixin(HubPushMixin):
    """Mix into a `transformers.Trainer` subclass (before it in the bases): atomic, manifested `_save_checkpoint`,
    a stop with a checkpoint on SIGTERM/SIGINT (`preemption.PreemptionCallback`), and checkpoint pushes of the
    allow-listed files only (`hub.HubPushMixin`)."""

    _staging_root: str | None = None
    _push_after_rename: bool = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        preemption = PreemptionCallback()
        self.add_callback(preemption)
        # train() can also leave by an exception (a non-finite loss, a failed save), which skips on_train_end: the
        # signal handlers must not outlive it (in a notebook or a test, Ctrl-C would only set a flag). Wrapped on
        # the instance, so that trainers with a train() of their own (PPO) get it too.
        train = self.train

        def train_then_restore_signals(*train_args, **train_kwargs):
            try:
                return train(*train_args, **train_kwargs)
            finally:
                preemption.restore_signals()

        self.train = train_then_restore_signals

    def _get_output_dir(self, trial) -> str:
        if self._staging_root is not None:
            return self._staging_root
        return super()._get_output_dir(trial)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # With `push_to_hub`, the Trainer uploads output_dir in the background from inside the save. The staging
        # folder (optimizer and RNG state) is in output_dir then, and would go up or vanish mid-upload: wait for
        # the rename.
        if self._staging_root is not None:
            self._push_after_rename = True
            return
        super()._push_from_checkpoint(checkpoint_folder)

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = super()._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_root = os.path.join(run_dir, f"{STAGING_PREFIX}{name}")
        if self.args.should_save and os.path.isdir(staging_root):
            shutil.rmtree(staging_root)  # left over from a save that was killed
        self.accelerator.wait_for_everyone()
        limit, self.args.save_total_limit = self.args.save_total_limit, None  # rotate after the rename instead
        self._staging_root = staging_root
        error: Exception | None = None
        try:
            super()._save_checkpoint(model, trial)
        except Exception as err:  # noqa: BLE001 - disk full, permissions, quota: caught on the rank it happened on
            error = err
        finally:
            self._staging_root = None
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()
        final = Path(run_dir) / name
        if error is None and self.args.should_save:
            try:
                write_manifest(os.path.join(staging_root, name))
                _replace_folder(Path(staging_root) / name, final)
            except OSError as err:
                error = err
        if _any_rank(error is not None, self.args.device):
            if self.args.should_save:
                shutil.rmtree(staging_root, ignore_errors=True)  # give the space back; the older ones stay
            if error is not None and not _storage_error(error):
                raise error  # a bug, not the disk: keep its traceback
            previous = [str(p) for p in sorted_checkpoints(run_dir)]
            kept = f"The previous checkpoint {previous[-1]} is intact" if previous else "No earlier checkpoint exists"
            why = f"{error}" if error is not None else "another process failed to write its part"
            why += _free_space(run_dir)
            raise CheckpointError(
                f"Could not save {name} in {run_dir}: {why}. {kept}. Free disk space or fix the folder's "
                "permissions, then run the same command with --resume_from_checkpoint latest."
            ) from error
        if self.args.should_save:
            shutil.rmtree(staging_root, ignore_errors=True)
            _rotate(run_dir, limit)
            if self._push_after_rename:
                self._push_after_rename = False
                self._push_from_checkpoint(str(final))
        self.accelerator.wait_for_everyone()


# How writing errors look when they do not arrive as OSError: torch.save's zip writer raises a RuntimeError
# ("[enforce fail at inline_container.cc] ... unexpected pos"), safetensors a SafetensorError ("os error 28").
_STORAGE_HINTS = ("No space left", "os error", "Errno", "inline_container", "file write failed", "Permission denied",
                  "Disk quota", "Read-only file system", "I/O error")


def _storage_error(error: BaseException) -> bool:
    return isinstance(error, OSError) or any(hint in str(error) for hint in _STORAGE_HINTS)


def _free_space(folder: str) -> str:
    try:
        return f" ({shutil.disk_usage(folder).free / 2**20:.0f} MiB free on that disk)"
    except OSError:
        return ""


def _replace_folder(source: Path, target: Path) -> None:
    """Rename `source` to `target`; an existing `target` (a re-save of the same step) is kept until it succeeds."""
    if not target.exists():
        os.replace(source, target)
        return
    old = target.with_name(f"{STAGING_PREFIX}old-{target.name}")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    try:
        os.replace(source, target)
    except OSError:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _rotate(run_dir: str, limit: int | None) -> None:
    if not limit:
        return
    for old in sorted_checkpoints(run_dir)[:-limit]:
        shutil.rmtree(old, ignore_errors=True)


class SafeTrainerMixin(AtomicCheckpointMixin):
    """Atomic checkpoints, and a NaN/inf training loss stops the run naming the step (the last checkpoint stays)."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            raise NonFiniteError(
                f"Non-finite training loss ({loss.item()}) at step {self.state.global_step + 1} of "
                f"{self.args.output_dir}. The last complete checkpoint is kept; lower the learning rate, check the "
                "data, or resume from it with --resume_from_checkpoint latest."
            )
        return loss
