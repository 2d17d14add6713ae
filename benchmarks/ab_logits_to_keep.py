"""A/B evidence for a PPO trainer speed-up, now applied: compute the LM head only where PPO reads it.

The trainer's reference forward (`score_rollout`) and `PolicyAndValue.forward` (every PPO micro-step) used to
compute logits for the whole prompt + response and keep `logits[:, context_length - 1 : -1]`; they now pass
transformers' `logits_to_keep = response length + 1`. GPT-2's LM head (d x 50258) is ~30% of a 124M forward per
token, so the saving grows with the prompt length; the full-length fp32 logits also dominated activation memory.
This script measures, on the 124M-shape model, a no-grad scoring forward and a
training forward + backward, with and without it, alternating A and B, and checks the log-probs are identical.

    python benchmarks/ab_logits_to_keep.py --prompt 112 --response 16 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=112)
    parser.add_argument("--response", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", default=str(HERE.parent / "runs" / "bench"))
    args = parser.parse_args()

    import torch
    from fixtures import prepare_models
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(prepare_models(Path(args.cache), "124m")["policy"])
    ids = torch.randint(0, 50000, (args.batch, args.prompt + args.response))
    responses = ids[:, args.prompt:]
    keep = args.response + 1  # positions context_length - 1 .. end - 1, plus the last (dropped by [:-1])

    def logprobs(logits):
        return torch.log_softmax(logits.float(), -1).gather(-1, responses[..., None]).squeeze(-1)

    def score(full: bool):
        with torch.no_grad():
            if full:
                logits = model(input_ids=ids, use_cache=False).logits[:, args.prompt - 1: -1]
            else:
                logits = model(input_ids=ids, use_cache=False, logits_to_keep=keep).logits[:, :-1]
            return logprobs(logits)

    def train_step(full: bool):
        if full:
            logits = model(input_ids=ids, use_cache=False).logits[:, args.prompt - 1: -1]
        else:
            logits = model(input_ids=ids, use_cache=False, logits_to_keep=keep).logits[:, :-1]
        logprobs(logits).mean().backward()
        model.zero_grad(set_to_none=True)

    model.eval()
    same = torch.allclose(score(True), score(False), atol=1e-5)
    results = {("score", True): [], ("score", False): [], ("train", True): [], ("train", False): []}
    for repeat in range(args.repeats):
        for full in ((True, False) if repeat % 2 == 0 else (False, True)):
            for kind, fn in (("score", score), ("train", train_step)):
                start = time.perf_counter()
                fn(full)
                results[(kind, full)].append(time.perf_counter() - start)
    print(f"124M shape, batch {args.batch}, prompt {args.prompt} + response {args.response} tokens, "
          f"{torch.get_num_threads()} thread(s); log-probs identical: {same}")
    print("| pass | full logits s | logits_to_keep s | saving |\n| --- | --- | --- | --- |")
    for kind in ("score", "train"):
        a, b = statistics.median(results[(kind, True)]), statistics.median(results[(kind, False)])
        print(f"| {kind} | {a:.2f} | {b:.2f} | {(1 - b / a) * 100:.0f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
