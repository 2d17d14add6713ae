"""Run SFT, reward and PPO on a tiny chat model one after another in this process (also under `accelerate launch`:
one launch instead of three) and save what each stage's trainer was fed.

    python tests/chat_stage_runner.py ROOT DATA [EXTRA RECIPE ARGS ...]

ROOT holds `base/` and receives each stage's folder; DATA is `chat_models.write_chat_data`'s folder. Writes
`ROOT/fed-<stage>.rank<N>.json` per process (`chat_models.run_stage`), for the distributed chat-template test.
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    root, data, extra = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    from accelerate.state import AcceleratorState
    from chat_models import run_stage, stage_args

    for stage in ("sft", "reward", "ppo"):
        fed = run_stage(stage, [*stage_args(stage, root, data), *extra])
        (root / f"fed-{stage}.rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(fed))
        # The next stage's Trainer builds its own accelerator and DeepSpeed engine from its own arguments.
        AcceleratorState._reset_state(reset_partial_state=False)


if __name__ == "__main__":
    main()
