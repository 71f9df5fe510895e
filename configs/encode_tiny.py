"""Tiny-network settings for the CPU demo and tests: small images, fewer steps, LPIPS at the generator size."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import encode  # noqa: E402


def get_config():
    c = encode.get_config()
    c.chunk_size = 16       # the demo clip in one chunk
    c.microbatch = 16
    c.invert.space = "w"      # the demo's identity is a W latent: W projection recovers it exactly
    c.invert.steps = 200
    c.invert.lr = 0.1
    c.invert.lpips_weight = 0.1  # LPIPS-Alex sees little at 32 px; L2 pins the exact projection
    c.head_pose.steps = 50
    c.head_pose.lr = 1.0
    c.head_pose.condition = "zeros"
    c.select_id.max_yaw_deg = 2.0
    c.select_id.max_pitch_deg = 2.0
    c.attributes.steps = 100
    c.attributes.lr = 0.1
    c.attributes.eye_weight = 0.0
    c.attributes.mouth_weight = 0.0
    return c
