"""Write the `minictr` and `minictr-runc` commands of the environment this interpreter runs in.

    VENV/bin/python -m minictr.launchers

pip writes each console script as `#!VENV/bin/python` importing the entry point. That start
runs site.py: it finds the venv, reads every .pth file in site-packages (setuptools'
distutils-precedence.pth imports a module at every start) and adds the user's site directory;
about a fifth of a container's start. The launchers written here run the interpreter as
`python3 -I -S` and give it the paths site.py would have found, fixed at install time:

- ``-I`` (isolated): no PYTHON* variables and no user site directory, so the environment of
  whoever runs the command (a batch job's PYTHONPATH) cannot change which minictr runs, and the
  script's own directory is not put on sys.path;
- ``-S``: no site.py, so no .pth file runs code;
- the shebang names the interpreter's real file (``/usr/bin/python3.11``, not the venv's
  symlink or ``python3``), the one the venv's packages were built for.

`python -m minictr` keeps working as before (it is the venv's interpreter with site.py).
"""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig

COMMANDS = {"minictr": "minictr.cli", "minictr-runc": "minictr.runc_cli"}

TEMPLATE = """\
#!{interpreter} -IS
# Written by `python -m minictr.launchers` (minictr/launchers.py says why -I -S and these paths).
import sys
sys.path += {paths!r}
from {module} import entry
entry()
"""


def import_paths() -> list[str]:
    """What site.py would append to sys.path for this environment: its site-packages, then the
    directories its .pth files name (an editable install's source tree). Lines that import code
    are left out: a launcher runs none."""
    paths: list[str] = []
    for key in ("purelib", "platlib"):
        path = sysconfig.get_paths()[key]
        if path not in paths and os.path.isdir(path):
            paths.append(path)
    for site_dir in list(paths):
        for name in sorted(os.listdir(site_dir)):
            if not name.endswith(".pth"):
                continue
            with open(os.path.join(site_dir, name), encoding="utf-8") as f:
                for line in f:
                    line = line.strip()
                    if not line or line.startswith(("#", "import ", "import\t")):
                        continue
                    path = os.path.normpath(os.path.join(site_dir, line))
                    if os.path.isdir(path) and path not in paths:
                        paths.append(path)
    return paths


def launcher_text(module: str, interpreter: str, paths: list[str]) -> str:
    return TEMPLATE.format(interpreter=interpreter, paths=paths, module=module)


def check(interpreter: str, paths: list[str]) -> None:
    """The launchers must import what they name, with exactly these paths: else fail now,
    not at the user's first run."""
    code = f"import sys; sys.path += {paths!r}; " + "; ".join(
        f"import {module}" for module in COMMANDS.values())
    res = subprocess.run([interpreter, "-I", "-S", "-c", code], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"minictr.launchers: {interpreter} -I -S cannot import minictr with "
                         f"sys.path += {paths}:\n{res.stderr.strip()}")


def write(bindir: str, interpreter: str, paths: list[str]) -> list[str]:
    """Write each command into ``bindir`` (atomically: a run that starts meanwhile sees the old
    script or the new one) and return their paths."""
    from minictr.image.files import atomic_write

    written = []
    for command, module in COMMANDS.items():
        path = os.path.join(bindir, command)
        atomic_write(path, launcher_text(module, interpreter, paths).encode(), 0o755)
        written.append(path)
    return written


def main() -> None:
    interpreter = os.path.realpath(sys.executable)
    paths = import_paths()
    check(interpreter, paths)
    bindir = sysconfig.get_paths()["scripts"]
    for path in write(bindir, interpreter, paths):
        print(f"{path}: #!{interpreter} -IS")


if __name__ == "__main__":
    main()
