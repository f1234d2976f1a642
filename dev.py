#!/usr/bin/env python3
"""Set up and run Kroma with nothing but Python 3.11+.

    python3 dev.py serve     # create .venv, install, start the server on 127.0.0.1:8788
                             # (a demo project is created on a fresh data folder)
    python3 dev.py test      # create .venv, install, run the whole test suite
    python3 dev.py <args>    # anything else is passed to the `kroma` CLI inside the venv

The venv is reused while pyproject.toml is unchanged.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".kroma-installed"


def ensure_venv() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 (dev.py may be started by an older python3)
        sys.exit("Kroma needs Python 3.11 or newer")
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    if not (BIN / "python").exists():
        print("dev.py: creating .venv", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("dev.py: installing kroma and its dependencies into .venv", flush=True)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "-e", f"{ROOT}[dev]"], check=True)
    STAMP.write_text(wanted)


def main(argv: list[str]) -> int:
    ensure_venv()
    os.chdir(ROOT)
    command = argv[0] if argv else "serve"
    if command == "test":
        return subprocess.call([str(BIN / "python"), "-m", "pytest", *argv[1:]])
    if command == "lint":
        return subprocess.call([str(BIN / "ruff"), "check", "."])
    if command == "serve":  # the set-up command: a demo project on a fresh data folder
        return subprocess.call([str(BIN / "kroma"), "serve", "--demo", *argv[1:]])
    return subprocess.call([str(BIN / "kroma"), *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
