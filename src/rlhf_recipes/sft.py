"""Stage 1: TRL's `SFTTrainer`, with our crash safety (atomic checkpoints, stop on a non-finite loss)."""

from trl import SFTTrainer as TrlSFTTrainer

from .checkpoints import SafeTrainerMixin


class SFTTrainer(SafeTrainerMixin, TrlSFTTrainer):
    """Loss on completion tokens only (`completion_only_loss`), EOS appended to every completion (TRL's doing)."""
