"""Repeat InstructGPT's steps 2-3 on the demo: sample from the current policy, label through the label store,
retrain the RM on all comparisons so far and continue PPO (or, `--method dpo`, continue DPO on all rankings so far),
evaluate (`make iterate ROUNDS=3 [METHOD=dpo]`).

    python recipes/iterate.py --demo_dir runs/demo --rounds 3     # -> runs/demo/iterate/rounds.json, rounds.png
    python recipes/iterate.py --demo_dir runs/demo --rounds 3 --method dpo --output_dir runs/demo/iterate-dpo

A rerun continues after the last finished round and makes the same rounds an uninterrupted run makes.
"""

import rlhf_recipes  # noqa: F401 - first: it quiets bitsandbytes' import-time kernel lookup

# isort: split
from rlhf_recipes.config import run_main
from rlhf_recipes.feedback.rounds import RoundsArguments, rounds_table, run_rounds


def main(args: RoundsArguments) -> list[dict]:
    rounds = run_rounds(args)
    print(rounds_table(rounds))
    return rounds


DATACLASSES = (RoundsArguments,)

if __name__ == "__main__":
    run_main(main, DATACLASSES)
