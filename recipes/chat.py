"""Chat with any policy checkpoint in the terminal: one line in, one reply out; `/exit` or EOF (Ctrl-D) ends.

    python recipes/chat.py --model_name_or_path runs/demo/ppo
    echo "What did you think of the western?" | python recipes/chat.py --model_name_or_path runs/gpt2/ppo

The conversation is rendered by the project's renderer (rlhf_recipes.data) and its oldest turns are dropped when it would
no longer fit the model's context. `/reset` starts over.
"""

import rlhf_recipes  # noqa: F401 - first: it quiets bitsandbytes' import-time kernel lookup

# isort: split
import sys
from dataclasses import dataclass, field

from transformers import set_seed
from trl import ModelConfig

from rlhf_recipes.config import ConfigError, run_main
from rlhf_recipes.feedback.chat import load_chat_policy


@dataclass
class ChatArguments:
    max_new_tokens: int = field(default=64, metadata={"range": "[1, inf)", "help": "Longest reply, in tokens."})
    temperature: float = field(default=0.7, metadata={"range": "(0, inf)", "help": "Sampling temperature."})
    top_p: float = field(default=0.9, metadata={"range": "(0, 1]", "help": "Nucleus sampling."})
    conversation_template: str = field(
        default="auto", metadata={"help": "auto (the tokenizer's chat template, else HH text), chat_template or hh: "
                                          "render the conversation as the policy was trained.",
                                  "choices": ["auto", "chat_template", "hh"]})
    seed: int = field(default=0, metadata={"range": "[0, 4294967295]", "help": "Sampling seed."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})


def main(chat_args: ChatArguments, model_args: ModelConfig, stdin=None, stdout=None) -> list[dict[str, str]]:
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    if not model_args.model_name_or_path:
        raise ConfigError("Give a policy with --model_name_or_path (a folder, an adapter folder or a Hub id).")
    set_seed(chat_args.seed)
    policy = load_chat_policy(model_args.model_name_or_path, revision=model_args.model_revision,
                              dtype=model_args.dtype, trust_remote_code=chat_args.trust_remote_code,
                              max_new_tokens=chat_args.max_new_tokens, temperature=chat_args.temperature,
                              top_p=chat_args.top_p, conversation_template=chat_args.conversation_template)
    interactive = stdin.isatty()
    if interactive:
        print(f"Chatting with {model_args.model_name_or_path}. /reset starts over, /exit or Ctrl-D ends.", file=stdout)
    messages: list[dict[str, str]] = []
    while True:
        if interactive:
            print("you> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line or line.strip() == "/exit":
            break
        text = line.strip()
        if not text:
            continue
        if text == "/reset":
            messages = []
            continue
        messages.append({"role": "user", "content": text})
        reply = policy.replies(messages, k=1)[0]
        messages.append({"role": "assistant", "content": reply})
        print(f"bot> {reply}", file=stdout, flush=True)
    return messages


DATACLASSES = (ChatArguments, ModelConfig)

if __name__ == "__main__":
    run_main(main, DATACLASSES)
