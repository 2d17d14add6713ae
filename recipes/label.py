"""The labeling app (InstructGPT step 2): rank K sampled answers per prompt in a browser, or through its API.

    python recipes/label.py --samples_file runs/demo/feedback/samples.jsonl \
        --comparisons_file runs/demo/feedback/comparisons.jsonl             # http://127.0.0.1:7860
    RLHF_LABEL_AUTH=team:secret python recipes/label.py ... --host 0.0.0.0  # other machines need a password
    python recipes/label.py --comparisons_file ... --push_to_hub --hub_dataset_id you/my-rankings

The comparisons file trains a reward model as it is (`recipes/reward.py --dataset_name comparisons.jsonl`).
"""

import rlhf_recipes  # noqa: F401 - first: it quiets bitsandbytes' import-time kernel lookup

# isort: split
import os
from dataclasses import dataclass, field

from rlhf_recipes.config import ConfigError, run_main

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
AUTH_ENV = "RLHF_LABEL_AUTH"


@dataclass
class LabelArguments:
    samples_file: str = field(default="runs/demo/feedback/samples.jsonl", metadata={"help": "recipes/sample.py's output."})
    comparisons_file: str = field(default="runs/demo/feedback/comparisons.jsonl",
                                  metadata={"help": "Where rankings are appended (the `ranking` format)."})
    host: str = field(default="127.0.0.1", metadata={"help": "Address to bind; a non-local one needs --auth."})
    port: int = field(default=7860, metadata={"help": "Port."})
    auth: str | None = field(default=None, metadata={"help": f"user:password (better: the {AUTH_ENV} variable, "
                                                             "which `ps` does not show)."})
    overlap_fraction: float = field(default=0.1, metadata={"help": "Fraction of items served to several labelers "
                                                                   "(inter-labeler agreement)."})
    overlap_labelers: int = field(default=2, metadata={"help": "How many labelers rank an overlap item."})
    seed: int = field(default=0, metadata={"help": "Seeds the overlap set and the answer order per labeler."})
    chat_model_path: str | None = field(default=None, metadata={"help": "A policy for the Chat tab."})
    chat_num_replies: int = field(default=4, metadata={"help": "Candidate replies per chat turn (2..9)."})
    max_new_tokens: int = field(default=64, metadata={"help": "Chat reply length."})
    push_to_hub: bool = field(default=False, metadata={"help": "Publish the comparisons file and exit."})
    hub_dataset_id: str | None = field(default=None, metadata={"help": "Dataset repository, e.g. you/my-rankings."})
    hub_private_repo: bool = field(default=True, metadata={"help": "Create the dataset repository private."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code (Chat tab)."})


def parse_auth(args: LabelArguments) -> tuple[str, str] | None:
    """The (user, password) to require, from --auth or the environment; refuses a non-local host without one."""
    value = args.auth or os.environ.get(AUTH_ENV)
    auth = None
    if value:
        user, sep, password = value.partition(":")
        if not sep or not user or not password:
            raise ConfigError(f"--auth / {AUTH_ENV} must be user:password.")
        auth = (user, password)
    if auth is None and args.host not in LOCAL_HOSTS:
        raise ConfigError(f"Refusing to serve rankings on {args.host} without a password: anyone who can reach it "
                         f"could read the samples and write labels. Set {AUTH_ENV}=user:password (or --auth), or "
                         "bind 127.0.0.1.")
    return auth


def main(args: LabelArguments, launch: bool = True):
    if args.push_to_hub:
        from rlhf_recipes.feedback.publish import push_labels

        if not args.hub_dataset_id:
            raise ConfigError("--push_to_hub needs --hub_dataset_id (e.g. you/my-rankings).")
        repo = push_labels(args.comparisons_file, args.hub_dataset_id, private=args.hub_private_repo)
        print(f"Pushed to https://huggingface.co/datasets/{repo}")
        return None
    auth = parse_auth(args)
    from rlhf_recipes.feedback.store import LabelStore

    # The samples and the comparisons so far are read first: a wrong path fails before the app or a model loads.
    store = LabelStore(args.samples_file, args.comparisons_file, overlap_fraction=args.overlap_fraction,
                       overlap_labelers=args.overlap_labelers, seed=args.seed)
    from rlhf_recipes.feedback.app import KEYS_JS, build_app

    policy = None
    if args.chat_model_path:
        from rlhf_recipes.feedback.chat import load_chat_policy

        policy = load_chat_policy(args.chat_model_path, trust_remote_code=args.trust_remote_code,
                                  max_new_tokens=args.max_new_tokens)
    app = build_app(store, chat_policy=policy, chat_k=args.chat_num_replies)
    if launch:
        app.launch(server_name=args.host, server_port=args.port, auth=auth, head=KEYS_JS, show_error=True,
                   prevent_thread_lock=False)
    return app


DATACLASSES = (LabelArguments,)

if __name__ == "__main__":
    run_main(main, DATACLASSES)
