"""The labeling app: a thin Gradio UI over the label store (`recipes/label.py` builds and launches it).

Tabs: *Rank* (a prompt and its K answers in a per-labeler random order; order them best to worst by clicking the
numbers or typing them, `=` between two equally good neighbours, flag answers, or skip with a reason), *Stats*
(progress and agreement), *Chat* (talk to a policy: each turn shows K candidate replies, your ranking is stored like
any other and the best reply continues the conversation). Prompts and answers are shown as literal text in read-only
text boxes: no Markdown, no HTML, nothing fetched, whitespace kept; what a labeler ranks is what the reward model
trains on. Optional `guidelines` (the project owner's Markdown) are shown above the tabs.

API endpoints for scripts, JSON strings in and out (`gradio_client`):

    /next_item       (labeler)                                  -> {"id", "prompt", "responses", "token",
                                                                    "lease_seconds"} or {"id": null}
    /submit_ranking  (labeler, item_id, ranking, flags, token)  -> {"ok": true} or {"ok": false, "error": "..."}
    /skip_item       (labeler, item_id, reason, token)          -> {"ok": true} or {"ok": false, "error": "..."}

`ranking` is response indices (0-based, as /next_item listed them), best first, comma separated, `=` instead of a
comma between two answers that are equally good (e.g. "2,0=3,1"); `flags` is "" or JSON `{"<index>": ["harmful",
...]}`; `token` is the one /next_item returned (an empty token is accepted when `item_id` is the labeler's open item).
With accounts the labeler is the logged-in user (`Client(url, auth=(name, password))`); the `labeler` argument
must then be empty or that name. In the UI the answers are numbered from 1.

Keys (outside a text box): 1-9 pick the next best answer, = ties it with the next one, Enter submits, Backspace
clears, n loads the next item.
"""

# No `from __future__ import annotations`: Gradio finds `request: gr.Request` parameters (and gr.api's types)
# with get_type_hints, which cannot resolve the local `gr` from string annotations.
import html
import json
import os
from typing import Any

from .stats import label_stats, stats_html
from .store import FLAGS, MAX_K, LabelStore, RankingRefused, check_order, read_order
from .users import Users

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine
MAX_MESSAGE_CHARS = 4000  # a Chat tab message: the policy's context is short, and it is stored with the ranking

KEYS_JS = """
<script>
document.addEventListener("keydown", (event) => {
  const tag = (event.target.tagName || "").toLowerCase();
  if (tag === "input" || tag === "textarea" || event.ctrlKey || event.metaKey || event.altKey) return;
  const click = (id) => { const el = document.querySelector(`#${id}`); if (el) { el.click(); event.preventDefault(); } };
  if (/^[1-9]$/.test(event.key)) click(`pick-${event.key}`);
  else if (event.key === "=") click("tie");
  else if (event.key === "Enter") click("submit");
  else if (event.key === "Backspace") click("clear");
  else if (event.key === "n") click("next");
});
</script>
"""


def escape(text: Any) -> str:
    """HTML-escape `text`, and the characters Gradio's HTML templates could read as template syntax."""
    return html.escape(str(text)).translate({ord("{"): "&#123;", ord("}"): "&#125;", ord("$"): "&#36;",
                                             ord("`"): "&#96;"})


def _note(text: str, strong: str = "") -> str:
    return f"<p>{f'<b>{escape(strong)}</b> ' if strong else ''}{escape(text)}</p>" if text or strong else ""


def parse_ui_order(text: str, k: int) -> tuple[list[int], list[list[int]]]:
    """The UI's order box: 1-based numbers best first, as "3142", "3 1 4 2" or "3,1=4,2" -> (0-based indices, ties)."""
    text = (text or "").strip()
    if not text:
        raise RankingRefused("order the answers first: click their numbers (or type them) best to worst.")
    order, ties = read_order(text, k, one_based=True)
    return check_order(order, k), ties


class Identity:
    """Who is labeling: the logged-in user when the app has accounts, else the name typed in the box."""

    def __init__(self, users: Users | None):
        self.users = users

    def __call__(self, typed: str | None, request: Any) -> str:
        if self.users is None:
            return typed or ""
        name = getattr(request, "username", None)
        if not name:
            raise RankingRefused("log in first.")
        if typed and typed.strip() and typed.strip() != name:
            raise RankingRefused(f"you are logged in as {name!r} and can label only as yourself; nothing was saved.")
        return name

    def stats_viewer(self, request: Any) -> str | None:
        """None (everything) for an admin or an app without accounts; else the user, who sees their own numbers."""
        if self.users is None:
            return None
        name = getattr(request, "username", None)
        return None if self.users.is_admin(name) else (name or "")


def api_next_item(store: LabelStore, labeler: str) -> str:
    try:
        item = store.next_item(labeler)
    except RankingRefused as err:
        return json.dumps({"id": None, "error": str(err)})
    return json.dumps(item if item is not None else {"id": None})


def api_submit_ranking(store: LabelStore, labeler: str, item_id: str, ranking: str, flags: str,
                       token: str = "") -> str:
    try:
        store.submit(labeler, item_id or None, ranking, flags, token=token or None)
    except RankingRefused as err:
        return json.dumps({"ok": False, "error": str(err)})
    return json.dumps({"ok": True})


def api_skip_item(store: LabelStore, labeler: str, item_id: str, reason: str, token: str = "") -> str:
    try:
        store.skip(labeler, item_id or None, reason, token=token or None)
    except RankingRefused as err:
        return json.dumps({"ok": False, "error": str(err)})
    return json.dumps({"ok": True})


def build_app(store: LabelStore, chat_policy=None, chat_k: int = 4, title: str = "rlhf-recipes labeling",
              users: Users | None = None, guidelines: str | None = None):
    """The Gradio Blocks app over `store`; `chat_policy` (a `ChatPolicy`) enables the Chat tab; `users` makes the
    labeler the logged-in user (launch with `auth=users.check`); `guidelines` is Markdown shown above the tabs."""
    import gradio as gr

    who = Identity(users)

    def refused(err: RankingRefused) -> str:
        return json.dumps({"ok": False, "error": str(err)})

    def next_item_api(labeler: str, request: gr.Request) -> str:
        try:
            return api_next_item(store, who(labeler, request))
        except RankingRefused as err:
            return json.dumps({"id": None, "error": str(err)})

    def submit_ranking_api(labeler: str, item_id: str, ranking: str, flags: str, token: str = "",
                           request: gr.Request = None) -> str:
        try:
            return api_submit_ranking(store, who(labeler, request), item_id, ranking, flags, token)
        except RankingRefused as err:
            return refused(err)

    def skip_item_api(labeler: str, item_id: str, reason: str, token: str = "", request: gr.Request = None) -> str:
        try:
            return api_skip_item(store, who(labeler, request), item_id, reason, token)
        except RankingRefused as err:
            return refused(err)

    def current_stats(request: gr.Request) -> str:
        return stats_html(label_stats(store), viewer=who.stats_viewer(request))

    with gr.Blocks(title=title) as app:
        gr.api(next_item_api, api_name="next_item")
        gr.api(submit_ranking_api, api_name="submit_ranking")
        gr.api(skip_item_api, api_name="skip_item")
        gr.Markdown(f"## {title}\nRank each prompt's answers best to worst. Keys: **1-9** pick the next best answer, "
                    "**=** ties it with the next one, **Enter** submits, **Backspace** clears, **n** next item "
                    "(outside text boxes).")
        if guidelines:
            with gr.Accordion("Guidelines", open=True, elem_id="guidelines-box"):
                gr.Markdown(guidelines, elem_id="guidelines")
        labeler = gr.Textbox(label="Your name (labeler)", elem_id="labeler", max_lines=1, visible=users is None)
        if users is not None:
            def logged_in_as(request: gr.Request) -> str:
                return _note(getattr(request, "username", "") or "", "Logged in as")

            logged_in = gr.HTML(elem_id="logged-in")
            app.load(logged_in_as, outputs=logged_in, api_visibility="private")
        with gr.Tab("Rank", elem_id="tab-rank"):
            rank_ui(gr, store, labeler, who)
        with gr.Tab("Stats", elem_id="tab-stats") as stats_tab:
            stats_box = gr.HTML(elem_id="stats")
            gr.Button("Refresh", elem_id="refresh-stats").click(current_stats, outputs=stats_box,
                                                                api_visibility="private")
        # current numbers whenever the tab is opened (and on page load), not a snapshot from start-up
        stats_tab.select(current_stats, outputs=stats_box, api_visibility="private")
        app.load(current_stats, outputs=stats_box, api_visibility="private")
        with gr.Tab("Chat", elem_id="tab-chat"):
            if chat_policy is None:
                gr.Markdown("Start the app with `--chat_model_path` to talk to a policy here.")
            else:
                chat_ui(gr, store, labeler, who, chat_policy, chat_k)
    return app


def _literal(gr, elem_id: str, label: str | None = None):
    """Read-only text: shown exactly as stored (no Markdown or HTML, newlines and spaces kept)."""
    return gr.Textbox(label=label, show_label=label is not None, interactive=False, elem_id=elem_id, lines=1,
                      max_lines=24, container=label is not None)


def _slots(gr, prefix: str, with_flags: bool) -> tuple[list, list, list, list]:
    boxes, texts, picks, flags = [], [], [], []
    for i in range(MAX_K):
        with gr.Group(visible=False) as box:
            with gr.Row():
                pick = gr.Button(str(i + 1), elem_id=f"{prefix}pick-{i + 1}", scale=0, min_width=48)
                text = _literal(gr, f"{prefix}answer-{i + 1}")
            flag = gr.CheckboxGroup(list(FLAGS), label="flags", show_label=False, elem_id=f"{prefix}flags-{i + 1}",
                                    visible=with_flags)
        boxes.append(box)
        texts.append(text)
        picks.append(pick)
        flags.append(flag)
    return boxes, texts, picks, flags


def _append_js(number: int) -> str:
    """Append `number` to the order box in the browser: instant, and fast clicks or keys cannot race."""
    return ("(order) => { const t = (order || '').trim(); if ((t.match(/[1-9]/g) || []).includes('" + str(number)
            + "')) return t; return t === '' ? '" + str(number) + "' : (t.endsWith('=') ? t + '" + str(number)
            + "' : t + ' ' + '" + str(number) + "'); }")


TIE_JS = "(order) => { const t = (order || '').trim(); return t === '' || t.endsWith('=') ? t : t + '='; }"


def rank_ui(gr, store: LabelStore, labeler, who: Identity) -> None:
    item_state = gr.State(None)  # the serve being ranked: {"id", "prompt", "responses", "token", "labeler"}
    with gr.Row():
        next_button = gr.Button("Next item (n)", elem_id="next", variant="secondary")
    left = gr.HTML(elem_id="left")
    prompt = _literal(gr, "prompt", label="Prompt")
    boxes, texts, picks, flags = _slots(gr, "", with_flags=True)
    order = gr.Textbox(label="Order, best first (click the numbers, or type e.g. 3142; = between two equally good "
                             "answers, e.g. 3 1=4 2; Enter submits)", elem_id="order", max_lines=1)
    with gr.Row():
        tie = gr.Button("= (tie with the next)", elem_id="tie")
        submit = gr.Button("Submit ranking (Enter)", elem_id="submit", variant="primary")
        clear = gr.Button("Clear order", elem_id="clear")
    with gr.Row():
        reason = gr.Textbox(label="Skip reason", elem_id="skip-reason", max_lines=1, scale=3)
        skip = gr.Button("Skip item", elem_id="skip", scale=1)
    status = gr.HTML(elem_id="status")
    keep = [gr.update()] * (3 * MAX_K)

    def show(name: str, request: gr.Request, note: str = ""):
        try:
            name = who(name, request)
            item = store.next_item(name)
        except RankingRefused as err:
            return [None, "", "", "", _note(str(err), "Not served:")] + _hidden(gr)
        if item is None:
            return [None, "", "", "", _note(note, "Nothing left to rank. Thank you!")] + _hidden(gr)
        k = len(item["responses"])
        count = len(store.remaining(name))
        updates = [gr.update(visible=i < k) for i in range(MAX_K)]
        updates += [gr.update(value=item["responses"][i] if i < k else "") for i in range(MAX_K)]
        updates += [gr.update(value=[]) for _ in range(MAX_K)]
        state = {**item, "labeler": name}
        return [state, item["prompt"], _note(f"{count} item(s) left for you."), "", _note(note)] + updates

    outputs = [item_state, prompt, left, order, status, *boxes, *texts, *flags]
    next_button.click(show, inputs=labeler, outputs=outputs, api_visibility="private")
    labeler.submit(show, inputs=labeler, outputs=outputs, api_visibility="private")

    def start_over(name: str, item: dict[str, Any] | None):
        """The name box changed: give the open item back (never remap it to the new name) and clear the page."""
        if item is None or name == item["labeler"]:
            return [gr.update()] * len(outputs)
        store.release(item["labeler"], item["token"])
        return [None, "", "", "", _note("Name changed: press Next item to start as the new name.")] + _hidden(gr)

    # .change, not .input: a pasted or autofilled name counts too (nothing else ever sets this box)
    labeler.change(start_over, inputs=[labeler, item_state], outputs=outputs, api_visibility="private")

    for i, pick in enumerate(picks):
        pick.click(None, inputs=order, outputs=order, js=_append_js(i + 1), api_visibility="private")
    tie.click(None, inputs=order, outputs=order, js=TIE_JS, api_visibility="private")
    clear.click(lambda: "", outputs=order, api_visibility="private")

    # `request` first: Gradio inserts it by position, and cannot after *flag_values
    def do_submit(request: gr.Request, name: str, item: dict[str, Any] | None, typed: str, *flag_values):
        if item is None:
            return show(name, request, "Load an item first (Next item).")
        k = len(item["responses"])
        try:
            name = who(name, request)
            ranking, ties = parse_ui_order(typed, k)
            chosen = {str(i): list(v) for i, v in enumerate(flag_values[:k]) if v}
            store.submit(name, item["id"], ranking, chosen, token=item["token"], ties=ties)
        except RankingRefused as err:
            return [gr.update()] * 4 + [_note(str(err), "Not saved:")] + keep
        return show(name, request, f"Saved your ranking of {item['id']}.")

    submit.click(do_submit, inputs=[labeler, item_state, order, *flags], outputs=outputs, api_visibility="private")
    order.submit(do_submit, inputs=[labeler, item_state, order, *flags], outputs=outputs, api_visibility="private")

    def do_skip(name: str, item: dict[str, Any] | None, why: str, request: gr.Request):
        if item is None:
            return show(name, request, "Nothing to skip.")
        try:
            name = who(name, request)
            row = store.skip(name, item["id"], why, token=item["token"])
        except RankingRefused as err:
            return [gr.update()] * 4 + [_note(str(err), "Not skipped:")] + keep
        return show(name, request, f"Skipped {item['id']} ({row['reason']}).")

    skip.click(do_skip, inputs=[labeler, item_state, reason], outputs=outputs, api_visibility="private")


def _hidden(gr) -> list:
    return ([gr.update(visible=False) for _ in range(MAX_K)] + [gr.update(value="") for _ in range(MAX_K)]
            + [gr.update(value=[]) for _ in range(MAX_K)])


def chat_ui(gr, store: LabelStore, labeler, who: Identity, policy, k: int) -> None:
    history = gr.State([])  # messages so far: [{"role", "content"}]
    candidates = gr.State([])
    chatbot = gr.Chatbot(elem_id="chatbot", height=320, sanitize_html=True, render_markdown=False)
    message = gr.Textbox(label="Your message (Enter sends)", elem_id="chat-message", max_lines=3)
    boxes, texts, picks, _ = _slots(gr, "chat-", with_flags=False)
    order = gr.Textbox(label="Order the replies, best first (the best continues the conversation)",
                       elem_id="chat-order", max_lines=1)
    submit = gr.Button("Submit ranking", elem_id="chat-submit", variant="primary")
    status = gr.HTML(elem_id="chat-status")

    def as_chatbot(messages):
        return [{"role": m["role"], "content": m["content"]} for m in messages]

    def send(text: str, messages: list):
        if not text.strip():
            return [messages, [], gr.update(), "", _note("Type a message first.")] + [gr.update()] * (2 * MAX_K)
        if len(text) > MAX_MESSAGE_CHARS:
            return [messages, [], gr.update(), gr.update(), _note(f"Your message is {len(text)} characters; send at "
                                                                  f"most {MAX_MESSAGE_CHARS}.", "Not sent:")] \
                + [gr.update()] * (2 * MAX_K)
        turn = messages + [{"role": "user", "content": text.strip()}]
        replies = policy.replies(turn, k=k)
        shown = [gr.update(visible=i < len(replies)) for i in range(MAX_K)]
        shown += [gr.update(value=replies[i] if i < len(replies) else "") for i in range(MAX_K)]
        note = "" if len(replies) >= 2 else "The model gave only one distinct reply: it continues the conversation."
        if len(replies) < 2:
            turn = turn + [{"role": "assistant", "content": replies[0] if replies else ""}]
            return [turn, [], as_chatbot(turn), "", _note(note)] + _hidden(gr)[: 2 * MAX_K]
        return [turn, replies, as_chatbot(turn), "", _note(note)] + shown

    send_outputs = [history, candidates, chatbot, message, status, *boxes, *texts]
    message.submit(send, inputs=[message, history], outputs=send_outputs, api_visibility="private")
    for i, pick in enumerate(picks):
        pick.click(None, inputs=order, outputs=order, js=_append_js(i + 1), api_visibility="private")

    def rank(name: str, messages: list, replies: list, typed: str, request: gr.Request):
        keep = [gr.update()] * (2 * MAX_K)
        if not replies:
            return [messages, replies, gr.update(), typed, _note("Send a message first.")] + keep
        try:
            name = who(name, request)
            ranking, ties = parse_ui_order(typed, len(replies))
            row = store.submit_conversation(name, policy.render(messages), replies, ranking, ties=ties)
        except RankingRefused as err:
            return [messages, replies, gr.update(), typed, _note(str(err), "Not saved:")] + keep
        best = replies[ranking[0]]
        messages = messages + [{"role": "assistant", "content": best}]
        return [messages, [], as_chatbot(messages), "", _note(f"Saved ranking {row['item_id']}.")] \
            + _hidden(gr)[: 2 * MAX_K]

    rank_outputs = [history, candidates, chatbot, order, status, *boxes, *texts]
    submit.click(rank, inputs=[labeler, history, candidates, order], outputs=rank_outputs, api_visibility="private")
    order.submit(rank, inputs=[labeler, history, candidates, order], outputs=rank_outputs, api_visibility="private")
