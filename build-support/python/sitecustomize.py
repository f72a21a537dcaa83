"""Routes torch-sys's `python3 -c "import torch..."` to the project's venv.

Cargo puts this folder on PYTHONPATH (.cargo/config.toml) for build scripts only.
A Python that cannot import torch re-executes itself as the venv's Python
(GCL_VENV, default <repo>/.venv); with no venv, it fails with the command to run.
"""
import importlib.util
import os
import sys

if importlib.util.find_spec("torch") is None:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    venv = os.environ.get("GCL_VENV") or os.path.join(root, ".venv")
    py = os.path.join(venv, "bin", "python")
    if os.path.exists(py) and os.path.realpath(sys.prefix) != os.path.realpath(venv):
        os.execv(py, [py] + sys.orig_argv[1:])
    sys.stderr.write(
        "\n\ngcl: libtorch (torch==2.11.0) was not found: no venv at %s.\n"
        "gcl: run `bash scripts/setup.sh` first (it installs the venv), then build again.\n\n" % venv
    )
    sys.stderr.flush()
    os._exit(1)
