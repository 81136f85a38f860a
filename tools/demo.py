"""The main job on the embedded defaults: reconstruct the astronaut photo with the default full-head model (ICT-FaceKit),
build the Blender scene through the add-on's own operator, and export it.

Writes out/demo/: astronaut.png (the input), head.blend, head.fbx, head.glb, params.json, overlay.png.
Run through `./run demo` (which sets up the environment first).
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    import cv2
    import skimage.data

    out = ROOT / "out" / "demo"
    out.mkdir(parents=True, exist_ok=True)
    photo = out / "astronaut.png"
    cv2.imwrite(str(photo), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    # the add-on's headless entry point drives the same operators as the sidebar buttons
    cmd = [sys.executable, str(ROOT / "blender_addon" / "cli.py"), "reconstruct", str(photo),
           "--model", "ict", "--device", "auto",
           "--out", str(out / "head.fbx"), "--glb", str(out / "head.glb"),
           "--blend", str(out / "head.blend"), "--report-dir", str(out), "--overwrite"]   # the demo owns out/demo
    code = subprocess.call(cmd)
    if code == 0:
        print(f"\nDemo outputs in {out}:")
        for name in ("head.blend", "head.fbx", "head.glb", "params.json", "overlay.png"):
            p = out / name
            print(f"  {name:12s} {p.stat().st_size / 1024:8.1f} KiB" if p.exists() else f"  {name:12s} MISSING")
    return code


if __name__ == "__main__":
    sys.exit(main())
