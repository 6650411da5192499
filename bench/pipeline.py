"""A recipe over N videos three ways, each in a fresh process, wall time and CPU of its whole process tree:

  ray:       `actcurate run --executor ray` (a new local Ray, Ray Data, an actor pool per model stage);
  local:     `actcurate run --executor local`: every stage in the driver, each video decoded once (a plain script;
             what `--executor auto` does for small runs);
  per_stage: the same stages in a plain loop that decodes the video again for every stage after the split (how most
             curation tools run their operators: one decode per operator), called directly, no Ray.

Ratios: ray/per_stage and ray/local (wall and CPU); Ray's efficiency = (sum of the stages' own CPU seconds, from the
per_stage loop, decoding counted once) / cores / ray wall time. The ray and local runs print their profile (where the
time went: Ray start-up, stream, commits, each stage's set-up and, on Ray, the CPU each worker process used before its
first clip).

Recipes: quickstart (BlazePose from the model cache: `make install`) on the shared real clips, cycled to N (symlinks,
so every video has its own ID), and haic without its VLM stages on generated videos with fixture models
(YOLOX/DWPose ONNX with the real contracts, a tiny open_clip), generated once into bench/.cache/pipeline/. The last
line is one JSON object.

    .venv/bin/python bench/pipeline.py [--recipes quickstart,haic] [--counts 10,100,1000] [--modes ray,local,per_stage]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
CACHE = REPO / "bench" / ".cache" / "pipeline"
SHARED = REPO.parent / "shared" / "videos"
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".webm", ".mov"}
PR_SET_CHILD_SUBREAPER = 36


# -- inputs ---------------------------------------------------------------------------------------------------------
def quickstart_inputs(count: int) -> tuple[Path, list[str]]:
    """The shared clips cycled to `count` videos (symlinks with their own names), or generated ones without them."""
    folder = CACHE / f"quickstart-{count}"
    sources = sorted(p for p in SHARED.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES) if SHARED.is_dir() else []
    if not sources:
        return generated_inputs(count), []
    if not folder.is_dir():
        folder.mkdir(parents=True)
        for i in range(count):
            src = sources[i % len(sources)]
            (folder / f"v{i:05d}_{src.name}").symlink_to(src)
    return folder, []


def generated_inputs(count: int) -> Path:
    """`count` 4 s videos of 640x480 (haic's probe keeps a short side of 480 and more) with one cut and a bright
    moving square (the fixture detector's 'person')."""
    import media

    folder = CACHE / f"generated-640x480-{count}"
    if not folder.is_dir():
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        for i in range(count):
            media.make_video(partial / f"g{i:05d}.mp4", width=640, height=480, segments=(50, 50), fps=25, seed=i)
        partial.rename(folder)
    return folder


def haic_overrides() -> list[str]:
    """The haic recipe without captions, on fixture models with the real models' contracts."""
    import fixtures_models as fm
    from fixtures_aesthetic import make_tiny_aesthetic

    models = CACHE / "models"
    if not (models / "dw-ll_ucoco_384.onnx").exists():
        fm.make_model_dir(models)
    aesthetic = CACHE / "aesthetic"
    if not (aesthetic / "tiny_clip.safetensors").exists():
        aesthetic.mkdir(parents=True, exist_ok=True)
        make_tiny_aesthetic(aesthetic, "actcurate-bench-tiny-clip")
    head = next((aesthetic / "models").glob("*.pth"))
    return [f"pose.det_model={models / 'yolox_l.onnx'}", f"pose.pose_model={models / 'dw-ll_ucoco_384.onnx'}",
            f"aesthetic.clip_model={aesthetic / 'actcurate-bench-tiny-clip.json'}",
            f"aesthetic.clip_weights={aesthetic / 'tiny_clip.safetensors'}", f"aesthetic.head_weights={head}",
            "aesthetic.device=cpu",
            "pose.min_person_area=0.02"]  # the generated 'person' (a square) covers 3% of the frame; haic asks 5%


def recipe_file(name: str) -> Path:
    """The recipe as run: haic without the stages that call a VLM (caption, mome, annotate: they need endpoints)."""
    import yaml

    from memory import VLM_STAGES
    from pipeline.recipe import resolve_recipe_path

    doc = yaml.safe_load(resolve_recipe_path(name).read_text())
    for stage in VLM_STAGES:
        doc["stages"].pop(stage, None)
    path = CACHE / f"recipe-{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# -- measuring a process tree ---------------------------------------------------------------------------------------
def tree_cpu(command: list[str], env: dict | None = None) -> dict:
    """Wall time and CPU seconds of a command and every process it starts (Ray's raylet, GCS, workers). This process
    is a child subreaper, so processes orphaned under it are still its descendants; their CPU is sampled every 0.2 s
    (the last sample of each process counts: a lower bound by up to 0.2 s per process) and taken from the reaped
    children's rusage too; the larger of the two is reported."""
    import psutil

    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    seen: dict[int, float] = {}
    names: dict[int, str] = {}  # what each process was last seen as (Ray names workers by their task or actor)
    stop = threading.Event()

    def sample() -> None:
        me = psutil.Process()
        while not stop.wait(0.2):
            for proc in me.children(recursive=True):
                try:
                    times = proc.cpu_times()
                    seen[proc.pid] = max(seen.get(proc.pid, 0.0), times.user + times.system)
                    names[proc.pid] = " ".join(proc.cmdline()[:1])[:48] or proc.name()
                except psutil.Error:
                    pass

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=REPO)
    wall = time.perf_counter() - started
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # reap what the command left behind (Ray's processes shut down after it)
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.1)
    stop.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    reaped = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    profile = next((json.loads(line.removeprefix("profile ")) for line in done.stderr.splitlines()
                    if line.startswith("profile ")), None)
    last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    by_process: dict[str, float] = {}
    for pid, cpu in seen.items():
        by_process[names.get(pid, "?")] = by_process.get(names.get(pid, "?"), 0.0) + cpu
    return {"wall_s": round(wall, 2), "cpu_s": round(max(reaped, sum(seen.values())), 2),
            "cpu_reaped_s": round(reaped, 2), "cpu_sampled_s": round(sum(seen.values()), 2),
            "cpu_by_process": {k: round(v, 2) for k, v in sorted(by_process.items(), key=lambda kv: -kv[1])},
            "profile": profile, "child": json.loads(last) if last.startswith("{") else None}


# -- the per-stage loop (child process) -------------------------------------------------------------------------------
def per_stage_loop(recipe_path: str, input_dir: str, *overrides: str) -> dict:
    """Every video through the recipe's stages in a plain loop, with a decode of its own for every stage after the
    split (a full PyAV decode on one thread, as the scenes stage decodes on a 1-CPU worker): the cost of a tool whose
    operators each decode the video. Video by video, so memory stays one video's frames; the work is that of running
    operator by operator."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as a 1-CPU Ray worker and the local executor
    import av

    from pipeline.clip import Clip, video_id_for
    from pipeline.recipe import load_recipe
    from pipeline.video import set_decoder_threads

    recipe = load_recipe(recipe_path, list(overrides))
    stages = [spec.build() for spec in recipe.stages]
    for stage in stages:
        stage.use_worker_cpus(1.0)  # the threads of a 1-CPU Ray worker, as ray mode runs them
        stage.setup()
    split = recipe.stage_names().index(recipe.split_stage) + 1
    videos = sorted(str(p) for p in Path(input_dir).iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    stage_cpu = {stage.name: 0.0 for stage in stages}
    decode_cpu = 0.0
    statuses: dict[str, int] = {}
    for uri in videos:
        clips = [Clip(video_id=video_id_for(uri), video_uri=uri, shard_id="bench")]
        for index, stage in enumerate(stages):
            if index >= split and any(c.alive for c in clips):
                started = time.process_time()
                try:
                    with av.open(uri) as container:  # this operator's own decode
                        stream = container.streams.video[0]
                        set_decoder_threads(stream, 1)
                        for _ in container.decode(stream):
                            pass
                except Exception:  # the recipe's own error rows say what is wrong with the file
                    pass
                decode_cpu += time.process_time() - started
            started = time.process_time()
            clips = list(stage.iter_process(clips))
            stage_cpu[stage.name] += time.process_time() - started
        for clip in clips:
            statuses[clip.status] = statuses.get(clip.status, 0) + 1
    return {"stage_cpu_s": {k: round(v, 3) for k, v in stage_cpu.items()}, "extra_decode_cpu_s": round(decode_cpu, 3),
            "statuses": statuses}


# -- the bench ------------------------------------------------------------------------------------------------------
def measure(recipe: str, count: int, modes: list[str]) -> dict:
    if recipe == "quickstart":
        folder, overrides = quickstart_inputs(count)
    else:
        folder, overrides = generated_inputs(count), haic_overrides()
    path = recipe_file(recipe)
    sets = [arg for o in overrides for arg in ("--set", o)]
    figures: dict = {"recipe": recipe, "videos": count, "input": str(folder)}
    for mode in modes:
        out = CACHE / "out" / f"{recipe}-{count}-{mode}"
        shutil.rmtree(out, ignore_errors=True)
        if mode == "per_stage":
            command = [sys.executable, __file__, "--child", str(path), str(folder), *overrides]
        else:
            command = [sys.executable, "-m", "pipeline.cli", "run", "--recipe", str(path), "--input", str(folder),
                       "--output", str(out), "--no-progress", "--profile", "--executor", mode, *sets]
        figures[mode] = tree_cpu(command)
        print(f"{recipe} x{count} {mode}: wall {figures[mode]['wall_s']} s, cpu {figures[mode]['cpu_s']} s",
              file=sys.stderr, flush=True)
    cores = os.cpu_count() or 1
    ratios = {}
    for a, b in (("ray", "per_stage"), ("ray", "local"), ("local", "per_stage")):
        if a in figures and b in figures:
            ratios[f"{a}_vs_{b}_wall"] = round(figures[a]["wall_s"] / figures[b]["wall_s"], 3)
            ratios[f"{a}_vs_{b}_cpu"] = round(figures[a]["cpu_s"] / figures[b]["cpu_s"], 3)
    if "per_stage" in figures and "ray" in figures:
        stage_cpu = sum(figures["per_stage"]["child"]["stage_cpu_s"].values())
        ratios["stage_cpu_s"] = round(stage_cpu, 2)
        ratios["ray_efficiency"] = round(stage_cpu / cores / figures["ray"]["wall_s"], 3)
    figures["ratios"] = ratios
    return figures


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(per_stage_loop(*sys.argv[2:])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default="quickstart,haic")
    parser.add_argument("--counts", default="10,100,1000", help="videos per run; 1,000 takes hours on 2 cores")
    parser.add_argument("--modes", default="ray,local,per_stage")
    args = parser.parse_args()
    modes = args.modes.split(",")
    runs = [measure(recipe, int(count), modes) for recipe in args.recipes.split(",")
            for count in args.counts.split(",")]
    print(f"\n{'recipe':<11} {'videos':>6} " + " ".join(f"{m + ' wall/cpu s':>20}" for m in modes)
          + f" {'ray/per_stage wall':>19} {'ray/local wall':>15} {'efficiency':>10}")
    for r in runs:
        cells = " ".join(f"{r[m]['wall_s']:>10.1f}/{r[m]['cpu_s']:<9.1f}" for m in modes)
        q = r["ratios"]
        print(f"{r['recipe']:<11} {r['videos']:>6} {cells} {q.get('ray_vs_per_stage_wall', '-'):>19} "
              f"{q.get('ray_vs_local_wall', '-'):>15} {q.get('ray_efficiency', '-'):>10}")
    print(json.dumps({"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 1), "runs": runs}))


if __name__ == "__main__":
    main()
