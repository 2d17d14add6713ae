"""The labeling app (InstructGPT step 2): rank K sampled answers per prompt in a browser, or through its API.

    python recipes/label.py --samples_file runs/demo/feedback/samples.jsonl \
        --comparisons_file runs/demo/feedback/comparisons.jsonl             # http://127.0.0.1:7860
    python -m rlhf_recipes.feedback.users add ann --users_file labelers.txt  # one account per labeler
    python recipes/label.py ... --users_file labelers.txt --host 0.0.0.0   # other machines need accounts
    RLHF_LABEL_AUTH=me:secret python recipes/label.py ... --host 0.0.0.0   # or one account (yours)
    python recipes/label.py --comparisons_file ... --push_to_hub --hub_dataset_id you/my-rankings

The comparisons file trains a reward model as it is (`recipes/reward.py --dataset_name comparisons.jsonl`).
"""

import rlhf_recipes  # noqa: F401 - first: it quiets bitsandbytes' import-time kernel lookup

# isort: split
import os
from dataclasses import dataclass, field

from rlhf_recipes.config import ConfigError, run_main
from rlhf_recipes.feedback.users import AUTH_ENV, USERS_ENV, Users, load_accounts
from rlhf_recipes.hub import PRIVATE_REPO_HELP

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class LabelArguments:
    samples_file: str = field(default="runs/demo/feedback/samples.jsonl", metadata={"help": "recipes/sample.py's output."})
    comparisons_file: str = field(default="runs/demo/feedback/comparisons.jsonl",
                                  metadata={"help": "Where rankings are appended (the `ranking` format)."})
    host: str = field(default="127.0.0.1", metadata={"help": "Address to bind; a non-local one needs accounts."})
    port: int = field(default=7860, metadata={"range": "[1, 65535]", "help": "Port."})
    share: bool = field(default=False, metadata={"help": "A public gradio.live link (also GRADIO_SHARE=true); "
                                                         "needs accounts."})
    users_file: str | None = field(default=None, metadata={"help": f"Labeler accounts, name:hash[:admin] lines "
                                                                   f"(also {USERS_ENV}); write them with `python -m "
                                                                   "rlhf_recipes.feedback.users add NAME`."})
    auth: str | None = field(default=None, metadata={"help": f"One account, user:password (better: the {AUTH_ENV} "
                                                             "variable, which `ps` does not show)."})
    guidelines: str | None = field(default=None, metadata={"help": "A Markdown file of labeling instructions, shown "
                                                                   "above the items."})
    lease_seconds: float = field(default=600.0, metadata={
        "range": "(0, inf)", "help": "How long a served item stays reserved for its labeler before it returns to the "
                                     "pool."})
    overlap_fraction: float = field(default=0.1, metadata={
        "range": "[0, 1]", "help": "Fraction of items served to several labelers (inter-labeler agreement)."})
    overlap_labelers: int = field(default=2, metadata={"range": "[2, inf)",
                                                       "help": "How many labelers rank an overlap item."})
    seed: int = field(default=0, metadata={"range": "[0, 4294967295]",
                                           "help": "Seeds the overlap set and the answer order per labeler."})
    chat_model_path: str | None = field(default=None, metadata={"role": "policy", "help": "A policy for the Chat tab."})
    chat_num_replies: int = field(default=4, metadata={"range": "[2, 9]",
                                                       "help": "Candidate replies per chat turn (2..9)."})
    max_new_tokens: int = field(default=64, metadata={"range": "[1, inf)", "help": "Chat reply length."})
    push_to_hub: bool = field(default=False, metadata={
        "help": "Publish the comparisons file as a Hub dataset (train.jsonl and a card; labeler names replaced by "
                "pseudonyms) and exit, without starting the app. Needs --hub_dataset_id and HF_TOKEN."})
    hub_dataset_id: str | None = field(default=None, metadata={"help": "Dataset repository, e.g. you/my-rankings."})
    hub_private_repo: bool = field(default=True, metadata={"help": PRIVATE_REPO_HELP})
    keep_labeler_names: bool = field(default=False, metadata={
        "help": "Publish labeler names as they are. Default: each name is replaced by a pseudonym (a salted hash; "
                "the salt stays in the comparisons file's folder)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code (Chat tab)."})


def wants_share(args: LabelArguments) -> bool:
    """--share, or Gradio's own GRADIO_SHARE variable (which would otherwise turn a public link on by itself)."""
    return args.share or os.environ.get("GRADIO_SHARE", "").strip().lower() in ("true", "1", "yes")


def parse_auth(args: LabelArguments) -> Users | None:
    """The accounts to require (--users_file / --auth or their variables); refuses a non-local host or a public
    share link without them."""
    users = load_accounts(args.users_file, args.auth)
    if users is None:
        where = f"on {args.host}" if args.host not in LOCAL_HOSTS else ("through a public share link (--share / "
                                                                        "GRADIO_SHARE)" if wants_share(args) else "")
        if where:
            raise ConfigError(f"Refusing to serve rankings {where} without a password: anyone who can reach it "
                              f"could read the samples and write labels. Give labelers accounts (--users_file or "
                              f"{USERS_ENV}; or one account with {AUTH_ENV}=user:password), or bind 127.0.0.1 "
                              "without sharing.")
    return users


def main(args: LabelArguments, launch: bool = True):
    if args.push_to_hub:
        from rlhf_recipes.feedback.publish import push_labels

        if not args.hub_dataset_id:
            raise ConfigError("--push_to_hub needs --hub_dataset_id (e.g. you/my-rankings).")
        repo = push_labels(args.comparisons_file, args.hub_dataset_id, private=args.hub_private_repo,
                           keep_labeler_names=args.keep_labeler_names)
        print(f"Pushed to https://huggingface.co/datasets/{repo}")
        return None
    users = parse_auth(args)
    share = wants_share(args)
    from rlhf_recipes.feedback.store import LabelStore

    guidelines = None
    if args.guidelines:
        if not os.path.isfile(args.guidelines):
            raise ConfigError(f"--guidelines {args.guidelines}: no such file (a Markdown file of labeling "
                              "instructions).")
        with open(args.guidelines, encoding="utf-8") as handle:
            guidelines = handle.read()
    # The samples and the comparisons so far are read first: a wrong path fails before the app or a model loads.
    store = LabelStore(args.samples_file, args.comparisons_file, overlap_fraction=args.overlap_fraction,
                       overlap_labelers=args.overlap_labelers, seed=args.seed, lease_seconds=args.lease_seconds)
    from rlhf_recipes.feedback.app import KEYS_JS, build_app
    policy = None
    if args.chat_model_path:
        from rlhf_recipes.feedback.chat import load_chat_policy

        policy = load_chat_policy(args.chat_model_path, trust_remote_code=args.trust_remote_code,
                                  max_new_tokens=args.max_new_tokens)
    app = build_app(store, chat_policy=policy, chat_k=args.chat_num_replies, users=users, guidelines=guidelines)
    if launch:
        # `share` always explicit: left None, Gradio turns a public link on by itself in notebooks and on
        # GRADIO_SHARE. quiet: no "set share=True" hint; the addresses are printed below.
        app.launch(server_name=args.host, server_port=args.port, auth=users.check if users else None, share=share,
                   head=KEYS_JS, show_error=True, quiet=True, prevent_thread_lock=True)
        accounts = f"{len(users)} account(s)" if users else "no accounts: this machine only"
        print(f"Labeling app on {app.local_url} ({accounts})" + (f", shared at {app.share_url}" if share else "")
              + ". Ctrl+C stops it.", flush=True)
        app.block_thread()
    return app


DATACLASSES = (LabelArguments,)

if __name__ == "__main__":
    run_main(main, DATACLASSES)
