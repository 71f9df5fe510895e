"""Stage order and `encode`: the encoder as one library call (stage contract: stylejax/stages/README.md).

    nets = pipeline.Nets.load(generator="ckpt/ffhq", e4e="ckpt/e4e", styleflow="ckpt/sf", lpips="ckpt/lpips")
    enc, summary = pipeline.encode(pipeline.Workdir("work/clip"), nets, config, video="clip.mp4", out="clip.enc")

Every stage writes its outputs into `WORKDIR/<stage>/` and its marker `done.json` last; chunked stages also
mark each finished chunk. A rerun with the same work directory skips finished stages and chunks; a stage
whose settings or inputs changed (its signature) is recomputed together with everything after it.

Layers (imports go down only): this module -> `stylejax.stages.*` -> `stylejax.stages.base` (networks, run
context, signatures, the chunk loop) and `stylejax.decoder` -> `stylejax.workdir`, `optimize`, `parallel`,
`nets`, `io`. The names below are re-exported here so that `pipeline.Nets`, `pipeline.Workdir`, ... stay the
one import a user needs.
"""
import dataclasses
import os
import time
from typing import Optional

import numpy as np

from stylejax.errors import PipelineError
from stylejax.io import atomic
from stylejax.stages import attributes, finetune, head_pose, invert, render, select_id
from stylejax.stages.base import STAGES, Context, Nets, default_lpips, fingerprint, make_context, signature
from stylejax.workdir import MARKER, Workdir, digest, write_aligned

__all__ = ["STAGES", "MARKER", "PipelineError", "Nets", "Workdir", "Context", "make_context", "signature",
           "fingerprint", "default_lpips", "write_aligned", "encode", "run_align", "assemble"]

# the optimising stages in order (align runs first, from the video; finetune only with finetune.steps > 0)
ENCODER_STAGES = (("invert", invert), ("select_id", select_id), ("head_pose", head_pose),
                  ("attributes", attributes), ("finetune", finetune))


def encode(workdir, nets, config, video=None, out=None, id_frame: Optional[int] = None, overwrite=False,
           log=print, align_log=None, format_version="2"):
    """Runs align (if `video`), invert, select_id, head_pose, attributes and (with `config.finetune.steps` > 0)
    finetune; writes the encoding to `out` (if given, in file format `format_version`; format 2 with
    `config.coding.motion` "delta-zstd" chooses the quantisation steps first, stages/quantise.py) and the
    fine-tuned generator's delta beside it (`io.delta.delta_path_for(out)`); returns (Encoding, summary dict
    with the metrics of `stages.render.evaluate`, bytes and per-stage times); with `config.render.report`, the
    report is written to WORKDIR/report (docs/metrics.md)."""
    times = {}
    if out is not None:
        out_real, _, delta_out = atomic.check_outputs(encode_outputs(out, delta=finetune.enabled(config)),
                                                      [video] + list(nets.paths.values()), overwrite)
    if video is not None:
        t0 = time.perf_counter()
        run_align(workdir, video, nets.generator.config.resolution, config, log=align_log or log)
        times["align"] = time.perf_counter() - t0
    elif workdir.done("align") is None:
        raise PipelineError(f"{workdir.path} has no aligned frames; pass --video")
    if id_frame is not None and id_frame >= 0:
        config.select_id.frame = int(id_frame)
    ctx = make_context(workdir, nets, config, log)
    select_id.check_forced(int(config.select_id.frame), ctx.num_frames)  # before inverting the whole video
    for name, module in ENCODER_STAGES:
        if name == "finetune" and not finetune.enabled(config):
            continue  # the optional stage: off, and not in the summary's stage times
        t0 = time.perf_counter()
        module.run(ctx)
        times[name] = time.perf_counter() - t0
    enc = assemble(ctx)
    delta, delta_info = None, None
    if enc.delta_fingerprint is not None:
        from stylejax.io.delta import load_delta

        delta = load_delta(workdir.file("finetune", "delta.safetensors"), nets.generator)
        delta_info = {"path": None, "bytes": delta.nbytes, "form": delta.form, "fingerprint": delta.fingerprint}
    coding = "float16"
    if out is not None and str(format_version) == "2" and config.coding.motion == "delta-zstd":
        from stylejax.stages import quantise

        t0 = time.perf_counter()
        tuned_for_steps = delta.apply(nets.generator) if delta is not None else nets.generator
        enc, record = quantise.compact(enc, tuned_for_steps, nets.styleflow, workdir.frames(), config.coding)
        enc = dataclasses.replace(enc, settings={**enc.settings, "motion_coding": record})
        coding, times["quantise"] = "delta-zstd", time.perf_counter() - t0
    elif config.coding.motion not in ("delta-zstd", "float16"):
        raise PipelineError(f"--config.coding.motion must be 'delta-zstd' or 'float16', got {config.coding.motion!r}")
    if out is not None:
        from stylejax.io.encoding import load_encoding, save_encoding

        if delta is not None:  # the delta first: the encoding names it
            with open(workdir.file("finetune", "delta.safetensors"), "rb") as f:
                atomic.write_bytes(delta_out, f.read())
            enc = dataclasses.replace(enc, settings={**enc.settings, "delta": delta_out})
            delta_info["path"] = delta_out
        save_encoding(out_real, enc, version=format_version)
        enc = load_encoding(out_real)  # metrics from the saved file (quantised as stored): what a user gets
    t0 = time.perf_counter()
    from stylejax.io.encoding import motion_bytes

    tuned = delta.apply(nets.generator) if delta is not None else None
    extra = {"bytes_per_frame": motion_bytes(out_real) / enc.num_frames if out is not None else enc.bytes_per_frame,
             "motion_coding": coding,
             "identity_bytes": int(enc.id_latent.nbytes + (enc.cond_src.nbytes if enc.cond_src is not None else 0)),
             "file_bytes": os.path.getsize(out_real) if out is not None else None, "delta": delta_info}
    faces = bool(config.render.face_metrics)
    if config.render.report:
        report_settings = {"encoding": out_real if out is not None else None, "workdir": workdir.path,
                           "config": config.to_dict(), "networks": nets.paths}
        _, summary = render.quality_report(enc, nets, workdir.frames(), workdir.file("report", ""), ctx.loss_size,
                                           ctx.render_chunk, faces, extra, report_settings, generator=tuned)
        summary["report"] = workdir.file("report", "report.html")
    else:
        _, summary, _ = render.evaluate(enc, nets, workdir.frames(), ctx.loss_size, chunk=ctx.render_chunk,
                                        faces=faces, generator=tuned)
        summary.update(extra)
    if delta is not None:  # what fine-tuning gained: the same encoding through the base generator
        _, base, _ = render.evaluate(enc, nets, workdir.frames(), ctx.loss_size, chunk=ctx.render_chunk, faces=False)
        summary.update(psnr_db_base=base["psnr_db"], lpips_base=base["lpips"])
    times["evaluate"] = time.perf_counter() - t0
    ident = atomic.read_json(workdir.file("select_id", "id.json"))
    summary.update(stage_seconds={k: round(v, 3) for k, v in times.items()}, frames=enc.num_frames,
                   id_frame=int(ident["frame"]),
                   id_frame_reason=ident["reason"], id_frame_expression=ident.get("expression"),
                   chunk_size=ctx.chunk, chunks=ctx.chunk_choices, steps_run=ctx.steps_run,
                   devices=int(ctx.mesh.devices.size))
    calibration = workdir.file("head_pose", "pose_calibration.json")
    if os.path.isfile(calibration):
        summary["pose_calibration"] = atomic.read_json(calibration)
    return enc, summary


def encode_outputs(out, workdir=None, delta=False):
    """encode's outputs for `atomic.check_outputs`: the encoding (--overwrite replaces only an encoding), the work
    directory (a marked one is resumed; anything else must be new or empty) and, with `delta` (fine-tuning on),
    the delta file beside the encoding (--overwrite replaces only a delta)."""
    from stylejax.io.delta import delta_path_for, is_delta_file
    from stylejax.io.encoding import is_encoding_file

    return [atomic.Output(out, "--out", is_encoding_file, "a stylejax encoding"),
            atomic.Output(workdir, "--workdir", lambda p: os.path.isfile(os.path.join(p, MARKER)),
                          "a stylejax work directory", folder=True, resume=True),
            atomic.Output(delta_path_for(out) if delta and out is not None else None, "delta file beside --out",
                          is_delta_file, "a stylejax delta")]


def run_align(workdir, video, resolution, config, log=print):
    from stylejax.align import align_video
    from stylejax.io.video import probe

    size = int(config.align.size) or int(resolution)
    sig = digest({"video": os.path.realpath(video), "mtime": os.path.getmtime(video), "size": size,
                 "config": config.align.to_dict()})
    if workdir.is_done("align", sig):
        return
    probe(video)  # a one-line error for a bad video before anything is removed
    workdir.reset("align")
    align_video(video, os.path.join(workdir.path, "align"), size=size, max_gap=int(config.align.max_gap),
                stabiliser=config.align.stabiliser, log=log)
    workdir.mark_done("align", sig, frames=int(workdir.frames().shape[0]))


def assemble(ctx):
    """The encoding from the stage outputs of the work directory."""
    from stylejax.io.encoding import Encoding

    wd, g = ctx.workdir, ctx.nets.generator
    ident = atomic.read_json(wd.file("select_id", "id.json"))
    pose = np.asarray(wd.load("attributes", "pose.npy"))
    offsets = np.asarray(wd.load("attributes", "offsets.npy"))
    chosen = atomic.read_json(wd.file("attributes", "channels.json"))
    tf = wd.transforms()
    fps = float(tf["fps"]) if "fps" in tf else 30.0
    settings = {"pose_rows": [0, 4], "id_frame": int(ident["frame"]), "networks": ctx.nets.paths,
                "aligned": wd.file("align", "frames.npy"), "noise_mode": ctx.config.render.noise_mode,
                "offset_std": chosen.get("std_definition"), "config": ctx.config.to_dict()}
    quad = np.asarray(tf["quad"], np.float32) if "quad" in tf and len(tf["quad"]) == len(pose) else None
    frame_size = tuple(int(v) for v in tf["frame_size"]) if quad is not None and "frame_size" in tf else None
    return Encoding(id_latent=np.asarray(wd.load("select_id", "id_latent.npy")), pose_deg=pose, offsets=offsets,
                    channels=tuple(chosen["channels"]), offset_scale=np.asarray(chosen["std"], np.float32), fps=fps,
                    resolution=g.config.resolution, generator_fingerprint=ctx.nets.fingerprint("generator"),
                    pose_model=f"styleflow-rk4-{int(ctx.config.head_pose.rk4_steps)}",
                    cond_src=np.asarray(wd.load("head_pose", "cond_src.npy")),
                    styleflow_fingerprint=ctx.nets.fingerprint("styleflow"), settings=settings, quad=quad,
                    frame_size=frame_size, delta_fingerprint=delta_fingerprint(ctx))


def delta_fingerprint(ctx):
    """The fingerprint of the work directory's fine-tuned delta when fine-tuning is on and finished, else None."""
    done = ctx.workdir.done("finetune") if finetune.enabled(ctx.config) else None
    return None if done is None else done.get("delta_fingerprint")
