"""Whether a detection can be trusted: does it look like a face, and is its head pose inside the
range where the landmarker is reliable?

Both questions are answered from the detection's own geometry. Its 468 surface points are fitted
to the mean landmark layout (the face-mask model's template: vertex i is detector point i) by a 3D
similarity transform. The residual says how face-like the points are (a round shape taken for a
face gives a distorted layout); the rotation gives the head pose.

FaceMesh's yaw saturates: renders of the default head turned 55-65 degrees come out at 49-57,
with the far eye and the mouth pushed onto the cheek, and from ~65-70 it places no points at all
(the issue's 79-degree photo was fitted at 57). So a profile is recognised from cues that keep
growing past that point: how far the nose tip sits outside the eyes (from the face detector's six
keypoints, which are not pulled toward a frontal layout) and how unequal the two eyes' widths
are. After a fit, the fitted yaw and landmark residual are checked the same way. Stills only: the
video tracker does not use these checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numpy as np

N_SURFACE_POINTS = 468
# eye corners of the detector's topology: the person's right eye (33 outer, 133 inner), left eye
RIGHT_EYE, LEFT_EYE = (33, 133), (263, 362)

# A detection's layout residual (RMS distance to the fitted mean layout, over the layout's RMS
# radius) grows with the head's turn: measured ~0.045 + 0.0012 per degree of yaw on photos and
# renders of real heads, never more than 0.045 above that. FaceMesh on round cartoon faces (the
# "seal behind a man" case) gives 0.10-0.13 at 0 degrees: 0.06-0.08 above.
EXPECTED_RESIDUAL = 0.045
RESIDUAL_PER_DEG = 0.0012
PLAUSIBLE_EXCESS = 0.045       # plausibility 1 up to here ...
IMPLAUSIBLE_EXCESS = 0.1       # ... falling to 0 here


@lru_cache(maxsize=1)
def mean_layout() -> np.ndarray:
    """(468, 3) the mean detector points in metres (x right, y up, z toward the viewer)."""
    from ..models.builtin import BUILTIN_PATH
    with np.load(BUILTIN_PATH, allow_pickle=False) as z:
        return z["v_template"][:N_SURFACE_POINTS].astype(np.float64)


@dataclass
class LayoutFit:
    yaw_deg: float        # + = the face turned toward the image's right
    pitch_deg: float      # + = looking up
    roll_deg: float       # + = the head tilted counter-clockwise in the image
    residual: float       # RMS misfit over the layout's RMS radius (0 = a perfect face layout)
    eye_ratio: float      # narrower / wider eye width in the image (1 = frontal)

    @property
    def excess_residual(self) -> float:
        """The residual above what a real face at this yaw gives."""
        return self.residual - (EXPECTED_RESIDUAL + RESIDUAL_PER_DEG * abs(self.yaw_deg))

    @property
    def plausibility(self) -> float:
        """1 for a face-like layout, falling to 0 at IMPLAUSIBLE_EXCESS above a real face's residual."""
        t = (self.excess_residual - PLAUSIBLE_EXCESS) / (IMPLAUSIBLE_EXCESS - PLAUSIBLE_EXCESS)
        return float(np.clip(1.0 - t, 0.0, 1.0))


def fit_layout(points: np.ndarray) -> LayoutFit:
    """Similarity-fit the mean layout to detected points ((>=468, 3) pixels: x right, y down, z
    away from the viewer as mediapipe gives them)."""
    src = mean_layout()
    dst = np.asarray(points, np.float64)[:N_SURFACE_POINTS] * np.array([1.0, -1.0, -1.0])
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    U, S, Vt = np.linalg.svd(d.T @ s)                       # Umeyama: dst ~ scale * R @ src + t
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    R = U @ D @ Vt
    scale = float((S * np.diag(D)).sum() / (s ** 2).sum())
    res = d - scale * s @ R.T
    residual = float(np.sqrt((res ** 2).sum(1).mean()) / (scale * np.sqrt((s ** 2).sum(1).mean())))
    fwd = R[:, 2]                                           # where the face looks, in the image frame
    up = R[:, 1]
    p = np.asarray(points, np.float64)
    widths = [np.linalg.norm(p[a, :2] - p[b, :2]) for a, b in (RIGHT_EYE, LEFT_EYE)]
    return LayoutFit(yaw_deg=float(np.degrees(np.arctan2(fwd[0], fwd[2]))),
                     pitch_deg=float(np.degrees(np.arcsin(np.clip(fwd[1], -1, 1)))),
                     roll_deg=float(np.degrees(np.arctan2(-up[0], up[1]))),
                     residual=residual, eye_ratio=float(min(widths) / max(max(widths), 1e-6)))


def keypoint_yaw_deg(keypoints) -> float:
    """How far the head is turned (unsigned degrees) from the face detector's keypoints (right eye,
    left eye, nose tip, ...; pixels): the nose tip's sideways offset from the eyes' midpoint over
    the eye distance, read as NOSE_DEPTH * tan(yaw). A rough cue (on renders it reads 10-15 degrees
    high below 45 and 60-85 at 65-85 degrees), but it keeps growing where FaceMesh's yaw stops."""
    kp = np.asarray(keypoints, np.float64)
    eyes = kp[1] - kp[0]
    dist = float(np.linalg.norm(eyes))
    if dist < 1e-6:
        return 90.0
    offset = abs(float((kp[2] - (kp[0] + kp[1]) / 2) @ (eyes / dist))) / dist
    return float(np.degrees(np.arctan(offset / NOSE_DEPTH)))


NOSE_DEPTH = 0.45        # nose tip ahead of the eyes, over the eye distance, on an adult face

# Yaw limits, degrees. FaceMesh's 3D yaw follows the head to ~50 degrees (renders: 41-42 at 45,
# 49-53 at 55) and then stops (52-57 at 60-65) while its far-side points slide onto the cheek; its
# points fail altogether at ~65-70. From WARN_YAW_DEG (or a far eye narrower than NARROW_EYE_RATIO
# of the near one: 0.55-0.64 at 45 degrees, 0.40-0.46 at 55) a result comes with a warning, and
# the keypoints' yaw counts as well; from REFUSE_YAW_DEG none is returned.
WARN_YAW_DEG = 45.0
REFUSE_YAW_DEG = 80.0
NARROW_EYE_RATIO = 0.45
# A detector hit FaceMesh placed no points in, turned at least this far by its keypoints, is
# reported as a profile (renders turned 65-85 degrees either way: keypoint yaw 61-85)
PROFILE_MISS_YAW_DEG = 55.0
# After the fit: a pose past FIT_WARN_YAW_DEG with landmarks misfit by more than this fraction of
# the face size (renders: 0.006-0.009 frontal, 0.013-0.017 at 45-65 degrees where the far side's
# points slide) means the fit followed drifted landmarks; beyond POOR_FIT_ERROR any fit is suspect.
FIT_WARN_YAW_DEG = 45.0
FIT_DRIFT_ERROR = 0.013
POOR_FIT_ERROR = 0.03


@dataclass
class PoseCheck:
    yaw_deg: float            # the estimate of how far the head is turned (unsigned degrees)
    warning: Optional[str]    # set when the landmarks are outside their reliable range
    refuse: bool              # so far outside that no fit should be returned


def _side(yaw_deg: float) -> str:
    """The image side a face turned by ``yaw_deg`` (LayoutFit's sign) looks toward."""
    return "right" if yaw_deg > 0 else "left"


def check_pose(layout: LayoutFit, keypoints=None, source: str = "the photo") -> PoseCheck:
    """Whether a detection's head pose is inside the landmarker's reliable range, from FaceMesh's
    own yaw, the eye widths and (past where FaceMesh saturates) the detector keypoints' yaw."""
    yaw = abs(layout.yaw_deg)
    saturated = yaw >= WARN_YAW_DEG or layout.eye_ratio < NARROW_EYE_RATIO
    if saturated and keypoints is not None:
        # past where FaceMesh saturates the keypoints' yaw counts, but it scatters widely: on Blender
        # renders of 8 people at 47-53 degrees it read 44-83 (the nose's depth varies from person to
        # person), so it is averaged with FaceMesh's rather than trusted alone; a real profile is
        # refused when FaceMesh places no points at all (faces.py) or both agree it is one
        yaw = max(yaw, 0.5 * (yaw + keypoint_yaw_deg(keypoints)))
    if yaw >= REFUSE_YAW_DEG:
        return PoseCheck(yaw, f"The face in {source} is turned about {yaw:.0f} degrees (nearly a profile): the "
                              f"landmark detector is reliable only to ~{WARN_YAW_DEG:.0f} degrees and would put the "
                              "far eye and the mouth on the cheek. Use a photo that shows both eyes.", True)
    if saturated:
        # FaceMesh's yaw is a lower bound here (it saturates); the keypoints' reads high below ~60
        return PoseCheck(yaw, f"The face in {source} is turned at least ~{abs(layout.yaw_deg):.0f} degrees toward "
                              f"the image's {_side(layout.yaw_deg)}; beyond ~{WARN_YAW_DEG:.0f} degrees the landmarks "
                              "drift, so the head may be fitted too frontal with the far eye and mouth misplaced. "
                              "A more frontal photo is safer.", False)
    return PoseCheck(yaw, None, False)


def fitted_yaw_deg(rotation) -> float:
    """Yaw of a fitted model-to-camera rotation (OpenCV camera; + = toward the image's right)."""
    fwd = np.asarray(rotation, np.float64) @ np.array([0.0, 0.0, 1.0])     # the face's +z in the camera
    return float(np.degrees(np.arctan2(fwd[0], -fwd[2])))


def check_fit(rotation, landmark_error_rel: float, source: str = "the photo",
              pose_warned: bool = False) -> Optional[str]:
    """A warning when a finished fit shows the landmarks were outside their reliable range
    (``pose_warned``: the detection was already reported as turned too far)."""
    yaw = fitted_yaw_deg(rotation)
    if abs(yaw) >= FIT_WARN_YAW_DEG and landmark_error_rel >= FIT_DRIFT_ERROR and not pose_warned:
        return (f"The head in {source} was fitted turned {abs(yaw):.0f} degrees toward the image's {_side(yaw)}, "
                f"its landmarks off by {100 * landmark_error_rel:.1f}% of the face: at this angle the detector's "
                "far-side points drift, and the face may be turned further than fitted. Check the overlay, or use "
                "a more frontal photo.")
    if landmark_error_rel >= POOR_FIT_ERROR:
        return (f"The head model fits the landmarks in {source} poorly (off by {100 * landmark_error_rel:.1f}% of "
                "the face): the face may be partly hidden, strongly distorted, or not a face. Check the overlay.")
    return None
