"""Tiny Llama-3- and Qwen2-shaped checkpoints with chat templates, built offline from config for tests.

The demo's byte-level BPE gets each family's special tokens and a chat template in its style: Llama 3's headers,
`<|eot_id|>` and a BOS that both the template writes and the tokenizer adds (the double-BOS trap), and Qwen2's
ChatML with a default system turn and `<|im_end|>`. The models have 2 layers of width 64.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers.processors import TemplateProcessing
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
FAMILIES = {
    "llama3": {"end_of_turn": "<|eot_id|>", "bos": "<|begin_of_text|>",
               "generation_prompt": "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
               "special": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                           "<|eot_id|>"]},
    "qwen2": {"end_of_turn": "<|im_end|>", "bos": None, "generation_prompt": "<|im_end|>\n<|im_start|>assistant\n",
              "special": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]},
}


def save_chat_model(family: str, demo_dir: Path, folder: Path, seed: int = 0) -> Path:
    """Save a tokenizer with `family`'s chat template and a random 2-layer model of that architecture."""
    spec = FAMILIES[family]
    tokenizer = AutoTokenizer.from_pretrained(demo_dir / "base")
    tokenizer.add_special_tokens({"additional_special_tokens": spec["special"]})
    if family == "llama3":
        # Llama 3's tokenizer ships eos <|end_of_text|> (the instruct template ends turns with <|eot_id|>) and adds
        # its BOS to every encoding, while the template also writes it.
        tokenizer.bos_token, tokenizer.eos_token = "<|begin_of_text|>", "<|end_of_text|>"
        tokenizer.chat_template = LLAMA3_TEMPLATE
        bos_id = tokenizer.convert_tokens_to_ids("<|begin_of_text|>")
        tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
            single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B", special_tokens=[("<|begin_of_text|>", bos_id)])
        config_class, model_class = LlamaConfig, LlamaForCausalLM
    else:
        tokenizer.eos_token = "<|endoftext|>"  # the base model's EOS; the loader switches to <|im_end|>
        tokenizer.chat_template = CHATML_TEMPLATE
        config_class, model_class = Qwen2Config, Qwen2ForCausalLM
    tokenizer.model_max_length = 256
    config = config_class(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                          tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    model_class(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
