"""Caption client efficiency: achieved requests/s against the ideal (concurrency / latency) through the real caption
stage in a Ray actor, against the local test server (tests/fixtures_vlm.py, its own process) with a fixed latency.

For each level of requests in flight (8, 64, 256): one caption actor (`concurrency` = level) captions 4 x level
clips of tiny frames (so the figure measures the client, not JPEG work) in one Ray Data map_batches call. Achieved
rate: requests over the span between the server's first and last arrival (steady state; actor start-up is
reported apart as wall seconds). Client CPU per request: the same stage called in this process without Ray,
process CPU time over requests; the server's CPU per request beside it, and the load average before and after
(the figures are only as good as the CPU the machine leaves the client and the server). Call records go to a
temporary OUT, as in a run (one file per call, no fsync).

    .venv/bin/python bench/caption_client.py [--latency 0.5] [--levels 8,64,256]

The last line is one JSON object with efficiency_8, efficiency_64 (goal >= 0.9), efficiency_256 and the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from fixtures_vlm import VlmServer  # noqa: E402
from pipeline.clip import Clip  # noqa: E402
from pipeline.executor import StageRunner, encode_row  # noqa: E402
from pipeline.stage import RunContext  # noqa: E402
from stages.caption import CaptionStage  # noqa: E402

KEY = "sk-bench-local-000000"


def clips(n: int, tag: int) -> list[Clip]:
    out = []
    for i in range(n):
        c = Clip(video_id=f"bench{tag}", video_uri=f"/bench/{tag}.mp4", shard_id="s0", clip_index=i,
                 start_s=float(i), end_s=float(i) + 1)
        c.frames = np.full((1, 16, 16, 3), (i * 37) % 255, np.uint8)
        c.frame_times = [float(i)]
        out.append(c)
    return out


def params(server: VlmServer, level: int) -> dict:
    return dict(base_url=server.url, style="haic", max_frames=1, concurrency=level, batch_size=1, workers=1)


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process (Linux /proc), e.g. the server's: its share of a loaded machine."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def through_ray(server: VlmServer, level: int, latency: float, out: str) -> dict:
    import ray
    import ray.data

    n = 4 * level
    rows = [encode_row("s0", f"bench{level}", 0, True, clips(n, level))]
    server.reset()
    server_cpu = process_cpu_s(server.proc.pid)
    started = time.monotonic()
    ds = ray.data.from_items(rows).map_batches(
        StageRunner, fn_constructor_kwargs=dict(stage_cls=CaptionStage, params=params(server, level),
                                                context=RunContext(output=out)),
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=1), batch_size=1, batch_format="pyarrow",
        num_cpus=0.5)
    done = ds.take_all()
    wall = time.monotonic() - started
    server_cpu = (process_cpu_s(server.proc.pid) - server_cpu) if server_cpu is not None else None
    arrivals = sorted(e["t"] for e in server.stats(brief=True)["log"])
    assert len(done) == 1 and len(arrivals) == n, (len(done), len(arrivals))
    span = arrivals[-1] - arrivals[0] + latency  # the last request's own latency completes the window
    achieved = n / span
    ideal = level / latency
    return {"requests": n, "achieved_rps": round(achieved, 1), "ideal_rps": round(ideal, 1),
            "efficiency": round(achieved / ideal, 3), "wall_s_with_actor_start": round(wall, 2),
            "server_cpu_ms_per_request": round(1000 * server_cpu / n, 2) if server_cpu is not None else None}


def cpu_per_request(server: VlmServer, level: int, out: str) -> float:
    stage = CaptionStage(CaptionStage.Params(**params(server, level)), RunContext(output=out))
    stage.setup()
    batch = clips(2 * level, 10_000 + level)
    before = time.process_time()
    stage.process(batch)
    assert all(c.status == "accepted" for c in batch), [c.error_message for c in batch if c.status != "accepted"][:1]
    return (time.process_time() - before) / len(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--levels", default="8,64,256")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    os.environ["ACTCURATE_VLM_API_KEY"] = KEY  # before Ray starts: its workers inherit the environment
    import ray

    from pipeline.executor import ensure_ray

    results: dict = {"latency_s": args.latency, "cores": os.cpu_count(), "loadavg_1m_before": os.getloadavg()[0],
                     "levels": {}}
    with VlmServer(api_key=KEY, latency=args.latency) as server, tempfile.TemporaryDirectory() as tmp:
        ensure_ray()
        for level in levels:
            figures = through_ray(server, level, args.latency, f"{tmp}/ray{level}")
            cpu = cpu_per_request(server, level, f"{tmp}/cpu{level}")
            figures["client_cpu_ms_per_request"] = round(1000 * cpu, 2)
            results["levels"][level] = figures
            print(f"{level:4d} in flight: {figures['achieved_rps']:7.1f} req/s of {figures['ideal_rps']:7.1f} ideal "
                  f"(efficiency {figures['efficiency']:.3f}), "
                  f"client CPU {figures['client_cpu_ms_per_request']} ms/request, server CPU "
                  f"{figures['server_cpu_ms_per_request']} ms/request", flush=True)
        ray.shutdown()
    results["loadavg_1m_after"] = os.getloadavg()[0]
    for level in levels:
        results[f"efficiency_{level}"] = results["levels"][level]["efficiency"]
    print(json.dumps(results))


if __name__ == "__main__":
    main()
