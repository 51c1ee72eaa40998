"""The package as a user meets it: version, build info, the demo command."""

import importlib.metadata
import subprocess
import sys

import dtpm_fast


def test_version_written_once():
    assert dtpm_fast.__version__ == importlib.metadata.version("dtpm-fast")
    assert dtpm_fast.build_info()["version"] == dtpm_fast.__version__


def test_build_info_fields():
    info = dtpm_fast.build_info()
    assert {"version", "compiler", "openmp", "simd", "cuda"} <= set(info)
    assert isinstance(info["cuda"], bool) and isinstance(info["openmp"], bool)
    assert info["simd"]


def test_import_and_cli_start_do_not_import_the_heavy_libraries():
    """torch (~1.7 s), scipy.stats (~0.8 s) and faiss load only when a code path needs them."""
    code = (
        "import sys, dtpm_fast, dtpm_fast.cli; dtpm_fast.DTPMNonParametric\n"
        "parser = dtpm_fast.cli.build_parser()\n"
        "print(sorted(m for m in ('torch', 'scipy.stats', 'scipy.special', 'faiss') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_demo_runs_and_reports():
    out = subprocess.run(
        [sys.executable, "-m", "dtpm_fast"], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert "AUC-ROC" in out.stdout and "rows/s" in out.stdout and "top anomalies" in out.stdout
    auc = float(out.stdout.split("AUC-ROC")[1].split("%")[0])
    assert auc > 85.0  # DTE-NP on cardio: ~92-94
