"""The data report: what the loader kept, dropped, cut and noticed in each split, printed and saved with the run."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("rlhf_recipes.data")

REPORT_FILE = "data_report.json"
SHOWN_ROWS = 10


@dataclass
class DataReport:
    """What the loader kept, dropped and noticed in one split; printed before training and saved with the run."""

    source: str
    split: str
    stage: str
    rows_read: int = 0
    kept: int = 0
    dropped: dict[str, list[int]] = field(default_factory=dict)
    noted: dict[str, list[int]] = field(default_factory=dict)
    truncated_prompts: int = 0
    truncated_responses: int = 0
    pairs: int | None = None  # the preference pairs the rows became (DPO: rankings expanded); None: not counted

    def drop(self, reason: str, row: int) -> None:
        self.dropped.setdefault(reason, []).append(row)

    def note(self, reason: str, row: int) -> None:
        self.noted.setdefault(reason, []).append(row)

    @property
    def num_dropped(self) -> int:
        return sum(len(rows) for rows in self.dropped.values())

    def summary(self) -> str:
        lines = [f"{self.source} [{self.split}] for {self.stage}: read {self.rows_read}, kept {self.kept}, "
                 f"dropped {self.num_dropped}, prompts truncated {self.truncated_prompts}, "
                 f"{'texts' if self.stage == 'ptx' else 'responses'} truncated {self.truncated_responses}"
                 + (f", pairs {self.pairs}" if self.pairs is not None else "")]
        for title, table in (("dropped", self.dropped), ("kept, noted", self.noted)):
            for reason, rows in table.items():
                shown = ", ".join(map(str, rows[:SHOWN_ROWS])) + (" ..." if len(rows) > SHOWN_ROWS else "")
                lines.append(f"  {title}: {len(rows)} x {reason} (rows {shown})")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "split": self.split, "stage": self.stage, "rows_read": self.rows_read,
            "kept": self.kept, "dropped": self.dropped, "noted": self.noted,
            "truncated_prompts": self.truncated_prompts, "truncated_responses": self.truncated_responses,
            **({"pairs": self.pairs} if self.pairs is not None else {}),
        }

    @property
    def changed_anything(self) -> bool:
        """Rows were dropped or cut, or kept with a quirk: worth a warning on the console, not just the log file."""
        return bool(self.dropped or self.noted or self.truncated_prompts or self.truncated_responses)



def log_report(report: DataReport, path: str | os.PathLike | None = None) -> None:
    """The report on the console: WARNING when rows were dropped, cut or noted (so nobody misses it), else INFO."""
    where = f"\n  full report: {path}" if path is not None else ""
    if report.changed_anything:
        logger.warning("Data report: %s%s", report.summary(), where)
    else:
        logger.info("Data report: %s%s", report.summary(), where)


def save_reports(reports: list[DataReport], output_dir: str | os.PathLike) -> Path:
    """Write the data reports beside the run's checkpoints (`data_report.json`), atomically (every rank may)."""
    path = Path(output_dir) / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{REPORT_FILE}.{os.getpid()}")
    staging.write_text(json.dumps([r.to_dict() for r in reports], indent=2) + "\n")
    os.replace(staging, path)
    return path

