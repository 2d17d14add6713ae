"""One dataset loader for every stage: a Hub id or a local file in, validated and formatted splits out.

Input formats (`--dataset_format`, detected from the columns when `auto`):
    prompt_completion  `prompt`, `completion`
    text               `text` (plain language modelling, SFT only)
    messages           `messages`: a list of `{"role", "content"}` turns
    hh                 Anthropic HH: `chosen` and `rejected` full conversations
    preference         `prompt`, `chosen`, `rejected`
    ranking            `prompt`, `responses` (a list ordered best to worst, K from 2 to 9)
    prompt             `prompt` alone (PPO and evaluation prompts)

Output per stage:
    sft     `prompt`, `completion` (or `text`)
    reward  `prompt`, `chosen`, `rejected`, or `prompt`, `responses` for rankings
    dpo     `prompt`, `chosen`, `rejected`: rankings become the pairs `pair_selection` picks (optional `ties` column)
    prompts `prompt` (PPO and evaluation)

Conversations (`messages`, HH `chosen`/`rejected`, `prompt`/`chosen`/`rejected` given as lists of messages) are
rendered by one renderer, `ConversationTemplate` (`conversation_template: auto|chat_template|hh`): the tokenizer's
chat template when it has one, else the plain-text HH template (GPT-2 has no chat template):

    "\\n\\nHuman: {user turn}\\n\\nAssistant: {assistant turn}\\n\\nHuman: ...\\n\\nAssistant:"

The prompt ends where the template's generation prompt ends (HH: the last "\\n\\nAssistant:"); the completion is the
final assistant turn up to and including the template's end-of-turn token, which the tokenizer loader makes the EOS.
SFT, the reward model, PPO and evaluation all see this text, so a policy is scored in the format it was trained on.
Plain strings (`prompt`, `completion`, `text`) are taken as already rendered and used as written.

Row numbers in messages are 1-based positions in the source split (for a JSONL file, its line numbers).
The package holds one module per concern: `reading` (files, Hub ids and row type checks), `templates` (the
conversation renderer), `formats` (per-stage formats and `load_stage_dataset`) and `report` (the data report), `rankings` (the pairs a ranking implies).
Nothing here imports a trainer.
"""

from .formats import (
    FORMAT_COLUMNS,
    FORMATTERS,
    MAX_RANKING_SIZE,
    STAGE_FORMATS,
    Stage,
    detect_format,
    format_split,
    load_stage_dataset,
    rankings_to_pairs,
    tokenize_prompts,
    tokenize_texts,
)
from .rankings import PAIR_SELECTIONS, ranking_pairs, ties_problem
from .reading import (
    CONVERSATIONAL_COLUMNS,
    LIST_COLUMNS,
    LOCAL_EXTENSIONS,
    STRING_COLUMNS,
    DataError,
    check_row_types,
    column_type_problem,
    load_raw_dataset,
    read_jsonl,
)
from .report import REPORT_FILE, DataReport, log_report, save_reports
from .templates import (
    ASSISTANT,
    HUMAN,
    TEMPLATE_CHOICES,
    ConversationTemplate,
    encode_text,
    end_of_turn_token,
    parse_hh,
    render_conversation,
    render_prompt,
    resolve_template,
    split_hh,
)

__all__ = [
    "ASSISTANT", "CONVERSATIONAL_COLUMNS", "FORMATTERS", "FORMAT_COLUMNS", "HUMAN", "LIST_COLUMNS",
    "LOCAL_EXTENSIONS", "MAX_RANKING_SIZE", "PAIR_SELECTIONS", "REPORT_FILE", "STAGE_FORMATS", "STRING_COLUMNS", "TEMPLATE_CHOICES",
    "ConversationTemplate", "DataError", "DataReport", "Stage", "check_row_types", "column_type_problem",
    "detect_format", "encode_text", "end_of_turn_token", "format_split", "load_raw_dataset", "load_stage_dataset",
    "log_report", "parse_hh", "ranking_pairs", "rankings_to_pairs", "read_jsonl", "render_conversation", "render_prompt", "resolve_template",
    "save_reports", "split_hh", "tokenize_prompts", "ties_problem", "tokenize_texts",
]
