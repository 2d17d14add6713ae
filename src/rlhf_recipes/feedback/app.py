"""The labeling app: a thin Gradio UI over the label store (`recipes/label.py` builds and launches it).

Tabs: *Rank* (a prompt and its K answers in a per-labeler random order; order them best to worst by clicking the
numbers or typing them, flag answers, or skip with a reason), *Stats* (progress and agreement), *Chat* (talk to a
policy: each turn shows K candidate replies, your ranking is stored like any other and the best reply continues
the conversation). Two API endpoints for scripts, JSON strings in and out (`gradio_client`):

    /next_item       (labeler)                           -> {"id", "prompt", "responses"} or {"id": null}
    /submit_ranking  (labeler, item_id, ranking, flags)  -> {"ok": true} or {"ok": false, "error": "..."}

`ranking` is response indices (0-based, as /next_item listed them), best first, comma separated; `flags` is "" or
JSON `{"<index>": ["harmful", ...]}`. In the UI the answers are numbered from 1.

Keys (outside a text box): 1-9 pick the next best answer, Enter submits, Backspace clears, n loads the next item.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .stats import label_stats, stats_markdown
from .store import FLAGS, MAX_K, LabelStore, RankingRefused

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine

KEYS_JS = """
<script>
document.addEventListener("keydown", (event) => {
  const tag = (event.target.tagName || "").toLowerCase();
  if (tag === "input" || tag === "textarea" || event.ctrlKey || event.metaKey || event.altKey) return;
  const click = (id) => { const el = document.querySelector(`#${id}`); if (el) { el.click(); event.preventDefault(); } };
  if (/^[1-9]$/.test(event.key)) click(`pick-${event.key}`);
  else if (event.key === "Enter") click("submit");
  else if (event.key === "Backspace") click("clear");
  else if (event.key === "n") click("next");
});
</script>
"""


def parse_ui_order(text: str, k: int) -> list[int]:
    """The UI's order box: 1-based numbers best first, as "3142", "3 1 4 2" or "3,1,4,2" -> 0-based indices."""
    text = (text or "").strip()
    if not text:
        raise RankingRefused("order the answers first: click their numbers (or type them) best to worst.")
    parts = text.replace(",", " ").split()
    if len(parts) == 1 and k <= 9:
        parts = list(parts[0])
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise RankingRefused(f"the order {text!r} must be answer numbers 1-{k}, best first (e.g. 3142).") from None
    return [n - 1 for n in numbers]


def api_next_item(store: LabelStore, labeler: str) -> str:
    try:
        item = store.next_item(labeler)
    except RankingRefused as err:
        return json.dumps({"id": None, "error": str(err)})
    return json.dumps(item if item is not None else {"id": None})


def api_submit_ranking(store: LabelStore, labeler: str, item_id: str, ranking: str, flags: str) -> str:
    try:
        store.submit(labeler, item_id, ranking, flags)
    except RankingRefused as err:
        return json.dumps({"ok": False, "error": str(err)})
    return json.dumps({"ok": True})


def build_app(store: LabelStore, chat_policy=None, chat_k: int = 4, title: str = "rlhf-recipes labeling"):
    """The Gradio Blocks app over `store`; `chat_policy` (a `ChatPolicy`) enables the Chat tab."""
    import gradio as gr

    def next_item_api(labeler: str) -> str:
        return api_next_item(store, labeler)

    def submit_ranking_api(labeler: str, item_id: str, ranking: str, flags: str) -> str:
        return api_submit_ranking(store, labeler, item_id, ranking, flags)

    with gr.Blocks(title=title) as app:
        gr.api(next_item_api, api_name="next_item")
        gr.api(submit_ranking_api, api_name="submit_ranking")
        gr.Markdown(f"## {title}\nRank each prompt's answers best to worst. Keys: **1-9** pick the next best answer, "
                    "**Enter** submits, **Backspace** clears, **n** next item (outside text boxes).")
        labeler = gr.Textbox(label="Your name (labeler)", elem_id="labeler", max_lines=1)
        with gr.Tab("Rank", elem_id="tab-rank"):
            rank_ui(gr, store, labeler)
        with gr.Tab("Stats", elem_id="tab-stats"):
            stats_box = gr.Markdown(stats_markdown(label_stats(store)), elem_id="stats")
            gr.Button("Refresh", elem_id="refresh-stats").click(lambda: stats_markdown(label_stats(store)),
                                                                outputs=stats_box, api_visibility="private")
        with gr.Tab("Chat", elem_id="tab-chat"):
            if chat_policy is None:
                gr.Markdown("Start the app with `--chat_model_path` to talk to a policy here.")
            else:
                chat_ui(gr, store, labeler, chat_policy, chat_k)
    return app


def _slots(gr, prefix: str, with_flags: bool) -> tuple[list, list, list, list]:
    boxes, texts, picks, flags = [], [], [], []
    for i in range(MAX_K):
        with gr.Group(visible=False) as box:
            with gr.Row():
                pick = gr.Button(str(i + 1), elem_id=f"{prefix}pick-{i + 1}", scale=0, min_width=48)
                text = gr.Markdown(elem_id=f"{prefix}answer-{i + 1}")
            flag = gr.CheckboxGroup(list(FLAGS), label="flags", show_label=False, elem_id=f"{prefix}flags-{i + 1}",
                                    visible=with_flags)
        boxes.append(box)
        texts.append(text)
        picks.append(pick)
        flags.append(flag)
    return boxes, texts, picks, flags


def _append_js(number: int) -> str:
    """Append `number` to the order box in the browser: instant, and fast clicks or keys cannot race."""
    return ("(order) => { const p = /[ ,]/.test(order) ? order.split(/[ ,]+/).filter(Boolean) : order.trim().split('');"
            f" if (!p.includes('{number}')) p.push('{number}'); return p.join(' '); }}")


def rank_ui(gr, store: LabelStore, labeler) -> None:
    item_state = gr.State(None)  # the item being ranked: {"id", "prompt", "responses"}
    with gr.Row():
        next_button = gr.Button("Next item (n)", elem_id="next", variant="secondary")
    prompt = gr.Markdown(elem_id="prompt")
    boxes, texts, picks, flags = _slots(gr, "", with_flags=True)
    order = gr.Textbox(label="Order, best first (click the numbers, or type e.g. 3142; Enter submits)",
                       elem_id="order", max_lines=1)
    with gr.Row():
        submit = gr.Button("Submit ranking (Enter)", elem_id="submit", variant="primary")
        clear = gr.Button("Clear order", elem_id="clear")
    with gr.Row():
        reason = gr.Textbox(label="Skip reason", elem_id="skip-reason", max_lines=1, scale=3)
        skip = gr.Button("Skip item", elem_id="skip", scale=1)
    status = gr.Markdown(elem_id="status")

    def show(name: str, note: str = ""):
        try:
            item = store.next_item(name)
        except RankingRefused as err:
            return [None, "", "", f"**{err}**"] + _hidden(gr)
        if item is None:
            return [None, "**Nothing left to rank. Thank you!**", "", note] + _hidden(gr)
        k = len(item["responses"])
        left = len(store.remaining(name))
        updates = [gr.update(visible=i < k) for i in range(MAX_K)]
        updates += [gr.update(value=item["responses"][i] if i < k else "") for i in range(MAX_K)]
        updates += [gr.update(value=[]) for _ in range(MAX_K)]
        return [item, f"**Prompt** ({left} left for {name}):\n\n{item['prompt']}", "", note] + updates

    outputs = [item_state, prompt, order, status, *boxes, *texts, *flags]
    next_button.click(show, inputs=labeler, outputs=outputs, api_visibility="private")
    labeler.submit(show, inputs=labeler, outputs=outputs, api_visibility="private")

    for i, pick in enumerate(picks):
        pick.click(None, inputs=order, outputs=order, js=_append_js(i + 1), api_visibility="private")
    clear.click(lambda: "", outputs=order, api_visibility="private")

    def do_submit(name: str, item: dict[str, Any] | None, typed: str, *flag_values):
        if item is None:
            return show(name, "Load an item first (Next item).")
        k = len(item["responses"])
        try:
            ranking = parse_ui_order(typed, k)
            chosen = {str(i): list(v) for i, v in enumerate(flag_values[:k]) if v}
            store.submit(name, item["id"], ranking, chosen)
        except RankingRefused as err:
            return [gr.update()] * 3 + [f"**Not saved:** {err}"] + [gr.update()] * (3 * MAX_K)
        return show(name, f"Saved your ranking of {item['id']}.")

    submit.click(do_submit, inputs=[labeler, item_state, order, *flags], outputs=outputs, api_visibility="private")
    order.submit(do_submit, inputs=[labeler, item_state, order, *flags], outputs=outputs, api_visibility="private")

    def do_skip(name: str, item: dict[str, Any] | None, why: str):
        if item is None:
            return show(name, "Nothing to skip.")
        try:
            store.skip(name, item["id"], why)
        except RankingRefused as err:
            return [gr.update()] * 3 + [f"**Not skipped:** {err}"] + [gr.update()] * (3 * MAX_K)
        return show(name, f"Skipped {item['id']} ({why.strip()}).")

    skip.click(do_skip, inputs=[labeler, item_state, reason], outputs=outputs, api_visibility="private")


def _hidden(gr) -> list:
    return ([gr.update(visible=False) for _ in range(MAX_K)] + [gr.update(value="") for _ in range(MAX_K)]
            + [gr.update(value=[]) for _ in range(MAX_K)])


def chat_ui(gr, store: LabelStore, labeler, policy, k: int) -> None:
    history = gr.State([])  # messages so far: [{"role", "content"}]
    candidates = gr.State([])
    chatbot = gr.Chatbot(elem_id="chatbot", height=320)
    message = gr.Textbox(label="Your message (Enter sends)", elem_id="chat-message", max_lines=3)
    boxes, texts, picks, _ = _slots(gr, "chat-", with_flags=False)
    order = gr.Textbox(label="Order the replies, best first (the best continues the conversation)",
                       elem_id="chat-order", max_lines=1)
    submit = gr.Button("Submit ranking", elem_id="chat-submit", variant="primary")
    status = gr.Markdown(elem_id="chat-status")

    def as_chatbot(messages):
        return [{"role": m["role"], "content": m["content"]} for m in messages]

    def send(text: str, messages: list):
        if not text.strip():
            return [messages, [], gr.update(), "", "Type a message first."] + [gr.update()] * (2 * MAX_K)
        turn = messages + [{"role": "user", "content": text.strip()}]
        replies = policy.replies(turn, k=k)
        shown = [gr.update(visible=i < len(replies)) for i in range(MAX_K)]
        shown += [gr.update(value=replies[i] if i < len(replies) else "") for i in range(MAX_K)]
        note = "" if len(replies) >= 2 else "The model gave only one distinct reply: it continues the conversation."
        if len(replies) < 2:
            turn = turn + [{"role": "assistant", "content": replies[0] if replies else ""}]
            return [turn, [], as_chatbot(turn), "", note] + _hidden(gr)[: 2 * MAX_K]
        return [turn, replies, as_chatbot(turn), "", note] + shown

    send_outputs = [history, candidates, chatbot, message, status, *boxes, *texts]
    message.submit(send, inputs=[message, history], outputs=send_outputs, api_visibility="private")
    for i, pick in enumerate(picks):
        pick.click(None, inputs=order, outputs=order, js=_append_js(i + 1), api_visibility="private")

    def rank(name: str, messages: list, replies: list, typed: str):
        if not replies:
            return [messages, replies, gr.update(), typed, "Send a message first."] + [gr.update()] * (2 * MAX_K)
        try:
            ranking = parse_ui_order(typed, len(replies))
            row = store.submit_conversation(name, policy.render(messages), replies, ranking)
        except RankingRefused as err:
            return [messages, replies, gr.update(), typed, f"**Not saved:** {err}"] + [gr.update()] * (2 * MAX_K)
        best = replies[ranking[0]]
        messages = messages + [{"role": "assistant", "content": best}]
        return [messages, [], as_chatbot(messages), "", f"Saved ranking {row['item_id']}."] + _hidden(gr)[: 2 * MAX_K]

    rank_outputs = [history, candidates, chatbot, order, status, *boxes, *texts]
    submit.click(rank, inputs=[labeler, history, candidates, order], outputs=rank_outputs, api_visibility="private")
    order.submit(rank, inputs=[labeler, history, candidates, order], outputs=rank_outputs, api_visibility="private")
