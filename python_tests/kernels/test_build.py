import os
import shutil
import subprocess
import sys

import retrievalguard_fast as rgf


def test_build_info_and_has_cuda():
    info = rgf.build_info()
    assert isinstance(rgf.has_cuda(), bool)
    assert info["has_cuda"] == rgf.has_cuda()
    assert info["cpu"]["threads"] >= 1
    assert "fixed-order micro-kernel" in info["cpu"]["dot_kernel"]
    if info["cuda"]["compiled"]:
        assert "90" in info["cuda"]["architectures"]
        assert info["cuda"]["device_count"] >= 0


def test_cuda_module_is_built_where_nvcc_exists():
    """CMake builds the CUDA module whenever it finds a CUDA compiler (CI has nvcc, no GPU)."""
    if shutil.which("nvcc") or os.path.exists("/usr/local/cuda/bin/nvcc"):
        assert rgf.build_info()["cuda"]["compiled"], "nvcc is installed but the CUDA module was not built"


def test_imports_without_a_visible_gpu(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    code = "import retrievalguard_fast as r; print(r.has_cuda())"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cli_info_runs(tmp_path):
    out = subprocess.run([sys.executable, "-m", "retrievalguard_fast", "info"], cwd=tmp_path, capture_output=True,
                         text=True, check=True)
    assert '"has_cuda"' in out.stdout
