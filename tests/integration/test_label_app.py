"""The labeling app: its gradio_client API, and the UI in a real browser (Debian's chromium driven by Playwright).

The browser tests skip, saying why, where /usr/bin/chromium or the playwright package is missing (`.ci/run`
installs both: `apt-get install -y chromium`, `pip install playwright`; no `playwright install` download).
Set RLHF_SCREENSHOT_DIR to save screenshots of the Rank and Stats tabs (the README's come from this test).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from conftest import load_recipe

from rlhf_recipes.feedback.store import LabelStore

pytest.importorskip("gradio", reason="the labeling app needs the `feedback` extra: pip install -e '.[feedback]'")

CHROMIUM = "/usr/bin/chromium"
PROMPTS = ["This western was", "I watched this comedy with my sister and", "The acting in this drama"]
ANSWERS = [" a slow, dull mess.", " a moving story with a superb cast.", " fine, I guess.", " western western western."]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_store(tmp_path: Path) -> tuple[LabelStore, Path]:
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"id": f"item{i}", "prompt": p, "responses": ANSWERS}) + "\n"
                               for i, p in enumerate(PROMPTS)))
    comparisons = tmp_path / "comparisons.jsonl"
    return LabelStore(samples, comparisons), comparisons


@pytest.fixture
def served(tmp_path):
    from rlhf_recipes.feedback.app import KEYS_JS, build_app

    store, comparisons = make_store(tmp_path)
    app = build_app(store)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, head=KEYS_JS)
    yield f"http://127.0.0.1:{port}/", store, comparisons
    app.close()


def stored(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_gradio_client_api_round_trip(served):
    from gradio_client import Client

    url, store, comparisons = served
    client = Client(url, verbose=False)
    assert set(client.view_api(return_format="dict")["named_endpoints"]) == {"/next_item", "/submit_ranking"}
    item = json.loads(client.predict("ann", api_name="/next_item"))
    assert item["id"] == "item0" and item["prompt"] == PROMPTS[0] and sorted(item["responses"]) == sorted(ANSWERS)
    for ranking, flags, error in [("3,1,1,2", "", "repeats"), ("3,1,0", "", "missing"), ("9,1,0,2", "", "unknown")]:
        answer = json.loads(client.predict("ann", item["id"], ranking, flags, api_name="/submit_ranking"))
        assert answer["ok"] is False and error in answer["error"]
    answer = json.loads(client.predict("ann", "nope", "0,1,2,3", "", api_name="/submit_ranking"))
    assert answer["ok"] is False and "unknown item" in answer["error"]
    answer = json.loads(client.predict("", item["id"], "0,1,2,3", "", api_name="/submit_ranking"))
    assert answer["ok"] is False and "empty labeler" in answer["error"]
    assert comparisons.read_text() == ""

    answer = json.loads(client.predict("ann", item["id"], "3,1,0,2", '{"1": ["untruthful"]}', api_name="/submit_ranking"))
    assert answer == {"ok": True}
    shown = item["responses"]
    (row,) = stored(comparisons)
    assert row["responses"] == [shown[3], shown[1], shown[0], shown[2]] and row["labeler"] == "ann"
    assert row["flags"][1] == ["untruthful"]
    for item_id in ("item1", "item2"):
        assert json.loads(client.predict("ann", api_name="/next_item"))["id"] == item_id
        client.predict("ann", item_id, "0,1,2,3", "", api_name="/submit_ranking")
    assert json.loads(client.predict("ann", api_name="/next_item")) == {"id": None}


def test_a_non_local_host_needs_a_password(monkeypatch):
    label = load_recipe("label")
    monkeypatch.delenv(label.AUTH_ENV, raising=False)
    with pytest.raises(ValueError, match="without a password"):
        label.parse_auth(label.LabelArguments(host="0.0.0.0"))
    assert label.parse_auth(label.LabelArguments(host="127.0.0.1")) is None
    assert label.parse_auth(label.LabelArguments(host="0.0.0.0", auth="ann:pw")) == ("ann", "pw")
    monkeypatch.setenv(label.AUTH_ENV, "team:secret")
    assert label.parse_auth(label.LabelArguments(host="0.0.0.0")) == ("team", "secret")
    with pytest.raises(ValueError, match="user:password"):
        label.parse_auth(label.LabelArguments(host="0.0.0.0", auth="nopassword"))


@pytest.fixture
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no browser at {CHROMIUM} (Debian: apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed "
                                                                  "(pip install playwright)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def test_rank_two_items_in_a_real_browser_by_clicks_and_keys(served, browser):
    url, store, comparisons = served
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    page.goto(url)
    page.locator("#labeler input, #labeler textarea").first.fill("ann")
    page.click("#next")
    page.wait_for_selector("#prompt:has-text('This western was')")
    shown = [page.locator(f"#answer-{i}").inner_text().strip() for i in range(1, 5)]
    # item 1 by clicks: answer 2 best, then 4, 1, 3; flag answer 3 as off-topic
    for number in (2, 4, 1, 3):
        page.click(f"#pick-{number}")
    page.wait_for_function("document.querySelector('#order input, #order textarea').value === '2 4 1 3'")
    page.locator("#flags-3 label", has_text="off_topic").click()
    screenshot_dir = os.environ.get("RLHF_SCREENSHOT_DIR")
    if screenshot_dir:
        page.screenshot(path=str(Path(screenshot_dir) / "label-rank.png"), full_page=True)
    page.click("#submit")
    page.wait_for_selector("#prompt:has-text('I watched this comedy')")
    page.wait_for_selector("#status:has-text('Saved')")
    shown2 = [page.locator(f"#answer-{i}").inner_text().strip() for i in range(1, 5)]
    # item 2 by keys, outside the text boxes: 3 1 2 4, Enter
    page.locator("#prompt").click()
    for key in ("3", "1", "2", "4"):
        page.keyboard.press(key)
    page.wait_for_function("document.querySelector('#order input, #order textarea').value === '3 1 2 4'")
    page.keyboard.press("Enter")
    page.wait_for_selector("#prompt:has-text('The acting in this drama')")

    rows = stored(comparisons)
    assert [r["item_id"] for r in rows] == ["item0", "item1"]
    assert [r.strip() for r in rows[0]["responses"]] == [shown[1], shown[3], shown[0], shown[2]]
    assert rows[0]["flags"] == [[], [], [], ["off_topic"]]
    assert [r.strip() for r in rows[1]["responses"]] == [shown2[2], shown2[0], shown2[1], shown2[3]]
    # the store agrees with what the page showed
    assert [ANSWERS[i].strip() for i in rows[0]["shown_order"]] == shown

    page.click("#tab-stats-button") if page.locator("#tab-stats-button").count() else page.get_by_role(
        "tab", name="Stats").click()
    page.click("#refresh-stats")
    page.wait_for_selector("#stats:has-text('2 rankings')")
    if screenshot_dir:
        page.screenshot(path=str(Path(screenshot_dir) / "label-stats.png"))
