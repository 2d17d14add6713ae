"""Several labelers at once against the labeling app, through its gradio_client API: does any item get more rankings
than its quota, is any serve token used twice?

    PYTHONPATH=src python benchmarks/label_concurrency.py --items 200 --labelers 4 --overlap_fraction 0.1

Launches the app in this process on 127.0.0.1 over a fresh samples file, runs one gradio_client per labeler in
threads (each: next item, submit a ranking, until nothing is left), then counts the stored rankings per item against
the store's quota (one labeler; `overlap_labelers` for the overlap set). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--labelers", type=int, default=4)
    parser.add_argument("--overlap_fraction", type=float, default=0.1)
    parser.add_argument("--overlap_labelers", type=int, default=2)
    args = parser.parse_args(argv)

    from gradio_client import Client

    from rlhf_recipes.feedback.app import build_app
    from rlhf_recipes.feedback.store import LabelStore

    folder = Path(tempfile.mkdtemp(prefix="label-concurrency-"))
    samples = folder / "samples.jsonl"
    samples.write_text("".join(json.dumps({"id": f"item{i}", "prompt": f"Prompt {i}:",
                                           "responses": [f" answer {i}.{j}" for j in range(args.k)]}) + "\n"
                               for i in range(args.items)))
    store = LabelStore(samples, folder / "comparisons.jsonl", overlap_fraction=args.overlap_fraction,
                       overlap_labelers=args.overlap_labelers)
    app = build_app(store)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    accepted, refused, tokens = Counter(), Counter(), []
    lock = threading.Lock()
    ranking = ",".join(map(str, range(args.k)))

    def labeler(name: str) -> None:
        client = Client(url, verbose=False)
        while True:
            item = json.loads(client.predict(name, api_name="/next_item"))
            if item.get("id") is None:
                return
            extra = (item["token"],) if "token" in item else ()  # the serve token, where the app has one
            answer = json.loads(client.predict(name, item["id"], ranking, "", *extra, api_name="/submit_ranking"))
            with lock:
                tokens.extend(extra)
                (accepted if answer["ok"] else refused)[name] += 1
            if not answer["ok"] and "token" not in item:
                return  # an app without serve tokens would serve the same item again

    start = time.time()
    threads = [threading.Thread(target=labeler, args=(f"labeler{i}",)) for i in range(args.labelers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.time() - start
    app.close()
    rows = [json.loads(line) for line in (folder / "comparisons.jsonl").read_text().splitlines()]
    per_item = Counter(row["item_id"] for row in rows)
    over = sum(max(0, n - store.wanted(store.items[i])) for i, n in per_item.items())
    result = {"labelers": args.labelers, "items": args.items, "overlap_fraction": args.overlap_fraction,
              "stored_rankings": len(rows), "over_quota": over,
              "items_over_quota": sum(1 for i, n in per_item.items() if n > store.wanted(store.items[i])),
              "refused": sum(refused.values()), "tokens_used_twice": len(tokens) - len(set(tokens)),
              "seconds": round(seconds, 1)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
