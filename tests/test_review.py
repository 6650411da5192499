"""Review records, the clip index (filters, keyset pages, queues) and the review server over HTTP, on generated
manifests (no Ray, no video decoding except the range-served file)."""

from __future__ import annotations

import http.client
import importlib.util
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from fixtures_review import assert_shown_as_in_report
from manifests import reviews
from manifests.clip_index import ClipIndex, Filters
from pipeline.storage import Store

ROOT = Path(__file__).resolve().parent.parent


def _bench():
    spec = importlib.util.spec_from_file_location("review_paging", ROOT / "bench" / "review_paging.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def big_out(tmp_path_factory) -> Path:
    """3,000 generated rows over 6 shards (the benchmark's generator)."""
    out = tmp_path_factory.mktemp("rv") / "out"
    _bench().generate(out, 3000, 6)
    return out


def test_review_records_validation_agreement_and_disputes(tmp_path):
    store = Store(str(tmp_path))
    with pytest.raises(reviews.ReviewError):
        reviews.append_reviews(store, [{"clip_id": "c1", "reviewer": "ann", "verdict": "reject"}])  # no reason
    with pytest.raises(reviews.ReviewError):
        reviews.append_reviews(store, [{"clip_id": "c1", "reviewer": "ann", "verdict": "reject", "reason": "meh"}])
    with pytest.raises(reviews.ReviewError):
        reviews.append_reviews(store, [{"clip_id": "c1", "reviewer": "", "verdict": "accept"}])
    t = 1_700_000_000_000
    recs = [("c1", "ann", "accept"), ("c2", "ann", "reject"), ("c3", "ann", "accept"), ("c4", "ann", "accept"),
            ("c1", "bob", "accept"), ("c2", "bob", "reject"), ("c3", "bob", "reject"), ("c4", "bob", "accept")]
    for i, (clip, who, verdict) in enumerate(recs):
        reviews.append_reviews(store, [{"clip_id": clip, "reviewer": who, "verdict": verdict, "time": t + i,
                                        "reason": "no_action" if verdict == "reject" else None}])
    reviews.append_reviews(store, [{"clip_id": "c1", "reviewer": "ann", "verdict": "caption", "caption": "a man waves",
                                    "caption_version": 1, "time": t + 100}])
    table = reviews.read_reviews(store)
    assert table.num_rows == 9 and len(store.list("reviews")) == 9  # append-only: one file per write
    assert reviews.clip_verdicts(table) == {"c1": "accept", "c2": "reject", "c3": "reject", "c4": "accept"}
    assert reviews.disputes(table) == {"c1": 0, "c2": 0, "c3": 1, "c4": 0}
    [pair] = reviews.agreement(table)
    # 3 of 4 equal; ann accepts 3/4, bob 2/4: expected 0.75*0.5 + 0.25*0.5 = 0.5, kappa (0.75-0.5)/0.5
    assert pair == {"reviewers": ["ann", "bob"], "clips": 4, "agreement": 0.75, "kappa": 0.5}
    assert reviews.latest_captions(table)["c1"]["caption"] == "a man waves"
    s = reviews.summary(store, {"c1": "accepted", "c2": "accepted", "c3": "rejected", "c4": "accepted"})
    assert (s["review_rejected"], s["accepted_review_rejected"], s["accepted_after_review"], s["disputed"]) == (2, 1, 2, 1)


def test_keyset_pages_equal_a_full_sort(big_out):
    ix = ClipIndex(str(big_out))
    table = ix.table.to_pandas()
    f = Filters.from_query({"status": ["accepted,rejected"], "min.motion_score": ["0.01"], "max.ocr_text_boxes": ["1"]})
    want = table[table.status.isin(["accepted", "rejected"]) & (table.motion_score >= 0.01)
                 & (table.ocr_text_boxes <= 1)]
    for sort, desc in [("aesthetic_score", True), ("motion_score", False), ("clip_id", False), ("status", True)]:
        got, cursor = [], None
        while True:
            page = ix.page(f, sort, desc, after=tuple(cursor) if cursor else None, limit=97)
            assert page["total"] == len(want) and len(page["rows"]) <= 97
            got += [r["clip_id"] for r in page["rows"]]
            cursor = page["next"]
            if not cursor:
                break
        expected = want.assign(_pos=want.index).sort_values([sort, "_pos"], ascending=[not desc, True],
                                                             kind="stable").clip_id.tolist()
        if sort == "status":  # ties: row order, whatever the direction
            expected = sorted(expected, key=lambda c, order=["rejected", "accepted"]: order.index(
                table.status[ix._row_of[c]]))
        assert got == expected, sort


def test_text_filter_histogram_and_queues(big_out):
    ix = ClipIndex(str(big_out))
    page = ix.page(Filters(text="BREAD"), limit=500)
    assert page["rows"] and page["total"] == int(ix.table.to_pandas().caption_text.str.contains("bread").sum())
    h = ix.histogram("motion_score", Filters(status=["accepted"]))
    assert sum(h["counts"]) == h["count"] == int((ix.table.to_pandas().status == "accepted").sum())
    assert ix.histogram("motion_score", Filters()) is ix.base_hists["motion_score"]  # precomputed
    strat = ix.queue("stratified", Filters(), n=40, column="aesthetic_score", seed=3)
    bins = np.digitize(ix.numeric("aesthetic_score")[[ix._row_of[c] for c in strat]],
                       ix.hist_edges["aesthetic_score"][1:-1])
    assert len(strat) == 40 and len(set(bins)) >= 10  # spread over the score range, not 40 from the middle
    assert ix.queue("overlap", Filters(), n=10, seed=1) == ix.queue("overlap", Filters(), n=10, seed=2)
    assert ix.queue("random", Filters(), n=10, seed=1) != ix.queue("random", Filters(), n=10, seed=2)
    a, b = ix.clip_ids[5].as_py(), ix.clip_ids[9].as_py()
    reviews.append_reviews(ix.store, [{"clip_id": a, "reviewer": "ann", "verdict": "accept"},
                                      {"clip_id": a, "reviewer": "bob", "verdict": "reject", "reason": "other"},
                                      {"clip_id": b, "reviewer": "ann", "verdict": "accept"}])
    ix.refresh_reviews()
    assert ix.queue("disputed", Filters(), n=10) == [a]
    assert ix.page(Filters(review="disputed"))["total"] == 1
    assert ix.page(Filters(review="accept"))["total"] == 1  # b; a's latest verdict is bob's reject


@pytest.fixture()
def server(big_out, tmp_path):
    from pipeline.review_server import make_server

    video = tmp_path / "v.mp4"
    video.write_bytes(bytes(range(256)) * 40)
    srv, app = make_server(str(big_out), "127.0.0.1", 0, token="sekrit")
    vid = next(iter(app.index.videos))
    app.index.videos[vid] = str(video)  # the generated manifests name videos that do not exist
    (big_out.parent / "secret.txt").write_text("outside OUT")
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv, app, vid
    srv.shutdown()
    srv.server_close()


def _req(srv, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    return resp.status, dict(resp.getheaders()), resp.read()


def test_server_refuses_writes_without_the_token(server):
    srv, app, _ = server
    clip = app.index.clip_ids[0].as_py()
    body = json.dumps({"clip_id": clip, "reviewer": "ann", "verdict": "accept"})
    files = Store(app.store.root).list("reviews")
    assert _req(srv, "POST", "/api/reviews", body)[0] == 403
    assert _req(srv, "POST", "/api/reviews", body, {"X-Review-Token": "wrong"})[0] == 403
    assert Store(app.store.root).list("reviews") == files
    status, _, data = _req(srv, "POST", "/api/reviews", body, {"X-Review-Token": "sekrit"})
    assert status == 200 and json.loads(data)["records"] == 1
    bad = json.dumps({"clip_id": "nope", "reviewer": "ann", "verdict": "accept"})
    assert _req(srv, "POST", "/api/reviews", bad, {"X-Review-Token": "sekrit"})[0] == 400
    page = json.loads(_req(srv, "GET", "/api/clips?review=accept&limit=500")[2])
    assert clip in [r["clip_id"] for r in page["rows"]]


def test_server_serves_only_out_and_the_manifest_videos(server):
    srv, app, vid = server
    assert _req(srv, "GET", "/out/plan/plan.json")[0] == 200
    for path in ["/out/../secret.txt", "/out/%2e%2e/secret.txt", "/out/..%2fsecret.txt", "/out/%2e%2e%2fsecret.txt",
                 "/out//etc/passwd", "/out/../../../../etc/passwd", "/video/..%2f..%2fetc%2fpasswd",
                 "/video/%2fetc%2fpasswd", "/frame/..%2f..%2fetc%2fpasswd?t=0", "/etc/passwd", "/../secret.txt"]:
        status, _, data = _req(srv, "GET", path)
        assert status == 404 and b"outside OUT" not in data and b"root:" not in data, path
    status, headers, data = _req(srv, "GET", f"/video/{vid}", headers={"Range": "bytes=100-199"})
    assert status == 206 and headers["Content-Range"] == "bytes 100-199/10240" and data == bytes(range(100, 200))
    status, headers, data = _req(srv, "GET", f"/video/{vid}", headers={"Range": "bytes=-10"})
    assert status == 206 and data == (bytes(range(256)) * 40)[-10:]
    assert _req(srv, "GET", f"/video/{vid}", headers={"Range": "bytes=99999-"})[0] == 416
    assert _req(srv, "GET", "/api/meta", headers={"Host": "evil.example:80"})[0] == 403  # DNS rebinding
    status, headers, data = _req(srv, "GET", f"/video/{vid}")
    assert status == 200 and len(data) == 10240 and headers["Accept-Ranges"] == "bytes"


def test_review_server_on_an_s3_output(tmp_path, monkeypatch):
    """OUT and the source video on S3 (a moto server): pages, a range request on the video, a verdict written."""
    from s3server import MotoServer

    from pipeline.review_server import make_server

    out = tmp_path / "out"
    _bench().generate(out, 300, 3)
    video = tmp_path / "v.mp4"
    video.write_bytes(bytes(range(256)) * 8)
    with MotoServer() as s3:
        for k, v in s3.env.items():
            monkeypatch.setenv(k, v)
        s3.create_bucket("cur")
        for path in out.rglob("*"):
            if path.is_file():
                s3.upload("cur", f"out/{path.relative_to(out)}", path)
        s3.upload("cur", "raw/v.mp4", video)
        srv, app = make_server("s3://cur/out", "127.0.0.1", 0, token="t")
        vid = next(iter(app.index.videos))
        app.index.videos[vid] = "s3://cur/raw/v.mp4"
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        try:
            page = json.loads(_req(srv, "GET", "/api/clips?sort=motion_score&order=desc&limit=5")[2])
            assert page["total"] == 300 and len(page["rows"]) == 5
            status, headers, data = _req(srv, "GET", f"/video/{vid}", headers={"Range": "bytes=10-19"})
            assert status == 206 and data == bytes(range(10, 20)) and headers["Content-Range"] == "bytes 10-19/2048"
            assert _req(srv, "GET", "/out/plan/plan.json")[0] == 404  # files of an S3 OUT are not served
            body = json.dumps({"clip_id": page["rows"][0]["clip_id"], "reviewer": "ann", "verdict": "accept"})
            assert _req(srv, "POST", "/api/reviews", body, {"X-Review-Token": "t"})[0] == 200
            assert len(Store("s3://cur/out").list("reviews")) == 1
        finally:
            srv.shutdown()
            srv.server_close()


def test_html_report_is_self_contained_and_its_numbers_are_the_json(big_out, tmp_path):
    """Without a browser: no external resource, and every number tagged with its JSON path equals the report's."""
    import re

    from manifests.audit import audit
    from manifests.report import write_report

    path = tmp_path / "r.html"
    report = write_report(str(big_out), str(path))
    assert report == json.loads(json.dumps(audit(str(big_out))))
    page = path.read_text()
    assert not re.search(r"""(src|href)=['"]?(https?:)?//""", page) and "<link" not in page
    tagged = re.findall(r"<span data-k='([^']+)'>([^<]*)</span>", page)
    assert len(tagged) > 20
    assert_shown_as_in_report(tagged, report)
    embedded = re.search(r"<script type='application/json' id='audit-json'>(.*?)</script>", page, re.S).group(1)
    assert json.loads(embedded) == json.loads(json.dumps(report))
    assert page.count("class='chart hist'") == len(report["scores"]) >= 5
