"""Builds the test-only CUDA emulation of the package's ``_cuda`` module (never installed).

The project's CUDA sources (``csrc/cuda/*.cu``, ``csrc/bind_cuda.cpp``) are compiled as C++ by
g++ against ``csrc/emulation/`` (``cuda_emulation.h`` and stand-ins for ``cuda_runtime.h``,
``cuda_fp16.h``, ``cuda_bf16.h``), with ``__CUDACC__`` and ``__CUDA_ARCH__=900`` defined for the
``.cu`` files so the device branches of ``csrc/common/`` are the ones compiled. Two mechanical
rewrites, and nothing else, are applied to a ``.cu`` file's text first, because C++ has no syntax
for them (line numbers are kept, and ``#line`` names the original file):

* ``kernel<<<grid, block, shared, stream>>>(args)`` becomes
  ``RGF_EMU_LAUNCH(kernel, grid, block, shared, stream)(args)``;
* each ``__shared__`` declaration is followed by ``RGF_EMU_SHARED_REGION(name);`` (the emulator
  fills the variable with garbage before each block).

Variants (one shared object each, built once and cached under ``RGF_EMULATION_CACHE``, default
``build/cuda-emulation`` in the repository; a change to any source rebuilds what depends on it):

* ``fibers``: ``-O2 -ffp-contract=off`` (the CPU module's floating-point rule); fibers or OS threads
  at run time.
* ``contract``: ``-ffp-contract=fast``: plain ``a*b+c`` is contracted into an FMA, as nvcc does by
  default (``-fmad=true``), so a shared header that relies on a non-fused multiply-add shows up.
* ``asan``: AddressSanitizer + UndefinedBehaviorSanitizer (run in a subprocess with libasan preloaded).
* ``tsan``: ThreadSanitizer (run with OS threads, in a subprocess with libtsan preloaded).

``mutant=`` builds a variant from edited copies of the sources (the planted bugs of
``planted_bugs.py``); the unedited objects are shared with the variant's own build.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CSRC = os.path.join(REPO, "csrc")
EMULATION = os.path.join(CSRC, "emulation")
PROBES = os.path.join(HERE, "probes.cu")

# The sources of the emulated module: the package's CUDA code, the emulator, and the harness's
# own probe kernels (called through ctypes, see emulated.py).
CUDA_SOURCES = ["csrc/cuda/noise_cuda.cu", "csrc/cuda/nn_cuda.cu"]
HOST_SOURCES = ["csrc/bind_cuda.cpp", "csrc/emulation/cuda_emulation.cpp"]

VARIANTS: Dict[str, List[str]] = {
    "fibers": ["-O2", "-ffp-contract=off"],
    "contract": ["-O2", "-ffp-contract=fast"],
    "asan": ["-O1", "-ffp-contract=off", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
             "-fno-sanitize-recover=undefined"],
    "tsan": ["-O1", "-ffp-contract=off", "-fsanitize=thread"],
}
SANITIZER_RUNTIME = {"asan": "libasan.so", "tsan": "libtsan.so"}


class BuildError(RuntimeError):
    pass


def compiler() -> Optional[str]:
    return os.environ.get("RGF_EMULATION_CXX") or shutil.which("g++")


def cache_dir() -> str:
    return os.environ.get("RGF_EMULATION_CACHE") or os.path.join(REPO, "build", "cuda-emulation")


def kernel_abi() -> int:
    with open(os.path.join(REPO, "retrievalguard_fast", "kernels", "backend.py")) as f:
        found = re.findall(r"^KERNEL_ABI = ([0-9]+) *$", f.read(), re.M)
    if len(found) != 1:
        raise BuildError("expected one line `KERNEL_ABI = <n>` in retrievalguard_fast/kernels/backend.py")
    return int(found[0])


_LAUNCH = re.compile(r"(\b[A-Za-z_]\w*(?:\s*<[^<>;()]*>)?)\s*<<<(.*?)>>>\s*\(", re.S)
_SHARED = re.compile(r"__shared__[^;{}]*?\b([A-Za-z_]\w*)\s*((?:\[[^\]]*\]\s*)*);")


def rewrite_cuda(text: str, path: str) -> str:
    """The two rewrites of the module docstring; refuses what it cannot rewrite."""
    launches = text.count("<<<")

    def launch(m):
        if "," in m.group(1):
            raise BuildError(f"{path}: kernel name {m.group(1)!r} has a comma; name it with an alias first")
        return f"RGF_EMU_LAUNCH({m.group(1)}, {m.group(2)})("

    text, n = _LAUNCH.subn(launch, text)
    if n != launches:
        raise BuildError(f"{path}: rewrote {n} of {launches} kernel launches")
    if re.search(r"extern\s+__shared__", text):
        raise BuildError(f"{path}: extern __shared__ (dynamic shared memory) is not supported by the emulation")
    shared = len(re.findall(r"\b__shared__\b", text))
    text, n = _SHARED.subn(lambda m: m.group(0) + f" RGF_EMU_SHARED_REGION({m.group(1)});", text)
    if n != shared:
        raise BuildError(f"{path}: registered {n} of {shared} __shared__ declarations")
    return f'#line 1 "{os.path.abspath(path)}"\n' + text


def _include_flags() -> List[str]:
    import pybind11

    return ["-I" + os.path.join(EMULATION, "include"), "-I" + CSRC, "-I" + os.path.join(CSRC, "cuda"),
            "-I" + pybind11.get_include(), "-I" + sysconfig.get_paths()["include"]]


def _headers_digest() -> str:
    h = hashlib.sha256()
    for root in (os.path.join(CSRC, "common"), os.path.join(CSRC, "cuda"), EMULATION):
        for dirpath, _, files in sorted(os.walk(root)):
            for name in sorted(files):
                if name.endswith((".h", ".hpp")):
                    with open(os.path.join(dirpath, name), "rb") as f:
                        h.update(name.encode() + f.read())
    return h.hexdigest()


def _run(cmd: List[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-6000:]}")


def _object(source_text: str, source_path: str, is_cuda: bool, flags: List[str], out_dir: str, headers: str) -> str:
    cxx = compiler()
    abi = kernel_abi()
    defines = [f"-DRGF_KERNEL_ABI={abi}"]
    if is_cuda:
        # nvcc includes cuda_runtime.h in every .cu file before its first line
        defines += ["-D__CUDACC__", "-D__CUDA_ARCH__=900", "-include", "cuda_runtime.h"]
    else:
        defines += ['-DRGF_CUDA_ARCHS="emulation(sm_90 limits)"', '-DRGF_CUDA_COMPILER_VERSION="emulation"']
    cmd_flags = ["-std=c++17", "-fPIC", "-fvisibility=hidden", "-march=native", "-g1", *flags, *defines]
    key = hashlib.sha256("\0".join([cxx or "", *cmd_flags, headers, source_path, source_text]).encode()).hexdigest()[:20]
    stem = os.path.splitext(os.path.basename(source_path))[0]
    obj = os.path.join(out_dir, f"{stem}-{key}.o")
    if os.path.exists(obj):
        return obj
    os.makedirs(out_dir, exist_ok=True)
    src = os.path.join(out_dir, f"{stem}-{key}.cpp")
    with open(src, "w") as f:
        f.write(rewrite_cuda(source_text, source_path) if is_cuda else f'#line 1 "{source_path}"\n' + source_text)
    tmp = obj + f".tmp{os.getpid()}"
    _run([cxx, *cmd_flags, *_include_flags(), "-c", src, "-o", tmp])
    os.replace(tmp, obj)
    return obj


def build(variant: str = "fibers", mutant: Optional[Dict[str, Dict[str, str]]] = None, mutant_name: str = "") -> str:
    """The path of the emulated module's shared object for ``variant`` (built if missing).

    ``mutant``: {repository path: {old text: new text}}: edits applied to those sources first
    (each old text must occur exactly once)."""
    if compiler() is None:
        raise BuildError("no C++ compiler (g++) found: the CUDA emulation needs one")
    flags = VARIANTS[variant]
    out_dir = os.path.join(cache_dir(), variant)
    headers = _headers_digest()
    objects = []
    for rel, is_cuda in [(p, True) for p in CUDA_SOURCES] + [(PROBES, True)] + [(p, False) for p in HOST_SOURCES]:
        path = rel if os.path.isabs(rel) else os.path.join(REPO, rel)
        with open(path) as f:
            text = f.read()
        for old, new in ((mutant or {}).get(rel) or {}).items():
            if text.count(old) != 1:
                raise BuildError(f"mutant {mutant_name}: {rel} has {text.count(old)} copies of {old!r}, expected 1")
            text = text.replace(old, new)
        objects.append(_object(text, path, is_cuda, flags, out_dir, headers))
    key = hashlib.sha256("\0".join(objects).encode()).hexdigest()[:20]
    so = os.path.join(out_dir, f"_cuda-{mutant_name or 'real'}-{key}.so")
    if not os.path.exists(so):
        tmp = so + f".tmp{os.getpid()}"
        _run([compiler(), "-shared", *[f for f in flags if f.startswith("-fsanitize")], "-o", tmp, *objects, "-lpthread"])
        os.replace(tmp, so)
    return so


def sanitizer_runtime(variant: str) -> str:
    """The sanitizer runtime to preload (LD_PRELOAD) in the process that loads a sanitized build."""
    out = subprocess.run([compiler(), f"-print-file-name={SANITIZER_RUNTIME[variant]}"], capture_output=True,
                         text=True, check=True).stdout.strip()
    if not os.path.isabs(out):
        raise BuildError(f"{compiler()} has no {SANITIZER_RUNTIME[variant]}")
    return out


if __name__ == "__main__":  # python python_tests/cuda_emulation/emulation_build.py [variant ...]
    for v in sys.argv[1:] or list(VARIANTS):
        print(v, build(v))
