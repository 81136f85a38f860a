"""Batch mode on Ray (core/batch, `faceforge batch`).

The main case starts its own two-node Ray cluster on this machine (a head and a second worker node,
one CPU each), runs 8 small jobs through it - photos, a photo set, clip excerpts, a corrupt video and a
photo without a face - kills the Ray worker that runs one clip in the middle of its job, and checks:
every good job's files exist and hold the same vertices as a direct single-process `faceforge` run,
the bad jobs carry their own error messages, the killed job was retried, the ledger says all of it,
and a second run does nothing at all. Smaller cases: manifests and their errors, the time limit,
Ctrl+C through the real command (and the next run finishing the batch).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from core.batch import BatchOptions, Ledger, glb_positions, load_jobs, read_csv, read_progress, run_batch, write_toml
from core.batch.manifest import JobSpec
from core.errors import InputError
from tests.media import feat_data

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parent.parent
CLI = str(ROOT / "blender_addon" / "cli.py")
COMMAND = ["@PYTHON@", CLI]


# ----------------------------------------------------------------------------- media and jobs
@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    import cv2
    import skimage.data

    d = tmp_path_factory.mktemp("media")
    data = feat_data()
    cv2.imwrite(str(d / "astronaut.png"), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(d / "coffee.png"), cv2.cvtColor(skimage.data.coffee(), cv2.COLOR_RGB2BGR))   # no face
    shutil.copy(data / "single_face.jpg", d / "man.jpg")
    shutil.copy(data / "single_face.mp4", d / "clip.mp4")
    (d / "person").mkdir()
    shutil.copy(data / "single_face.jpg", d / "person" / "a.jpg")
    cv2.imwrite(str(d / "person" / "b.jpg"), cv2.imread(str(data / "single_face.jpg"))[:, ::-1])
    rng = np.random.default_rng(0)
    (d / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + rng.integers(0, 256, 30000, np.uint8).tobytes())
    return d


def manifest_text() -> str:
    return """
[defaults]
model = "facemask"
outputs = ["glb"]

[[job]]
kind = "photo"
input = "astronaut.png"
outputs = ["fbx", "glb", "blend"]

[[job]]
kind = "photo"
input = "man.jpg"

[[job]]
kind = "photos"
input = "person"
options = { texture_size = 256 }

[[job]]
kind = "track"
input = "clip.mp4"
name = "clip_a"
options = { end = 4 }

[[job]]
kind = "track"
input = "clip.mp4"
name = "clip_b"
options = { start = 30, end = 33 }

[[job]]
kind = "track"
input = "clip.mp4"
name = "clip_c"
options = { start = 60, end = 63 }

[[job]]
kind = "track"
input = "broken.mp4"

[[job]]
kind = "photo"
input = "coffee.png"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """A Ray head node plus a second worker node on this machine, one CPU each (the test's own)."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "gcs_server_port": free_port(), "include_dashboard": False, "object_store_memory": 100 * 1024 * 1024})
    c.add_node(num_cpus=1, object_store_memory=100 * 1024 * 1024)
    c.wait_for_nodes()
    try:
        yield c
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.shutdown()


def direct_run(args: list, cwd: Path) -> None:
    """The same job as one plain `faceforge` process, no Ray."""
    proc = subprocess.run([sys.executable, CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def ledger_rows(out: Path) -> dict:
    db = sqlite3.connect(out / "batch.sqlite")
    db.row_factory = sqlite3.Row
    rows = {r["name"]: dict(r) for r in db.execute("SELECT * FROM jobs")}
    runs = [dict(r) for r in db.execute("SELECT * FROM runs ORDER BY id")]
    db.close()
    return rows, runs


# ----------------------------------------------------------------------------- the cluster run
def test_batch_on_a_two_node_cluster_survives_a_killed_worker_and_bad_files(media, cluster, tmp_path):
    manifest = media / "jobs.toml"
    manifest.write_text(manifest_text())
    jobs = load_jobs(manifest)
    assert [j.name for j in jobs] == ["astronaut", "man", "person", "clip_a", "clip_b", "clip_c", "broken", "coffee"]
    out = tmp_path / "results"
    killed = []

    def kill_clip_a_worker():
        # the Ray worker running clip_a, once its faceforge command is under way: SIGKILL, as a crash would
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            pids = glob.glob(str(out / ".staging" / "clip_a" / "attempt-1-*" / "worker.pid"))
            if pids:
                time.sleep(1.5)
                pid = int(Path(pids[0]).read_text())
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_clip_a_worker, daemon=True)
    killer.start()
    updates = []
    t0 = time.monotonic()
    summary = run_batch(jobs, out, BatchOptions(address=cluster.address, max_retries=2, timeout_s=240),
                        cli_command=COMMAND, on_update=updates.append)
    first_s = time.monotonic() - t0
    killer.join(timeout=5)
    assert killed, "the test never saw clip_a's worker to kill"
    assert not ray.is_initialized(), "the batch left its connection to the cluster open"

    good = ["astronaut", "man", "person", "clip_a", "clip_b", "clip_c"]
    assert (summary.done, summary.failed, summary.timed_out, summary.cancelled) == (6, 2, 0, 0), \
        [(r["name"], r["state"], r["error"], r["log_tail"][-800:]) for r in summary.rows]
    assert updates[-1]["running"] == 0 and updates[-1]["done"] == 6
    assert max(u["running"] for u in updates) == 2, "two nodes of one CPU each: two jobs at a time"

    # every good job's folder, complete; no half folders, no staging left
    for name in good:
        assert (out / name / "head.glb").stat().st_size > 1000
        assert json.loads((out / name / "job.json").read_text())["job"]["name"] == name
    for ext in ("fbx", "glb", "blend"):
        assert (out / "astronaut" / f"head.{ext}").stat().st_size > 1000
    assert (out / "astronaut" / "params.json").is_file() and (out / "astronaut" / "overlay.png").is_file()
    assert (out / "clip_a" / "head.fftrack.npz").is_file()
    assert not (out / "broken").exists() and not (out / "coffee").exists()
    assert not (out / ".staging").exists()
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(good + ["report_files"])

    # the ledger: states, the killed job's second attempt, the bad files' own messages, hashes and figures
    rows, runs = ledger_rows(out)
    assert {n: r["state"] for n, r in rows.items()} == {**{n: "done" for n in good}, "broken": "failed",
                                                         "coffee": "failed"}
    assert rows["clip_a"]["attempts"] == 2, rows["clip_a"]
    assert rows["clip_a"]["worker_pid"] != killed[0]                 # the retry ran in another worker process
    assert all(rows[n]["attempts"] == 1 for n in good if n != "clip_a")
    assert "Could not read any frame" in rows["broken"]["error"]
    assert "No face found" in rows["coffee"]["error"]
    ledger = Ledger(out / "batch.sqlite")
    for job in jobs:
        assert rows[job.name]["input_hash"] == ledger.input_hash(job.as_dict())
    ledger.close()
    for name in good:
        r = rows[name]
        assert r["seconds"] > 0 and r["finished_at"] >= r["started_at"]
        files = json.loads(r["files"])
        assert "head.glb" in files and all((out / name / f).is_file() for f in files)
        assert json.loads(r["figures"])["vertices"] == 490
    figures = json.loads(rows["clip_b"]["figures"])
    assert figures["frames"] == 3 and figures["animated_frames"] == 3
    assert json.loads(rows["astronaut"]["figures"])["landmark_error_px"] < 3
    assert len(runs) == 1 and runs[0]["submitted"] == 8 and runs[0]["done"] == 6

    # the report names every job and shows the good ones' thumbnails
    report = (out / "report.md").read_text()
    assert all(f"| {n} |" in report or f"[{n}]" in report for n in good + ["broken", "coffee"])
    assert "No face found" in report and "report_files/astronaut.jpg" in report
    assert (out / "report_files" / "clip_a.jpg").is_file() and (out / "report.html").is_file()

    # same vertices as a direct single-process run (the killed-and-retried clip included)
    ref = tmp_path / "direct"
    ref.mkdir()
    direct_run(["reconstruct", str(media / "astronaut.png"), "--model", "facemask", "--device", "cpu",
                "--glb", str(ref / "astronaut.glb")], ref)
    direct_run(["track", str(media / "clip.mp4"), "--model", "facemask", "--device", "cpu", "--end", "4",
                "--glb", str(ref / "clip_a.glb")], ref)
    for name in ("astronaut", "clip_a"):
        batch_v, direct_v = glb_positions(out / name / "head.glb"), glb_positions(ref / f"{name}.glb")
        assert batch_v.shape == direct_v.shape == (490, 3)
        np.testing.assert_allclose(batch_v, direct_v, atol=1e-6, err_msg=name)

    # a second run does nothing: no job runs (Ray is not even started), nothing is rewritten
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/head.*")}
    t0 = time.monotonic()
    again = run_batch(load_jobs(manifest), out, BatchOptions(address=cluster.address), cli_command=COMMAND)
    assert (again.skipped, again.skipped_failed, again.done, again.failed) == (6, 2, 0, 0)
    assert time.monotonic() - t0 < 10 < first_s
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/head.*")} == stamps
    rows2, runs2 = ledger_rows(out)
    assert {n: (r["state"], r["attempts"], r["input_hash"]) for n, r in rows2.items()} == \
        {n: (r["state"], r["attempts"], r["input_hash"]) for n, r in rows.items()}
    assert len(runs2) == 2 and runs2[1]["submitted"] == 0

    # a changed input runs again, alone
    (media / "person" / "b.jpg").write_bytes((media / "person" / "b.jpg").read_bytes())   # same bytes: no rerun
    ledger = Ledger(out / "batch.sqlite")
    person = next(j for j in jobs if j.name == "person")
    assert ledger.settled("person", ledger.input_hash(person.as_dict()), str(out / "person")) == "done"
    changed = JobSpec(**{**person.__dict__, "options": {"texture_size": 512}})
    assert ledger.settled("person", ledger.input_hash(changed.as_dict()), str(out / "person")) == ""
    ledger.close()


# ----------------------------------------------------------------------------- limits and Ctrl+C
def test_a_job_past_the_time_limit_is_stopped_and_reported(media, cluster, tmp_path):
    jobs = [JobSpec(name="slow", kind="track", inputs=(str(media / "clip.mp4"),), model="facemask",
                    options={"end": 40}, outputs=("glb",))]
    out = tmp_path / "r"
    summary = run_batch(jobs, out, BatchOptions(address=cluster.address, timeout_s=3), cli_command=COMMAND)
    assert summary.timed_out == 1 and summary.done == 0
    rows, _ = ledger_rows(out)
    assert rows["slow"]["state"] == "timeout" and "time limit (3 s)" in rows["slow"]["error"]
    assert 3 <= rows["slow"]["seconds"] < 15
    assert not (out / "slow").exists() and not (out / ".staging").exists()
    assert not [p for p in _children_cmdlines() if str(media / "clip.mp4") in p and "--end 40" in p]


def _children_cmdlines() -> list:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                out.append((d / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace"))
            except OSError:
                pass
    return out


def test_ctrl_c_stops_the_command_cleanly_and_the_next_run_finishes(media, cluster, tmp_path):
    manifest = tmp_path / "two.csv"
    manifest.write_text("kind,input,name,model,outputs,end\n"
                        f"track,{media / 'clip.mp4'},first,facemask,glb,30\n"
                        f"photo,{media / 'man.jpg'},second,facemask,glb,\n")
    out = tmp_path / "r"
    cmd = [sys.executable, CLI, "batch", str(manifest), "--out", str(out), "--address", cluster.address,
           "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and read_progress(out).get("running", 0) < 2:
        time.sleep(0.2)
    assert read_progress(out).get("running") == 2, "the batch never got going"
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    text, _ = proc.communicate(timeout=90)
    assert proc.returncode == 130, text
    assert "run the same command again" in text
    rows, _ = ledger_rows(out)
    assert {r["state"] for r in rows.values()} == {"cancelled"}
    assert not (out / "first").exists() and not (out / "second").exists() and not (out / ".staging").exists()

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows, runs = ledger_rows(out)
    assert {n: r["state"] for n, r in rows.items()} == {"first": "done", "second": "done"}
    assert (out / "first" / "head.glb").is_file() and (out / "second" / "head.glb").is_file()
    assert [r["interrupted"] for r in runs] == [1, 0]


# ----------------------------------------------------------------------------- manifests (no Ray)
def test_manifests_folders_and_their_errors(media, tmp_path, monkeypatch):
    monkeypatch.chdir(media.parent)                       # a folder named relative to the working directory
    jobs = load_jobs(media.name, {"model": "facemask"})
    assert all(Path(p).is_file() or Path(p).is_dir() for j in jobs for p in j.inputs)
    kinds = {j.name: j.kind for j in jobs}
    assert kinds == {"astronaut": "photo", "broken": "track", "clip": "track", "coffee": "photo", "man": "photo",
                     "person": "photos"}
    assert all(j.model == "facemask" for j in jobs)
    # a batch's output folder inside the input folder is not a photo set on the next run
    (media / "results" / "report_files").mkdir(parents=True)
    (media / "results" / "batch.sqlite").write_bytes(b"")
    shutil.copy(media / "man.jpg", media / "results" / "report_files" / "man.jpg")
    shutil.copy(media / "man.jpg", media / "results" / "overlay.png")
    try:
        assert sorted(j.name for j in load_jobs(media)) == sorted(kinds)
    finally:
        shutil.rmtree(media / "results")

    csv_path = tmp_path / "jobs.csv"
    csv_path.write_text(f"kind,input,start,end,refine,texture_size\ntrack,{media / 'clip.mp4'},2,10,yes,\n"
                        f"photos,{media / 'person' / 'a.jpg'};{media / 'person' / 'b.jpg'},,,,512\n")
    a, b = read_csv(csv_path)
    assert (a.kind, a.options) == ("track", {"start": 2, "end": 10, "refine": True})
    assert (b.kind, len(b.inputs), b.options, b.name) == ("photos", 2, {"texture_size": 512}, "a")
    args = a.cli_args("@OUT@", "cpu")
    assert args[:2] == ["track", str(media / "clip.mp4")] and "--refine" in args
    assert args[args.index("--start") + 1] == "2" and args[args.index("--track-file") + 1] == "@OUT@/head.fftrack.npz"

    # every kind's command line is one the faceforge command accepts (its own parser says so)
    from blender_addon import cli
    style = tmp_path / "x.ffstyle.pt"
    style.write_bytes(b"")
    for job in (a, b, *jobs, JobSpec(name="i", kind="implicit", inputs=(str(media / "clip.mp4"),),
                                     options={"steps": 10, "size": 32, "frames": 4, "resolution": 16,
                                              "track_file": str(style)}),
                JobSpec(name="s", kind="apply-style", inputs=(str(style), str(style)))):
        parsed = cli.build_parser().parse_args(job.cli_args("/tmp/o", "cpu"))
        assert parsed.command == {"photo": "reconstruct", "photos": "reconstruct-photos"}.get(job.kind, job.kind)
        assert parsed.glb == "/tmp/o/head.glb" and parsed.device == "cpu"

    # a manifest the Blender panel writes reads back the same
    back = tmp_path / "back.toml"
    write_toml([a, b], back)
    assert [j.as_dict() for j in load_jobs(back)] == [a.as_dict(), b.as_dict()]

    def error(text: str, suffix=".toml") -> str:
        p = tmp_path / f"bad{suffix}"
        p.write_text(text)
        with pytest.raises(InputError) as e:
            load_jobs(p)
        return str(e.value)

    clip = json.dumps(str(media / "clip.mp4"))
    assert "kind must be one of" in error(f'[[job]]\nkind = "dance"\ninput = {clip}\n')
    assert "does not exist" in error('[[job]]\nkind = "track"\ninput = "nowhere.mp4"\n')
    assert "do not apply to a 'track' job" in error(f'[[job]]\nkind = "track"\ninput = {clip}\noptions = {{ face = 1 }}\n')
    assert "whole number" in error(f'[[job]]\nkind = "track"\ninput = {clip}\noptions = {{ end = "soon" }}\n')
    assert "not valid TOML" in error("[[job]\n")
    assert "no jobs" in error("[defaults]\nmodel = 'facemask'\n")
    assert "Two jobs are named" in error(f'[[job]]\nkind = "track"\ninput = {clip}\nname = "x"\n'
                                         f'[[job]]\nkind = "track"\ninput = {clip}\nname = "x"\n')
    assert "takes 2 input(s)" in error(f'[[job]]\nkind = "apply-style"\ninput = {clip}\n')
    assert "outputs must be some of" in error(f'[[job]]\nkind = "track"\ninput = {clip}\noutputs = ["obj"]\n')
    assert "'kind' and 'input'" in error("what,ever\n1,2\n", ".csv")
    # two default names from one file: the second gets a suffix
    twice = tmp_path / "twice.toml"
    twice.write_text(f'[[job]]\nkind = "track"\ninput = {clip}\n[[job]]\nkind = "track"\ninput = {clip}\n')
    assert [j.name for j in load_jobs(twice)] == ["clip", "clip-2"]
    # the report's own folder is never a job's
    twice.write_text(f'[[job]]\nkind = "track"\ninput = {clip}\nname = "report_files"\n')
    assert [j.name for j in load_jobs(twice)] == ["report_files-2"]


def test_one_batch_at_a_time_per_output_folder(media, tmp_path):
    from core.batch.runner import _FolderLock

    out = tmp_path / "r"
    out.mkdir()
    job = JobSpec(name="x", kind="photo", inputs=(str(media / "man.jpg"),))
    with _FolderLock(out):                     # as a running batch holds it
        with pytest.raises(InputError, match="Another batch is running"):
            run_batch([job], out, BatchOptions(), cli_command=COMMAND)
    assert not (out / "batch.sqlite").exists()


def test_the_cli_reports_a_bad_manifest_without_starting_ray(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[job]]\nkind = "photo"\ninput = "missing.jpg"\n')
    proc = subprocess.run([sys.executable, CLI, "batch", str(bad), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "bad.toml, job 1: input" in proc.stderr and "does not exist" in proc.stderr
    assert not (tmp_path / "o").exists()
    # a cluster address where nothing answers: said at once (ray.init alone would retry for minutes)
    good = tmp_path / "good.csv"
    good.write_text(f"kind,input\nphoto,{feat_data() / 'single_face.jpg'}\n")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, CLI, "batch", str(good), "--out", str(tmp_path / "o"), "--address",
                           "127.0.0.1:1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "No Ray cluster answers at '127.0.0.1:1'" in proc.stderr
    assert time.monotonic() - t0 < 30


@pytest.mark.slow
def test_default_head_on_a_local_ray_instance(media, tmp_path):
    """The embedded defaults (the ICT-FaceKit full head, all three rig files) on the local Ray instance the
    batch starts and stops itself."""
    jobs = [JobSpec(name="astronaut", kind="photo", inputs=(str(media / "astronaut.png"),)),
            JobSpec(name="clip", kind="track", inputs=(str(media / "clip.mp4"),), options={"end": 3})]
    out = tmp_path / "r"
    summary = run_batch(jobs, out, BatchOptions(num_cpus=2, timeout_s=600), cli_command=COMMAND)
    assert summary.done == 2, [(r["name"], r["error"], r["log_tail"][-1500:]) for r in summary.rows]
    assert not ray.is_initialized()
    rows, _ = ledger_rows(out)
    for name in ("astronaut", "clip"):
        for ext in ("fbx", "glb", "blend"):
            assert (out / name / f"head.{ext}").stat().st_size > 100_000
        figures = json.loads(rows[name]["figures"])
        assert figures["shape_keys"] >= 57 and figures["vertices"] > 26719      # GLB splits UV seams
    assert json.loads(rows["clip"]["figures"])["frames"] == 3
