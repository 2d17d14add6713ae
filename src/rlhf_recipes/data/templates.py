"""The one conversation renderer every stage and tool uses: the tokenizer's chat template when it has one, the plain
HH text ("\\n\\nHuman: ...\\n\\nAssistant:") otherwise (GPT-2 has no chat template)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"


def split_hh(conversation: str) -> tuple[str, str]:
    """Split an HH conversation into (prompt up to and including the last "\\n\\nAssistant:", final response)."""
    cut = conversation.rfind(ASSISTANT)
    if cut < 0:
        raise ValueError('no "\\n\\nAssistant:" turn')
    cut += len(ASSISTANT)
    return conversation[:cut], conversation[cut:]


TEMPLATE_CHOICES = ("auto", "chat_template", "hh")


def parse_hh(conversation: str) -> list[dict[str, str]]:
    """An HH conversation ("\\n\\nHuman: ...\\n\\nAssistant: ...") as chat messages; text before the first turn is a
    system message."""
    parts = re.split(r"(\n\nHuman:|\n\nAssistant:)", conversation)
    messages = [{"role": "system", "content": parts[0].strip()}] if parts[0].strip() else []
    for marker, content in zip(parts[1::2], parts[2::2]):
        messages.append({"role": "user" if marker == HUMAN else "assistant", "content": content.strip()})
    return messages


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list):
        raise TypeError(f"must be a list of {{'role', 'content'}} messages, got {type(messages).__name__}")
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise TypeError("every message must be a {'role': ..., 'content': <string>} mapping")
        if message.get("role") not in ("system", "user", "assistant"):
            raise ValueError(f"unknown role {message.get('role')!r} (expected system, user or assistant)")


def end_of_turn_token(tokenizer) -> str | None:
    """The special token a chat template closes an assistant turn with (`<|im_end|>`, `<|eot_id|>`), or None."""
    probe = [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong"}]
    rendered = tokenizer.apply_chat_template(probe, tokenize=False)
    after = rendered[rendered.rfind("pong") + len("pong"):]
    ids = tokenizer(after, add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    return tokenizer.convert_ids_to_tokens(ids[0]) if ids and ids[0] in special else None


@dataclass(frozen=True)
class ConversationTemplate:
    """The one conversation renderer: `chat_template` (the tokenizer's) or `hh` (plain text, no tokenizer needed).

    `render_prompt` ends where the template's generation prompt ends (what PPO and generation continue);
    `render_conversation` returns that prompt and the final assistant turn, up to and including `end_of_turn` (chat
    templates) or as " {reply}" (HH, whose EOS each stage appends).
    """

    name: Literal["chat_template", "hh"] = "hh"
    tokenizer: Any = None
    end_of_turn: str | None = None

    def render_prompt(self, messages: list[dict[str, str]]) -> str:
        _check_messages(messages)
        if self.name == "chat_template":
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        parts = []
        for message in messages:
            role, content = message["role"], message["content"].strip()
            parts.append(content if role == "system" else f"{HUMAN if role == 'user' else ASSISTANT} {content}")
        return "".join(parts) + ASSISTANT

    def render_conversation(self, messages: list[dict[str, str]]) -> tuple[str, str]:
        _check_messages(messages)
        if not messages or messages[-1]["role"] != "assistant":
            raise ValueError("the last message must be the assistant's")
        prompt = self.render_prompt(messages[:-1])
        reply = messages[-1]["content"]
        if self.name == "hh":
            return prompt, " " + reply.strip()
        full = self.tokenizer.apply_chat_template(messages, tokenize=False)
        if not full.startswith(prompt):
            raise ValueError("the chat template renders the turns before the reply differently with and without the "
                             "generation prompt, so no prompt is a prefix of the conversation; set "
                             "`conversation_template: hh` or fix the template")
        completion = full[len(prompt):]
        if self.end_of_turn:  # stop at the end-of-turn token: what the policy generates, and where the RM reads
            content_end = completion.find(reply.strip())
            content_end = content_end + len(reply.strip()) if content_end >= 0 else 0
            cut = completion.find(self.end_of_turn, content_end)
            if cut >= 0:
                completion = completion[: cut + len(self.end_of_turn)]
        return prompt, completion

    def reply_text(self, completion: str) -> str:
        """A rendered completion without its end-of-turn token: what the assistant said."""
        return completion.removesuffix(self.end_of_turn) if self.end_of_turn else completion

    def split_hh(self, conversation: str) -> tuple[str, str]:
        """An HH conversation as (prompt, final reply): cut as written (HH), or parsed and rendered (chat template)."""
        if self.name == "hh":
            return split_hh(conversation)
        return self.render_conversation(parse_hh(conversation))


def resolve_template(tokenizer=None, choice: str = "auto") -> ConversationTemplate:
    """`auto`: the tokenizer's chat template when it has one, HH otherwise (also when no tokenizer is given)."""
    if choice not in TEMPLATE_CHOICES:
        raise ValueError(f"conversation_template must be one of {TEMPLATE_CHOICES}, got {choice!r}.")
    has_template = tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))
    if choice == "chat_template" and not has_template:
        name = getattr(tokenizer, "name_or_path", None) or "no tokenizer"
        raise ValueError(f"conversation_template is 'chat_template' but the tokenizer of {name} has no chat template. "
                         "Use `conversation_template: hh` (or auto), or save a tokenizer with a `chat_template`.")
    if choice == "hh" or not has_template:
        return ConversationTemplate("hh")
    return ConversationTemplate("chat_template", tokenizer, end_of_turn_token(tokenizer))


def render_prompt(messages: list[dict[str, str]], tokenizer=None, template: str = "auto") -> str:
    """The turns before an assistant reply, ending where the template's generation prompt ends."""
    return resolve_template(tokenizer, template).render_prompt(messages)


def render_conversation(messages: list[dict[str, str]], tokenizer=None, template: str = "auto") -> tuple[str, str]:
    """(prompt, final assistant turn) of a conversation ending with the assistant's reply; see `ConversationTemplate`."""
    return resolve_template(tokenizer, template).render_conversation(messages)


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of rendered text, with one BOS where the tokenizer uses one: a chat template writes its BOS into the
    text, so the tokenizer adds its own (if it adds one at all) only when the text does not already start with it."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos) and bos in tokenizer("", add_special_tokens=True)["input_ids"]:
        ids = [bos, *ids]
    return ids
