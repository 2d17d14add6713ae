"""What every stage does around training: check its output folder (`prepare_output_dir`: a finished stage is not
trained over unasked), pick the checkpoint to resume, save the final folder, publish it.

A finished stage folder holds the weights (safetensors), config, tokenizer, `stage_metrics.json`,
`data_report.json`, a `README.md` model card, and for LoRA runs the adapter (plus `merged/` on request). The next
stage reads that folder by path, or by Hub id once pushed.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from .checkpoints import CheckpointError, latest_checkpoint, sorted_checkpoints, verify_checkpoint
from .config import ConfigError
from .data import DataReport, save_reports

logger = logging.getLogger(__name__)
STAGE_METRICS_FILE = "stage_metrics.json"


def resolve_resume_checkpoint(training_args) -> str | None:
    """`--resume_from_checkpoint latest` (or `true`) picks the newest good `checkpoint-*` of `output_dir` (damaged ones
    are skipped with a warning); an explicit path must be a good checkpoint."""
    value = training_args.resume_from_checkpoint
    if value in (None, "", "false", "False"):
        return None
    if str(value).lower() in ("latest", "true"):
        last = latest_checkpoint(training_args.output_dir)
        if last is None:
            logger.warning("No usable checkpoint in %s to resume from: starting fresh.", training_args.output_dir)
        return last
    if not os.path.isdir(value) and os.path.isdir(os.path.join(training_args.output_dir, value)):
        value = os.path.join(training_args.output_dir, value)  # `checkpoint-300` means the one of this run
    if not os.path.isdir(value):
        raise CheckpointError(f"resume_from_checkpoint={value} is not a folder. Use a checkpoint-N path or 'latest'.")
    return verify_checkpoint(value)


# What a finished stage leaves at the top of its folder (`save_stage`): any one of them means a model is there that a
# later stage or tool may read.
FINISHED_STAGE_FILES = ("config.json", "adapter_config.json", "model.safetensors", "model.safetensors.index.json",
                        STAGE_METRICS_FILE, "trainer_state.json")


class OutputExistsError(ConfigError, FileExistsError):
    """`output_dir` holds a finished stage (or another run's checkpoints) and the run was not asked to replace it."""


def finished_stage_files(output_dir: str | os.PathLike) -> list[str]:
    """The files of `FINISHED_STAGE_FILES` at the top of `output_dir` (empty: no finished model there)."""
    folder = Path(output_dir)
    return [name for name in FINISHED_STAGE_FILES if (folder / name).is_file()]


def _resume_requested(training_args) -> bool:
    return training_args.resume_from_checkpoint not in (None, "", "false", "False")


def prepare_output_dir(training_args, script_args) -> Path | None:
    """Before anything is loaded: refuse to train into a folder that holds a finished stage or another run's
    checkpoints, unless the run resumes from one of them (`--resume_from_checkpoint`) or is asked to replace them
    (`--overwrite_output_dir true`), in which case the old folder is first renamed to `<output_dir>.previous-<UTC
    time>` so that the new model, its checkpoints and its metrics start in an empty folder and nothing of the old
    run is lost (delete the old folder once the new model is good). Returns where the old folder went, or None.

    What reads a stage folder (the next stage, sampling, evaluation) never sees a mix of two runs: the old one until
    it is moved, then no model until the new run saves (an error, not a wrong model).
    """
    output_dir = Path(training_args.output_dir)
    overwrite = bool(getattr(script_args, "overwrite_output_dir", False))
    moved = None
    # One process decides and moves; the others check after it (a barrier), and then find an empty folder.
    with training_args.main_process_first(local=False, desc="checking the output folder"):
        finished = finished_stage_files(output_dir)
        checkpoints = sorted_checkpoints(output_dir)
        if not finished and not checkpoints:
            return None
        resume = _resume_requested(training_args)
        if resume and (checkpoints or str(training_args.resume_from_checkpoint).lower() not in ("latest", "true")):
            return None  # continuing the run that is there (resolve_resume_checkpoint checks the checkpoint)
        if not overwrite:
            what = (f"a finished model ({', '.join(finished)})" if finished else
                    f"the checkpoints of an unfinished run ({', '.join(p.name for p in checkpoints[-3:])})")
            resume_hint = ("`--resume_from_checkpoint latest` to continue the run that is there, " if checkpoints
                           else "")
            raise OutputExistsError(
                f"output_dir {output_dir} already holds {what}; training into it would mix two runs (and what reads "
                f"that folder would see a half-replaced stage). Choose a new `output_dir` (e.g. one folder per data "
                f"round), {resume_hint}or `--overwrite_output_dir true` to move the old folder aside to "
                f"{output_dir}.previous-<time> and start clean."
            )
        if training_args.process_index == 0:
            folder = output_dir.resolve()
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            moved = folder.with_name(f"{folder.name}.previous-{stamp}")
            for n in range(2, 100):  # two replacements within a second
                if not moved.exists():
                    break
                moved = folder.with_name(f"{folder.name}.previous-{stamp}-{n}")
            try:
                output_dir.rename(moved)
            except OSError as err:
                raise ConfigError(f"--overwrite_output_dir: could not move {output_dir} aside to {moved}: {err}. "
                                  "Move or delete it yourself, or choose another `output_dir`.") from err
            logger.warning("overwrite_output_dir: moved the previous contents of %s to %s (delete it once the new "
                           "model is good).", output_dir, moved)
    return moved


def check_hub_token(training_args) -> None:
    """Refuse a token given as an argument; with `push_to_hub`, check before training what the push needs (a token,
    a safe `hub_strategy`, a repository that is new, private or public on purpose; `hub.check_training_push`)."""
    if getattr(training_args, "hub_token", None) is not None:
        # The training arguments are pickled into training_args.bin, which the Trainer uploads with the model.
        raise ConfigError("Do not pass the Hub token as `hub_token`/`--hub_token`: the training arguments are saved "
                         "(training_args.bin) and uploaded with the model. Export HF_TOKEN or run `hf auth login`.")
    if not getattr(training_args, "push_to_hub", False):
        return
    from .hub import HubError, check_training_push

    try:
        check_training_push(training_args)
    except HubError as err:
        raise ConfigError(f"push_to_hub is set, but: {err} Do it before launching, so the run can publish.") from err


def write_stage_metrics(output_dir: str | os.PathLike, metrics: dict[str, Any]) -> Path:
    """Write `stage_metrics.json` afresh: the metrics of the run that saved the folder, and of no earlier run."""
    path = Path(output_dir) / STAGE_METRICS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return path


def save_stage(
    trainer,
    *,
    stage: str,
    script_args,
    model_args,
    metrics: dict[str, Any],
    reports: list[DataReport] | None = None,
) -> Path:
    """Save the trained model with its tokenizer, metrics, data report and model card, and push when asked."""
    output_dir = Path(trainer.args.output_dir)
    try:
        # `_internal_call`: no "Model save" push yet, the folder is not complete (card, metrics, reports).
        trainer.save_model(str(output_dir), _internal_call=True)
        if trainer.accelerator.is_main_process:
            trainer.state.save_to_json(str(output_dir / "trainer_state.json"))  # logs for plots, also w/o checkpoints
            trainer.processing_class.save_pretrained(output_dir)
            if reports:
                save_reports(reports, output_dir)
            write_stage_metrics(output_dir, {"stage": stage, **metrics})
            if getattr(model_args, "use_peft", False) and getattr(script_args, "merge_adapter", False):
                unwrapped = trainer.accelerator.unwrap_model(trainer.model)
                policy = getattr(unwrapped, "policy", unwrapped)  # PPO trains policy and value model as one module
                merge_adapter(policy, trainer.processing_class, output_dir / "merged")
            from .model_card import write_model_card

            write_model_card(output_dir, stage=stage, script_args=script_args, model_args=model_args,
                             training_args=trainer.args, metrics=metrics, command=" ".join(sys.argv))
    except OSError as err:  # disk full, permissions: the training is done, its checkpoints are what is left
        last = latest_checkpoint(output_dir)
        keep = (f"The last checkpoint, {last}, is intact: fix the cause and rerun with `--resume_from_checkpoint "
                f"latest` to save from it." if last else "No checkpoint was saved (`save_strategy`), so the "
                "training has to be rerun once the cause is fixed.")
        raise CheckpointError(f"Could not write the final {stage} model to {output_dir}: {err}. {keep}") from err
    if trainer.args.push_to_hub:
        trainer.accelerator.wait_for_everyone()
        if trainer.accelerator.is_main_process:
            # Our uploader rather than Trainer.push_to_hub: the folder is already complete (and gathered under
            # ZeRO-3), our model card stays, and only the allow-listed files go up (no pickles, no checkpoints).
            from .hub import PUBLIC_FLAG_STAGE, push_run

            push_run(output_dir, trainer.hub_model_id or trainer.args.hub_model_id or output_dir.name,
                     private=trainer.args.hub_private_repo is not False, commit_message=f"{stage}: final model",
                     public_flag=PUBLIC_FLAG_STAGE)
        trainer.accelerator.wait_for_everyone()
    return output_dir


def merge_adapter(peft_model, tokenizer, output_dir: Path) -> Path:
    """Save the LoRA adapter merged into its base as a standalone model (the adapter itself stays as is)."""
    import copy

    merged = copy.deepcopy(peft_model).merge_and_unload()
    merged.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    return output_dir
