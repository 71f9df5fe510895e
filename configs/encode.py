"""Encoder settings (`python -m stylejax.encode --config configs/encode.py --config.attributes.steps=300`).

Each stage reads its own section plus the shared top-level fields. Defaults target real FFHQ 1024 networks;
`configs/encode_tiny.py` is the small-config variant the demo and tests use.
"""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.chunk_size = 0          # frames per optimisation chunk; 0 = auto (per backend and device count)
    c.microbatch = 0          # frames per sequential group inside a step (bounds memory); 0 = the whole chunk at once
    c.dtype = "float32"       # compute dtype of the generator convs during optimisation ("bfloat16" on GPU/TPU)
    c.loss_size = 256         # images are compared at min(loss_size, generator resolution)

    c.align = ml_collections.ConfigDict()
    c.align.size = 0          # aligned crop size; 0 = the generator's resolution
    c.align.max_gap = 15
    c.align.stabiliser = "poly"

    c.invert = ml_collections.ConfigDict()
    c.invert.space = "w+"     # "w+": refine e4e's W+; "w": one W vector per frame (PTI's pivot projection)
    c.invert.steps = 100      # refinement steps after e4e (0 = e4e only)
    c.invert.lr = 0.01
    c.invert.lpips_weight = 1.0
    c.invert.l2_weight = 1.0
    c.invert.e4e_batch = 8    # frames per e4e call
    c.invert.reg = "e4e"      # keep rows reg_rows near "e4e"'s W+ of the frame, or "w_avg"; "none": free refinement
    c.invert.reg_weight = 0.01  # x mean squared distance (docs/encoder.md: measured trade-off)
    c.invert.reg_rows = (0, 4)  # W+ rows [start, stop) regularised: the rows StyleFlow's pose edit reads
    c.invert.coarse_steps = 0   # first steps synthesise only up to the loss size (losses.coarse_resolution)
    c.invert.stop_tol = 0.0     # > 0: a frame stops when its loss has not fallen by this fraction ...
    c.invert.stop_patience = 10 # ... for this many steps; a chunk stops when all its frames have
    c.invert.refine_frames = 8  # refine only the K frames select_id would pick first by e4e's loss; 0 = every frame
                                # (docs/cost.md: saves ~30 TFLOP a frame at config-f)

    c.select_id = ml_collections.ConfigDict()
    c.select_id.max_yaw_deg = 10.0    # near-frontal: |landmark yaw| and |pitch| below these
    c.select_id.max_pitch_deg = 10.0
    c.select_id.frame = -1            # force the identity frame (>= 0)
    c.select_id.prefer_neutral = True # among those: a closed mouth and open eyes first (landmarks), then the loss
    c.select_id.neutral_margin = 0.05 # expression scores (mouth opening / eye distance + eye closure) this close

    c.head_pose = ml_collections.ConfigDict()
    c.head_pose.steps = 10            # attributes refines yaw/pitch jointly afterwards (docs/cost.md: 60 cost 15 TFLOP more a frame)
    c.head_pose.lr = 1.0              # degrees per Adam step (before decay)
    c.head_pose.lpips_weight = 1.0
    c.head_pose.l2_weight = 1.0
    c.head_pose.coarse_steps = 0   # first steps synthesise only up to the loss size (losses.coarse_resolution)
    c.head_pose.stop_tol = 0.0     # > 0: a frame stops when its loss has not fallen by this fraction ...
    c.head_pose.stop_patience = 10 # ... for this many steps; a chunk stops when all its frames have
    c.head_pose.rk4_steps = 8         # StyleFlow RK4 steps (docs/networks.md: error vs N)
    c.head_pose.condition = "map"     # identity frame's StyleFlow condition: "map" (max. posterior), "mean", "zeros"
    c.head_pose.condition_data = "default"  # StyleFlow's condition statistics (configs/styleflow_condition.json)
    c.head_pose.condition_steps = 100
    c.head_pose.condition_lr = 0.1    # Adam on the logit of each entry's place in the data range
    c.head_pose.condition_probes = 0  # log-determinant: 0 = exact (w_dim JVPs); K = K fixed Hutchinson probes
    c.head_pose.landmark_init = True  # start from the landmark pose relative to the identity frame
    c.head_pose.yaw_sign = "auto"     # landmark yaw/pitch -> StyleFlow yaw/pitch: "auto" (measured on the identity's
    c.head_pose.pitch_sign = "auto"   # renders, +1 when no face is found) or a number, e.g. "-1"

    c.attributes = ml_collections.ConfigDict()
    c.attributes.steps = 100
    c.attributes.lr = 0.1          # offsets in channel std units: Adam moves ~lr a step, a budget of ~5.5 std over 100 steps
    c.attributes.refine_pose = True    # refine yaw/pitch jointly with the offsets (from the head_pose values)
    c.attributes.pose_lr = 0.2         # degrees per Adam step for that refinement
    c.attributes.coarse_steps = 0   # first steps synthesise only up to the loss size (losses.coarse_resolution)
    c.attributes.stop_tol = 0.0     # > 0: a frame stops when its loss has not fallen by this fraction ...
    c.attributes.stop_patience = 10 # ... for this many steps; a chunk stops when all its frames have
    c.attributes.channels = "default"  # "default" (configs/channels_ffhq1024.json at 1024), "auto", or a JSON file
    c.attributes.num_channels = 32
    c.attributes.lpips_weight = 1.0
    c.attributes.l2_weight = 1.0
    c.attributes.eye_weight = 2.0      # extra L2 weight on the eye regions (from the landmarks)
    c.attributes.mouth_weight = 2.0    # extra L2 weight on the mouth region
    c.attributes.id_weight = 0.0       # ArcFace identity loss (needs --arcface)
    c.attributes.auto_samples = 256    # random samples for the channel spread in --channels auto
    c.attributes.std_samples = 10000   # random samples for each channel's std: the unit of the offsets
    c.attributes.temporal_weight = 0.0       # temporal prior on the offsets: weight·Σ|Δoffsets|² (docs/encoder.md)
    c.attributes.temporal_pose_weight = 0.0  # the same for yaw and pitch (per degree²)
    c.attributes.temporal_overlap = -1       # context frames each side of a chunk under the prior; -1: the steps (exact)

    c.coding = ml_collections.ConfigDict()  # how format 2 stores the motion (docs/encoding-format.md)
    c.coding.motion = "delta-zstd"     # "delta-zstd": quantised, delta- and zstd-coded; "float16": 70 bytes a frame
    c.coding.psnr_loss_db = 0.05       # PSNR the quantisation may cost (predicted; measured in docs/encoding-format.md)
    c.coding.max_step_deg = 0.5        # coarsest step for yaw, pitch, roll
    c.coding.max_step_std = 0.25       # coarsest step for an offset (channel standard deviations)
    c.coding.key_interval = 64         # frames per independently decodable block
    c.coding.sample_frames = 4         # frames whose sensitivities and error choose the steps
    c.coding.reference_psnr_db = 60.0  # the PSNR assumed when the fit is exact (no error to compare with)

    c.finetune = ml_collections.ConfigDict()   # PTI-style generator fine-tuning (docs/finetune.md)
    c.finetune.steps = 0               # Adam updates over all frames; 0 = off (the encoding alone)
    c.finetune.lr = 3e-4               # PTI's learning rate, constant
    c.finetune.lpips_weight = 1.0      # PTI: LPIPS-Alex 1 + L2 1
    c.finetune.l2_weight = 1.0
    c.finetune.locality_weight = 0.0   # PTI's locality regulariser (PTI: 0.1 when on); 0 = off
    c.finetune.locality_alpha = 30.0   # distance of its latents from the identity latent (PTI: 30)
    c.finetune.locality_samples = 1    # latents a step (PTI: 1)
    c.finetune.save_every = 50         # steps between saves of the tuned weights and Adam state (resume)
    c.finetune.delta_rank = 0          # the delta written beside the encoding: 0 = full, R = rank-R factors
    c.finetune.delta_dtype = "float16"  # of every weight with two or more axes; stored as float16 or float32

    c.render = ml_collections.ConfigDict()
    c.render.noise_mode = "const"
    c.render.report = True         # WORKDIR/report/: metrics.csv, plots, side_by_side.mp4, report.html
    c.render.face_metrics = True   # dlib landmarks and identity per frame in the encode summary (~1 s a frame at 1024)
    return c
