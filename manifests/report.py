"""`actcurate audit --html`: one self-contained HTML file (no CDN, no script needed to read it) drawn from the audit
report: inline SVG charts, and a few thumbnails decoded with PyAV as base64 JPEG.

Every number shown comes from the audit dict (the same one `audit --json` prints); numbers carry `data-k` with
their JSON path, so a test can check the page against the JSON.
"""

from __future__ import annotations

import base64
import html
import json
from collections import defaultdict

from manifests.audit import _fmt

THUMBS_PER_RULE = 3
THUMBS_ACCEPTED = 6
THUMBS_MAX = 40  # bounded: each is a decode of one frame
THUMB_WIDTH = 160

GREEN, AMBER, RED, BLUE, GREY = "#2e7d32", "#f9a825", "#c62828", "#1565c0", "#9e9e9e"


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def num(value, key: str) -> str:
    """A number with its JSON path, so the page can be checked against `audit --json`."""
    return f"<span data-k='{esc(key)}'>{esc(_fmt(value))}</span>"


# -- charts ------------------------------------------------------------------------------------------------------
def hbars(items: list[tuple[str, list[tuple[float, str]]]], width: int = 640, label_w: int = 200,
          chart_id: str = "") -> str:
    """Horizontal stacked bars: [(label, [(value, colour), ...])], scaled to the largest total."""
    row_h, pad = 22, 4
    top = max((sum(v for v, _ in segs) for _, segs in items), default=0) or 1
    h = len(items) * (row_h + pad) + pad
    parts = [f"<svg class='chart' id='{esc(chart_id)}' width='{width}' height='{h}' role='img'>"]
    for i, (label, segs) in enumerate(items):
        y = pad + i * (row_h + pad)
        parts.append(f"<text x='{label_w - 6}' y='{y + 15}' text-anchor='end'>{esc(label)}</text>")
        x = float(label_w)
        for value, colour in segs:
            w = (width - label_w - 60) * value / top
            parts.append(f"<rect x='{x:.1f}' y='{y}' width='{w:.1f}' height='{row_h}' fill='{colour}'/>")
            x += w
        total = sum(v for v, _ in segs)
        parts.append(f"<text x='{x + 4:.1f}' y='{y + 15}'>{esc(_fmt(total))}</text>")
    parts.append("</svg>")
    return "".join(parts)


def histogram_svg(score: dict, width: int = 300, height: int = 140) -> str:
    """Bars for all rows (grey) with the accepted ones over them (green); every recipe threshold as a red line."""
    left, bottom, top_pad = 34, 22, 8
    counts, acc, edges = score["counts"], score["accepted"], score["edges"]
    peak = max(counts) or 1
    plot_w, plot_h = width - left - 6, height - bottom - top_pad
    lo, hi = edges[0], edges[-1]
    bw = plot_w / len(counts)
    parts = [f"<svg class='chart hist' width='{width}' height='{height}' role='img'>",
             f"<text x='2' y='{top_pad + 8}' class='ax'>{peak}</text>",
             f"<line x1='{left}' y1='{top_pad + plot_h}' x2='{width - 6}' y2='{top_pad + plot_h}' stroke='#555'/>"]
    for i, (c, a) in enumerate(zip(counts, acc)):
        x = left + i * bw
        for value, colour in ((c, GREY), (a, GREEN)):
            h = plot_h * value / peak
            parts.append(f"<rect x='{x + 1:.1f}' y='{top_pad + plot_h - h:.1f}' width='{bw - 2:.1f}' "
                         f"height='{h:.1f}' fill='{colour}'><title>[{_fmt(edges[i])}, {_fmt(edges[i + 1])}): "
                         f"{c} rows, {a} accepted</title></rect>")
    for t in score["thresholds"]:
        x = left + plot_w * (t["value"] - lo) / (hi - lo)
        parts.append(f"<line class='threshold' x1='{x:.1f}' y1='{top_pad - 4}' x2='{x:.1f}' y2='{top_pad + plot_h}' "
                     f"stroke='{RED}' stroke-width='2' stroke-dasharray='4 2'><title>{esc(t['stage'])}.{esc(t['param'])}"
                     f" = {esc(_fmt(t['value']))} ({esc(t['rule'])})</title></line>")
    parts.append(f"<text x='{left}' y='{height - 6}' class='ax'>{esc(_fmt(lo))}</text>"
                 f"<text x='{width - 6}' y='{height - 6}' text-anchor='end' class='ax'>{esc(_fmt(hi))}</text></svg>")
    return "".join(parts)


# -- thumbnails --------------------------------------------------------------------------------------------------
def frame_jpeg(uri: str, t: float, width: int = THUMB_WIDTH, quality: int = 70) -> bytes | None:
    """One frame at time t (the first decoded at or after it), resized and JPEG-encoded; None if unreadable."""
    import av
    import cv2

    from pipeline.storage import open_input

    try:
        with av.open(open_input(uri)) as container:
            stream = container.streams.video[0]
            if stream.time_base is not None:
                container.seek(int(max(t, 0.0) / stream.time_base), stream=stream, backward=True)
            chosen = None
            for frame in container.decode(stream):
                chosen = frame
                if frame.time is None or frame.time >= t - 1e-3:
                    break
            if chosen is None:
                return None
            rgb = chosen.to_ndarray(format="rgb24")
    except Exception:  # a thumbnail is decoration: an unreadable source must not fail the report
        return None
    h, w = rgb.shape[:2]
    if w > width:
        rgb = cv2.resize(rgb, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return buf.tobytes() if ok else None


def _thumbnail_groups(rows: list[dict]) -> dict[str, list[dict]]:
    """Per rejection rule (and "accepted") its first clips in clip id order, as many as a group shows."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: r["clip_id"]):
        if r["end_s"] is None:
            continue
        key = "accepted" if r["status"] == "accepted" else (
            f"{r['reject_stage']} / {r['reject_rule']}" if r["status"] == "rejected" else None)
        limit = THUMBS_ACCEPTED if key == "accepted" else THUMBS_PER_RULE
        if key and len(groups[key]) < limit:
            groups[key].append(r)
    return groups


def thumbnail_candidates(kept: list[dict], shard_rows: list[dict]) -> list[dict]:
    """What the audit keeps of each shard's rows for the thumbnails: the rows a group could still show."""
    return [r for group in _thumbnail_groups(kept + shard_rows).values() for r in group]


def pick_thumbnails(rows: list[dict]) -> dict[str, list[dict]]:
    """A few clips per rejection rule and a few accepted ones, in clip id order (deterministic)."""
    groups = _thumbnail_groups(rows)
    picked, total = {}, 0
    for key in ["accepted"] + sorted(k for k in groups if k != "accepted"):
        if key in groups:
            take = groups[key][: max(0, THUMBS_MAX - total)]
            total += len(take)
            picked[key] = take
    return picked


def thumbnails_html(rows: list[dict]) -> str:
    parts = []
    for key, clips in pick_thumbnails(rows).items():
        cells = []
        for r in clips:
            mid = (r["start_s"] + r["end_s"]) / 2
            data = frame_jpeg(r["video_uri"], mid)
            img = (f"<img alt='' src='data:image/jpeg;base64,{base64.b64encode(data).decode()}'>" if data
                   else "<div class='noimg'>no frame</div>")
            value = "" if r["reject_value"] is None else f" value {_fmt(r['reject_value'])}"
            cells.append(f"<figure>{img}<figcaption>{esc(r['video_uri'].rsplit('/', 1)[-1])} "
                         f"{_fmt(r['start_s'])}-{_fmt(r['end_s'])} s{esc(value)}</figcaption></figure>")
        parts.append(f"<h3>{esc(key)}</h3><div class='thumbs'>{''.join(cells)}</div>")
    return "".join(parts) or "<p>no clips</p>"


# -- page --------------------------------------------------------------------------------------------------------
def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(output: str, path: str) -> dict:
    """Audit OUT and write the page to path; returns the audit dict (what `audit --json` prints)."""
    from pathlib import Path

    from manifests.audit import audit_with_rows

    report, rows = audit_with_rows(output, thumbnail_candidates)
    Path(path).write_text(render_html(report, rows), encoding="utf-8")
    return report


def render_html(report: dict, rows: list[dict] | None = None) -> str:
    """The page. `rows` (core columns of the manifests) give the thumbnails; without them there are none."""
    c, v, s = report["clips"], report["videos"], report["shards"]
    out = [f"<h1>actcurate audit</h1><p class='muted'>{esc(report['output'])}</p>",
           "<div class='cards'>",
           f"<div class='card'><b>{num(c['total'], 'clips.total')}</b> clips</div>",
           f"<div class='card ok'><b>{num(c['accepted'], 'clips.accepted')}</b> accepted</div>",
           f"<div class='card warn'><b>{num(c['rejected'], 'clips.rejected')}</b> rejected</div>",
           f"<div class='card bad'><b>{num(c['error'], 'clips.error')}</b> error</div>",
           f"<div class='card'><b>{num(v['done'], 'videos.done')}</b> / {num(v['total'], 'videos.total')} videos</div>",
           f"<div class='card'><b>{num(s['committed'], 'shards.committed')}</b> / {num(s['total'], 'shards.total')}"
           f" shards ({num(s['pending'], 'shards.pending')} pending)</div></div>"]

    funnel = report["funnel"]
    out.append("<h2>Funnel</h2><p class='muted'>bars: what entered each stage (blue) and what left it (green);"
               " before the splitting stage the unit is videos, after it clips</p>")
    items = []
    for f in funnel:
        items.append((f"{f['stage']} in ({f['unit_in']})", [(f["in"], BLUE)]))
        items.append((f"{f['stage']} out ({f['unit_out']})", [(f["out"], GREEN)]))
    out.append(hbars(items, chart_id="chart-funnel"))
    out.append(_table(["stage", "in", "out"], [
        [esc(f["stage"]), f"{num(f['in'], f'funnel.{i}.in')} {esc(f['unit_in'])}",
         f"{num(f['out'], f'funnel.{i}.out')} {esc(f['unit_out'])}"] for i, f in enumerate(funnel)]))

    out.append("<h2>Rejections by stage and rule</h2>")
    reasons = report["reasons"]
    if reasons:
        out.append(hbars([(f"{r['stage']} / {r['rule']}", [(r["count"], AMBER)]) for r in reasons],
                         chart_id="chart-reasons"))
        out.append(_table(["stage", "rule", "count", "values (min / median / max)", "threshold"], [
            [esc(r["stage"]), esc(r["rule"]), num(r["count"], f"reasons.{i}.count"),
             esc(f"{_fmt(r.get('value_min'))} / {_fmt(r.get('value_median'))} / {_fmt(r.get('value_max'))}")
             if "value_min" in r else "", esc(_fmt(r["thresholds"]))] for i, r in enumerate(reasons)]))
    else:
        out.append("<p>no rejections</p>")

    out.append("<h2>Scores</h2><p class='muted'>every numeric score: all rows that carry it (grey), accepted"
               " (green), the recipe's thresholds (red, dashed)</p><div class='grid'>")
    for i, sc in enumerate(report.get("scores", [])):
        th = ", ".join(f"{t['rule']} {_fmt(t['value'])}" for t in sc["thresholds"])
        out.append(f"<div class='hist-box'><h4>{esc(sc['column'])}</h4>{histogram_svg(sc)}"
                   f"<div class='muted'>n {num(sc['count'], f'scores.{i}.count')}, median {esc(_fmt(sc['median']))}"
                   f"{'; ' + esc(th) if th else ''}</div></div>")
    out.append("</div>")

    out.append("<h2>Errors by type</h2>")
    errors = report["errors"]
    if errors:
        out.append(hbars([(f"{e['stage']} / {e['type']}", [(e["count"], RED)]) for e in errors],
                         chart_id="chart-errors"))
        out.append(_table(["stage", "type", "count", "example"], [
            [esc(e["stage"]), esc(e["type"]), num(e["count"], f"errors.{i}.count"),
             f"{esc(e['example'])}<br><span class='muted'>{esc(e['example_uri'])}</span>"]
            for i, e in enumerate(errors)]))
    else:
        out.append("<p>no errors</p>")

    out.append("<h2>Throughput per stage</h2>")
    through = report["throughput"]
    out.append(hbars([(t["stage"], [(t["seconds"], BLUE)]) for t in through], chart_id="chart-throughput"))
    out.append(_table(["stage", "processed", "seconds", "per second"], [
        [esc(t["stage"]), f"{num(t['count'], f'throughput.{i}.count')} {esc(t['unit'])}",
         num(t["seconds"], f"throughput.{i}.seconds"), num(t["per_s"], f"throughput.{i}.per_s")]
        for i, t in enumerate(through)]))

    calls = report.get("model_calls", [])
    if calls:
        out.append("<h3>Model calls: tokens and cost drivers</h3>")
        keys = ("clips", "prompt_tokens", "output_tokens", "thinking_tokens", "paid_calls", "cached_clips",
                "latency_s", "output_tokens_per_s")
        out.append(_table(["stage", *keys], [
            [esc(c["stage"])] + [num(c[k], f"model_calls.{i}.{k}") for k in keys] for i, c in enumerate(calls)]))

    out.append("<h2>By input source</h2>")
    sources = report.get("sources", [])
    out.append(hbars([(x["source"], [(x["accepted"], GREEN), (x["rejected"], AMBER), (x["error"], RED)])
                      for x in sources], chart_id="chart-sources"))
    out.append(_table(["source", "videos", "clips", "accepted", "rejected", "error"], [
        [esc(x["source"])] + [num(x[k], f"sources.{i}.{k}") for k in ("videos", "clips", "accepted", "rejected", "error")]
        for i, x in enumerate(sources)]))

    rv = report.get("reviews")
    if rv:
        out.append("<h2>Human review</h2>")
        keys = ["records", "clips_reviewed", "review_accepted", "review_rejected", "caption_edits", "disputed",
                "accepted_after_review"]
        out.append(_table(keys, [[num(rv.get(k), f"reviews.{k}") for k in keys]]))
        if rv.get("agreement"):
            out.append(_table(["reviewers", "clips", "agreement", "kappa"], [
                [esc(" / ".join(a["reviewers"])), num(a["clips"], f"reviews.agreement.{i}.clips"),
                 num(a["agreement"], f"reviews.agreement.{i}.agreement"), num(a["kappa"], f"reviews.agreement.{i}.kappa")]
                for i, a in enumerate(rv["agreement"])]))

    if rows is not None:
        out.append("<h2>Sample clips</h2><p class='muted'>the frame at each clip's middle</p>")
        out.append(thumbnails_html(rows))

    data = json.dumps(report).replace("</", "<\\/")
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>actcurate audit</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1300px}"
        "table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}"
        ".muted{color:#777;font-size:.9em}.cards{display:flex;gap:1em;flex-wrap:wrap}"
        ".card{border:1px solid #ddd;border-radius:6px;padding:.6em 1em}.card b{font-size:1.5em}"
        ".ok b{color:#2e7d32}.warn b{color:#e08e00}.bad b{color:#c62828}"
        "svg.chart text{font-size:12px;fill:#333}svg .ax{font-size:10px;fill:#777}"
        ".grid{display:flex;flex-wrap:wrap;gap:1em}.hist-box{border:1px solid #eee;padding:4px}"
        ".hist-box h4{margin:2px 0;font-size:13px}.thumbs{display:flex;flex-wrap:wrap;gap:8px}"
        "figure{margin:0;width:160px;font-size:11px}figure img{width:160px;display:block}"
        ".noimg{width:160px;height:90px;background:#eee}"
        "</style></head><body>" + "".join(out)
        + f"<script type='application/json' id='audit-json'>{data}</script></body></html>"
    )
