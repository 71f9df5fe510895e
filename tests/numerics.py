"""Other numerics on this machine, for the tests that compare optimisation results.

XLA chooses its CPU kernels by instruction set and by shape (YNNPACK, Eigen, its own loops), so the same
float32 program rounds differently on another CPU, and for another chunk size or device count on the same one.
A tolerance measured on one machine therefore fails on the next. The flags below make this machine round like
a different one:

- `--xla_cpu_experimental_ynn_fusion_type=` (empty): no YNNPACK fusions, so convolutions and reductions run
  in XLA's own loops, which sum in another order;
- `--xla_cpu_max_isa=AVX`: no AVX2, FMA or AVX-512: narrower vectors and separately rounded multiply and add.

Together they move the encoder tests' comparison runs 30-300x further apart than a chunk-size change does on
this CPU (inversions 1.7e-4 vs 4.7e-6, offsets 0.064 vs 2.4e-4: `python scripts/encode_numerics.py`), which is
what a user's CPU may do too.

`STYLEJAX_VARY_NUMERICS=1` (.ci/run's second pass over the comparison tests) runs the whole test process with
the flags. A test that runs one side of a comparison in a subprocess gives the subprocess the other setting
(`subprocess_xla_flags`), so that comparison crosses numerics in both passes.
"""
import functools
import os
import subprocess
import sys

ENV = "STYLEJAX_VARY_NUMERICS"
OTHER_CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=", "--xla_cpu_max_isa=AVX")
_OWN_XLA_FLAGS = os.environ.get("XLA_FLAGS", "")  # as the test run was started, before `vary_this_process`


def varied():
    """Whether this test process runs with OTHER_CPU_FLAGS."""
    return os.environ.get(ENV, "") not in ("", "0")


@functools.lru_cache(maxsize=None)
def accepted_flags():
    """The OTHER_CPU_FLAGS this jaxlib knows (XLA aborts on an unknown flag; the YNNPACK one is experimental),
    found by starting JAX in a subprocess (about 2 s)."""
    flags = list(OTHER_CPU_FLAGS)
    while flags:
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join([_OWN_XLA_FLAGS, *flags]).strip())
        r = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env, capture_output=True,
                           text=True, timeout=300)
        if r.returncode == 0:
            break
        unknown = [f for f in flags if f in r.stderr]  # "Unknown flag in XLA_FLAGS: --xla_..."
        if not unknown:
            raise RuntimeError(f"JAX does not start with XLA_FLAGS={env['XLA_FLAGS']!r}:\n{r.stderr[-2000:]}")
        flags = [f for f in flags if f not in unknown]
    return tuple(flags)


def with_flags(base, flags):
    return " ".join([base, *flags]).strip()


def vary_this_process():
    """Adds the accepted flags to this process's XLA_FLAGS; call before JAX starts its CPU backend."""
    os.environ["XLA_FLAGS"] = with_flags(_OWN_XLA_FLAGS, accepted_flags())


def subprocess_xla_flags():
    """XLA_FLAGS for the other side of a comparison: the other numerics than this process's."""
    return _OWN_XLA_FLAGS if varied() else with_flags(_OWN_XLA_FLAGS, accepted_flags())


def describe():
    """One line for pytest's header: what this process and its comparison subprocesses run with."""
    if not varied():
        return f"numerics: this machine's (comparison subprocesses: {ENV}=1 flags)"
    return f"numerics: {ENV}=1, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r} (comparison subprocesses: default)"
