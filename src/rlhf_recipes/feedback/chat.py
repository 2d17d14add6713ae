"""Talking to a policy: a conversation rendered by the project's renderer, kept within the model's context.

Used by `recipes/chat.py` (terminal) and the labeling app's Chat tab (K candidate replies per turn, ranked).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..data import HUMAN, ConversationTemplate, encode_text, resolve_template


@dataclass
class ChatPolicy:
    """A causal LM and its tokenizer (pad token set, left padding) that answers conversations, rendered by `template`
    (default: the tokenizer's chat template when it has one, HH text otherwise; see `data.resolve_template`)."""

    model: torch.nn.Module
    tokenizer: object
    max_new_tokens: int = 64
    temperature: float = 0.7
    top_p: float = 0.9
    template: ConversationTemplate | None = field(default=None)

    def __post_init__(self) -> None:
        if self.template is None:
            self.template = resolve_template(self.tokenizer)

    @property
    def context(self) -> int:
        config = self.model.config
        return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or 1024

    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt for the next assistant turn: the oldest turns are dropped until it fits the context, and a
        single turn that alone is too long keeps its end."""
        budget = self.context - self.max_new_tokens
        turns = list(messages)
        while True:
            prompt = self.template.render_prompt(turns)
            ids = encode_text(self.tokenizer, prompt)
            if len(ids) <= budget:
                return prompt
            if len(turns) > 1:
                turns = turns[2:] if turns[0].get("role") == "user" and len(turns) > 2 else turns[1:]
                continue
            return self.tokenizer.decode(ids[-budget:])

    def replies(self, messages: list[dict[str, str]], k: int = 1, max_attempts: int = 4) -> list[str]:
        """Up to `k` distinct replies to the conversation (which ends with the user's turn)."""
        from .sampling import sample_distinct

        prompt = self.render(messages)
        answers = sample_distinct(self.model, self.tokenizer, [prompt], k=k, max_new_tokens=self.max_new_tokens,
                                  temperature=self.temperature, top_p=self.top_p, max_attempts=max_attempts)[0]
        texts = [clean_reply(self.tokenizer.decode(a, skip_special_tokens=True)) for a in answers]
        out: list[str] = []
        for text in texts:  # cleaning can make two replies equal
            if text not in out:
                out.append(text)
        return out


def clean_reply(text: str) -> str:
    """The assistant's turn only: a model that goes on to write the user's next turn is cut there."""
    cut = text.find(HUMAN)
    return (text[:cut] if cut >= 0 else text).strip()


def load_chat_policy(model_name_or_path: str, *, revision: str = "main", dtype: str | None = None,
                     trust_remote_code: bool = False, conversation_template: str = "auto", **generation) -> ChatPolicy:
    """Load any policy checkpoint (folder, adapter folder or Hub id) through the project's loaders."""
    from trl import ModelConfig

    from ..models import load_model, load_tokenizer

    tokenizer = load_tokenizer(model_name_or_path, revision=revision, trust_remote_code=trust_remote_code,
                               padding_side="left", conversation_template=conversation_template)
    model_args = ModelConfig(model_name_or_path=model_name_or_path, model_revision=revision, dtype=dtype)
    model = load_model(model_args, tokenizer, trust_remote_code=trust_remote_code, apply_lora=False).eval()
    if torch.cuda.is_available():
        model = model.to("cuda")
    return ChatPolicy(model, tokenizer, template=resolve_template(tokenizer, conversation_template), **generation)
