"""The review app and the HTML audit report in a real browser: Debian's chromium driven by Playwright (pointed at
the system browser; `.ci/run` installs both), on a real run over generated videos."""

from __future__ import annotations

import json
import os
import shutil
import threading

import numpy as np
import pytest
from click.testing import CliRunner

from fixtures_review import assert_shown_as_in_report, make_review_run
from manifests.clip_index import Filters

pytestmark = pytest.mark.slow

TOKEN = "test-token-123"


def _chromium() -> str | None:
    for name in (os.environ.get("ACTCURATE_CHROMIUM"), "chromium", "chromium-browser"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra")
    exe = _chromium()
    if exe is None:
        pytest.skip("no chromium on PATH (apt-get install chromium; .ci/run does)")
    with sync_api.sync_playwright() as p:
        # the system browser, never `playwright install`; --no-sandbox: CI runs as root
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def run_out(ray_local, tmp_path_factory):
    return make_review_run(tmp_path_factory.mktemp("review"))


@pytest.fixture(scope="module")
def server(run_out):
    from pipeline.review_server import make_server

    srv, app = make_server(str(run_out), "127.0.0.1", 0, token=TOKEN)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", app
    srv.shutdown()
    srv.server_close()


def test_review_filter_play_verdict_by_keyboard_and_persisted(browser, server):
    base, app = server
    page = browser.new_page(viewport={"width": 1300, "height": 900}, bypass_csp=True)  # waits evaluate JS strings
    page.goto(f"{base}/?token={TOKEN}")
    page.wait_for_selector("body[data-ready='1']")
    assert "token" not in page.url  # kept by the browser, not left in the address bar
    # filter: accepted clips sorted by flow, in the URL
    page.select_option("select[name=status]", "accepted")
    page.select_option("select[name=sort]", "motion_score")
    page.select_option("select[name=order]", "desc")
    page.click("#apply")
    page.wait_for_function("document.querySelectorAll('#clips tr.row').length > 0 && location.search.includes('status=accepted')")
    assert "sort=motion_score" in page.url and "order=desc" in page.url
    page.wait_for_function("document.querySelectorAll('#histsvg rect').length == 20")
    assert page.locator("#histsvg line.threshold").count() == 1  # motion.min_flow (max_flow is off the range)
    assert "reviews: 0 records" in page.text_content("#agreement")
    statuses = page.eval_on_selector_all("#clips tr.row td:nth-child(3)", "els => els.map(e => e.textContent)")
    expected = app.index.page(Filters(status=["accepted"]))
    assert statuses == ["accepted"] * expected["total"] and expected["total"] >= 2
    page.reload()  # a saved view: the filter comes back from the URL
    page.wait_for_selector("body[data-ready='1']")
    assert page.eval_on_selector("select[name=status]", "e => e.value") == "accepted"

    # open the top clip: the player plays the clip's span of the source video
    clip_id = page.get_attribute("#clips tr.row >> nth=0", "data-clip")
    page.click("#clips tr.row >> nth=0")
    page.wait_for_selector("#player")
    row = app.index.clip(clip_id)["row"]
    page.wait_for_function(f"(() => {{const v = document.querySelector('#player'); return v.readyState >= 2 && "
                           f"v.currentTime > {row['start_s']} + 0.1}})()", timeout=30_000)
    page.wait_for_function("document.querySelector('#player').paused", timeout=30_000)  # stops at end_s
    assert page.evaluate("document.querySelector('#player').currentTime") <= row["end_s"] + 0.15
    page.wait_for_function("[...document.querySelectorAll('#frames canvas')].every(c => c.width > 0)")

    # verdicts from the keyboard: reject with reason 2, then a caption edit
    page.keyboard.press("r")
    page.keyboard.press("2")
    page.wait_for_function("document.querySelector('#msg').textContent.startsWith('saved: reject (several_people)')")
    page.keyboard.press("e")
    page.fill("#captext", "a white square moves across stripes")
    page.keyboard.press("Control+Enter")
    page.wait_for_function("document.querySelector('#msg').textContent.startsWith('saved: caption')")
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    history = page.text_content("#history")
    assert "reviewer: reject (several_people)" in history and "a white square moves across stripes" in history
    assert page.text_content("#edited") == "a white square moves across stripes"

    # without the token the server refuses the write, from the page and from a bare request
    page.evaluate("localStorage.removeItem('actcurate-token')")
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    page.keyboard.press("a")
    page.wait_for_function("document.querySelector('#msg').textContent.startsWith('not saved')")
    resp = page.request.post(f"{base}/api/reviews", data={"clip_id": clip_id, "reviewer": "x", "verdict": "accept"})
    assert resp.status == 403
    from manifests.reviews import read_reviews

    rows = read_reviews(app.store).to_pylist()
    assert [(r["clip_id"], r["verdict"], r["reason"]) for r in rows] == [
        (clip_id, "reject", "several_people"), (clip_id, "caption", None)]
    assert rows[1]["caption_version"] == 1
    # status and audit count the review: the clip was accepted by the pipeline and rejected by a person
    from manifests.audit import audit, status

    assert status(app.store.root)["reviews"]["review_rejected"] == 1
    rv = audit(app.store.root)["reviews"]
    assert rv["accepted_review_rejected"] == 1 and rv["accepted_after_review"] == expected["total"] - 1
    page.close()


def test_html_report_renders_charts_and_matches_audit_json(browser, run_out, tmp_path):
    import cv2

    from pipeline.cli import main

    html_file = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["audit", str(run_out), "--json", "--html", str(html_file)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["clips"]["rejected"] >= 2 and report["clips"]["error"] == 1
    page = browser.new_page(viewport={"width": 1300, "height": 900}, bypass_csp=True)  # waits evaluate JS strings
    page.goto(html_file.as_uri())
    # every number on the page carries its JSON path: it must equal `audit --json`
    shown = page.eval_on_selector_all("[data-k]", "els => els.map(e => [e.dataset.k, e.textContent])")
    assert len(shown) > 30
    assert_shown_as_in_report(shown, report)
    # charts are drawn: screenshots of them are not blank
    charts = ["#chart-funnel", "#chart-reasons", "#chart-errors", "#chart-throughput", "#chart-sources"]
    for sel in charts + ["svg.hist >> nth=0"]:
        png = page.locator(sel).screenshot()
        img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
        assert img.std() > 10, sel
    assert page.locator("svg.hist").count() == len(report["scores"])
    assert page.locator("line.threshold").count() >= 3  # min_flow, max_flow, min_clip_s, ...
    widths = page.eval_on_selector_all(".thumbs img", "els => els.map(e => e.naturalWidth)")
    assert widths and all(w == 160 for w in widths)
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    page.close()
