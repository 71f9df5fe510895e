"""One runner for every command line: absl flags, one-line errors, `--json`, progress bars.

    def define(fv):                               # flags of this command (absl, own FlagValues)
        flags.DEFINE_string("out", None, "output directory", flag_values=fv)
    def main(args):                               # args: namespace of flag values (dashes -> underscores)
        ...                                       # raise UserError for anything the user can fix
        return {"message": "wrote ...", "frames": 12}   # summary: printed; with --json as the last line
    if __name__ == "__main__":
        sys.exit(cli.run("python -m stylejax.x", __doc__, define, main))

Every command gets the same behaviour: `-h/--help`; unknown or malformed flags, missing required flags and
any `UserError` (or `OSError` from the file system) print one line `error: ...` and exit with status 2;
`--json` silences progress bars and prints the summary as one JSON object on the last line of stdout.
Each command has its own `FlagValues`, so commands can be imported (and run) side by side in one process.
Ctrl-C (exit status 130) and SIGTERM (143) stop a command within about a second, even in the middle of a long
jitted computation, and leave no temporary output behind (`_Watchdog`).
"""
import contextlib
import json
import math
import os
import signal
import sys
import threading
import types

from absl import flags

from stylejax.errors import UserError


# set by `run` for the duration of a command: progress bars are off under --json or without a terminal
_STATE = {"quiet": False}


def progress(iterable=None, total=None, desc=None, unit="it"):
    """tqdm on a terminal, a plain pass-through otherwise (and always under --json)."""
    quiet = _STATE["quiet"] or not sys.stderr.isatty()
    if quiet:
        return _Quiet(iterable)
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)


class _Quiet:
    def __init__(self, iterable):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable)

    def update(self, n=1):
        pass

    def set_postfix_str(self, s):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def new_flags():
    fv = flags.FlagValues()
    flags.DEFINE_bool("json", False, "print a machine-readable JSON summary as the last line; no progress bars",
                      flag_values=fv)
    return fv


def parse(prog, fv, argv):
    """Parses argv (without the program name) into a namespace; `positional` holds the rest."""
    fv.unparse_flags()
    rest = fv([prog] + list(argv))
    ns = types.SimpleNamespace(**{name.replace("-", "_"): fv[name].value for name in fv})
    ns.positional = rest[1:]
    return ns


def require(args, *names):
    for name in names:
        value = getattr(args, name.replace("-", "_"))
        if value is None:
            raise UserError(f"--{name} is required (see --help)")
        if isinstance(value, str) and not value.strip():
            raise UserError(f"--{name} is empty (an unset shell variable?); give a path or value")


def usage(prog, doc, fv):
    lines = [f"usage: {prog} [flags]", "", (doc or "").strip(), "", "flags:"]
    for name in sorted(fv):
        flag = fv[name]
        if flag.name != name:  # short names
            continue
        default = "" if flag.default is None else f" (default: {flag.default_as_str})"
        lines.append(f"  --{name}: {flag.help}{default}")
    return "\n".join(lines)


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "shape", None) == ():
        return _json_safe(obj.item())
    return obj


def error(msg):
    msg = str(msg).strip().splitlines()[0] if str(msg).strip() else "failed"
    print(f"error: {msg}", file=sys.stderr)
    return 2


def _on_sigterm_exit():
    """SIGTERM (kill, a job scheduler's timeout) raises SystemExit in the main thread instead of ending the
    process on the spot, so `finally` blocks remove temporary outputs. Returns the previous handler."""
    try:
        return signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    except ValueError:  # not the main thread: leave signals alone
        return None


GRACE_S = 1.0  # how long the main thread gets to stop by itself after Ctrl-C or SIGTERM


def _kill_children():
    """SIGKILLs this process's child processes (Linux: /proc/self/task/*/children); elsewhere does nothing."""
    pids = set()
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children") as f:
                pids.update(int(p) for p in f.read().split())
    except OSError:
        return
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


class _Watchdog:
    """Makes Ctrl-C and SIGTERM stop a command promptly, even inside a long jitted computation.

    Python runs a signal handler only when the main thread gets back to Python code, which a running XLA
    computation (or compilation) does not do for minutes. The C-level handler still writes the signal number
    to a wakeup pipe at once; a thread reading it gives the main thread `GRACE_S` to stop by itself (its
    `finally` blocks remove the outputs' temporaries). If it has not, the thread removes every claimed
    temporary of this process (`stylejax.io.atomic.remove_live_temporaries`, which waits for an output being
    swapped into place to finish), after ending its child processes (ffmpeg), and ends the process with the
    status the main thread would have given."""

    def __init__(self):
        self.finished = threading.Event()
        self._pipe = os.pipe()
        os.set_blocking(self._pipe[1], False)
        try:
            self._previous = signal.set_wakeup_fd(self._pipe[1], warn_on_full_buffer=False)
        except ValueError:  # not the main thread
            self._close_pipe()
            self._pipe = None
            return
        threading.Thread(target=self._watch, name="stylejax-signal-watchdog", daemon=True).start()

    def _watch(self):
        try:
            self._wait_for_signal()
        finally:
            with contextlib.suppress(OSError):
                os.close(self._pipe[0])

    def _wait_for_signal(self):
        while True:
            try:
                data = os.read(self._pipe[0], 1)
            except OSError:
                return
            if not data or self.finished.is_set():
                return  # closed: the command ended
            signum = data[0]
            if signum not in (signal.SIGINT, signal.SIGTERM):
                continue
            if self.finished.wait(GRACE_S):
                return
            from stylejax.io import atomic

            _kill_children()  # ffmpeg writers/readers: none may (re)create a temporary after it is removed
            atomic.remove_live_temporaries()
            if self.finished.is_set():  # it stopped by itself meanwhile: let it finish normally
                return
            if signum == signal.SIGINT:
                os.write(2, b"error: interrupted\n")
            os._exit(130 if signum == signal.SIGINT else 128 + signum)

    def close(self):
        """The command ended: the watchdog stops (closing the write end wakes its thread with end-of-file)."""
        self.finished.set()
        if self._pipe is not None:
            signal.set_wakeup_fd(self._previous)
            with contextlib.suppress(OSError):
                os.close(self._pipe[1])

    def _close_pipe(self):
        for fd in self._pipe:
            with contextlib.suppress(OSError):
                os.close(fd)


def run(prog, doc, define, main, argv=None):
    """Parses flags, runs `main(args)`, prints its summary; returns the exit status (0 or 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    fv = new_flags()
    define(fv)
    if any(a in ("-h", "--help", "-help", "--helpfull", "--helpshort") for a in argv):
        print(usage(prog, doc, fv))
        return 0
    try:
        args = parse(prog, fv, argv)
    except flags.Error as e:
        return error(f"{e} (see {prog} --help)")
    _STATE["quiet"] = bool(args.json)
    previous = _on_sigterm_exit()
    watchdog = _Watchdog() if previous is not None else None
    try:
        summary = main(args)
    except UserError as e:
        return error(e)
    except OSError as e:  # disk full, permissions, a path that became invalid: the user's environment
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        return error(f"{where}{e.strerror or e}")
    except KeyboardInterrupt:  # the outputs' temporary files were removed on the way out
        print("error: interrupted", file=sys.stderr)
        return 130
    finally:
        _STATE["quiet"] = False
        if watchdog is not None:
            watchdog.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    summary = summary or {}
    message = summary.get("message") if isinstance(summary, dict) else None
    if message and not args.json:
        print(message)
    if args.json:
        sys.stdout.flush()
        print(json.dumps(_json_safe(summary), sort_keys=True))
    return 0


def check_positive(name, value, allow_zero=False):
    """Range checks for numeric flags, with a message that says what to do."""
    ok = value is not None and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        need = ">= 0" if allow_zero else "> 0"
        raise UserError(f"--{name} must be a finite number {need}, got {value}")
    return value
