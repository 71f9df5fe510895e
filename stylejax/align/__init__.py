"""Stage 1: FFHQ face alignment of a video, temporal stabilisation, roll, paste-back.

`geometry` (crop frame, quads, roll, smoothing), `warp` (crop rendering, masks, paste-back), `landmarks`
(dlib detection, refinement and tracking) and `stage` (the streaming stage and its CLI,
`python -m stylejax.align`). The names below are the stage's public API.
"""
from stylejax.align.geometry import (AlignError, crop_frame, eye_distance, fill_gaps, jitter, level_axis,
                                     quad_affine, quad_from_frame, roll_degrees, smooth,
                                     transforms_from_landmarks, y_axis)
from stylejax.align.stabilise import Stabiliser, make_stabiliser
from stylejax.align.stage import align_video, is_aligned_dir, main, paste_video, track_landmarks
from stylejax.align.warp import face_mask, paste_back, render_crop
from stylejax.io.transforms import load_transforms
