"""Engine jobs in a child process (blender_addon/engine_process.py, runner.ChildJob): the GUI path
of the heavy jobs. No Python thread of FaceForge's runs inside Blender while they compute, which
is what crashed Blender 3.4 on a forced redraw (issue 12 item 8) and made its UI lag (item 9).

Here the child is started exactly as in Blender (the modal operator's timer calls ``job.done``);
tests/test_gui.py runs it in a real Blender window with screenshots taken mid-job.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

import blender_addon  # noqa: E402,F401
from blender_addon import runner  # noqa: E402
from blender_addon.engine import core  # noqa: E402
from blender_addon.engine_process import EngineCall  # noqa: E402

pytestmark = pytest.mark.blender


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    import imageio.v3 as iio
    import skimage.data
    path = tmp_path_factory.mktemp("child") / "astronaut.png"
    iio.imwrite(path, skimage.data.astronaut())
    return str(path)


def _poll(job, timeout=300.0):
    """What the modal operator does: ask ``done`` on every timer tick, read the progress."""
    seen, t = [], time.monotonic()
    while not job.done:
        seen.append(job.progress.fraction)
        assert time.monotonic() - t < timeout, "the child job did not finish"
        time.sleep(0.05)
    return seen


def test_child_job_gives_the_same_head_as_inline(photo):
    call = EngineCall(core.__name__, "pipeline:reconstruct_photo", photo, model="facemask", device="cpu")
    job = runner.ChildJob("Reconstruct", call).start()
    seen = _poll(job)
    assert job.outcome() == runner.FINISHED, job.error
    assert max(seen) > 0.2                                    # progress came back from the child
    inline = call(core.jobs.Progress())                       # the same call in this process
    assert type(job.result) is type(inline)                   # the same classes (core under the same name)
    assert np.abs(job.result.rig.vertices - inline.rig.vertices).max() < 1e-4
    assert job.result.rig.shape_key_names == inline.rig.shape_key_names


def test_the_engine_process_stays_warm_for_the_next_job(photo):
    """The engine process is kept after a job: the next one skips the imports (torch, mediapipe, the
    model), and runs in the same process; a cancelled job's process is not reused."""
    from blender_addon import engine_process
    engine_process.discard()                                  # start from no engine at all
    call = EngineCall(core.__name__, "pipeline:reconstruct_photo", photo, model="facemask", device="cpu")
    first = runner.ChildJob("Reconstruct", call).start()
    _poll(first)
    second = runner.ChildJob("Reconstruct", call).start()
    _poll(second)
    assert first.outcome() == second.outcome() == runner.FINISHED
    assert second._child is first._child and first._child.alive        # the same, warm process
    assert second._child.process.pid == runner._last_child_pid
    np.testing.assert_allclose(second.result.rig.vertices, first.result.rig.vertices, atol=1e-6)
    engine_process.discard()
    assert first._child.process.poll() is not None                     # and it goes when asked


def test_child_job_error_keeps_its_faceforge_message(tmp_path):
    noise = tmp_path / "noise.png"
    import imageio.v3 as iio
    iio.imwrite(noise, (np.random.default_rng(0).random((120, 120, 3)) * 255).astype(np.uint8))
    job = runner.ChildJob("Reconstruct", EngineCall(core.__name__, "pipeline:reconstruct_photo", str(noise),
                                                    model="facemask", device="cpu")).start()
    _poll(job)
    assert job.outcome() == runner.FAILED
    assert isinstance(job.error, core.errors.NoFaceError)       # the engine's own error type, not a generic one
    assert job.error_message().startswith("No face found in noise.png")


def test_cancel_kills_the_child_at_once(photo):
    job = runner.ChildJob("Reconstruct", EngineCall(core.__name__, "pipeline:reconstruct_photo", photo,
                                                    model="ict", device="cpu")).start()
    time.sleep(1.0)
    t = time.monotonic()
    job.cancel()
    assert job.done and time.monotonic() - t < 2.0
    assert job.outcome() == runner.CANCELLED
    assert job._child.process.poll() is not None                # no orphan process
    after = runner.ChildJob("Reconstruct", EngineCall(core.__name__, "pipeline:reconstruct_photo", photo,
                                                      model="facemask", device="cpu")).start()
    assert after._child is not job._child                       # a fresh engine after a cancel
    _poll(after)
    assert after.outcome() == runner.FINISHED


def test_heavy_operators_hand_the_runner_an_engine_call(tmp_path, monkeypatch):
    """Reconstruct / photos / track give the runner a picklable call (the child path when clicked)."""
    import pickle
    from blender_addon.operators import reconstruct
    work = reconstruct.pipeline_job(lambda: None, "track_video_to_rig", "clip.mp4", model="ict", device="cpu",
                                    frame_range=(0, 10), refine=False, track_path=None)
    call = pickle.loads(pickle.dumps(work.engine_call))
    assert call.target == "pipeline:track_video_to_rig" and call.args == ("clip.mp4",)
    assert call.function() is core.pipeline.track_video_to_rig


def test_a_large_result_is_read_in_one_poll():
    """A full head's result is tens of MB; the pipe holds 64 KB. One ``done`` poll must read a message
    that has begun arriving to its end, not a chunk per 0.1 s timer tick (half a minute for 20 MB)."""
    import os
    import threading
    from blender_addon.engine_process import _Reader, _send
    read, write = os.pipe()
    payload = ("result", np.arange(2_500_000, dtype=np.float64))          # 20 MB
    writer = threading.Thread(target=lambda: (_send(write, payload), os.close(write)))
    writer.start()
    reader = _Reader(read)
    time.sleep(0.05)                                                      # the child has begun writing
    t = time.monotonic()
    messages = reader.messages()
    assert len(messages) == 1 and np.array_equal(messages[0][1], payload[1])
    assert time.monotonic() - t < 5.0
    writer.join()
    os.close(read)
