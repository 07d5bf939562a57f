# Why: stealth-connect's start-up is timed as users get it: a non-editable `pip install` of this tree into
# a fresh venv of the system python. The dev venv's editable install costs ~12 ms of import hooks that no
# user pays, and its interpreter starts slower. Building takes a while, so the venv lives in the bench's
# build directory (git-ignored) and is rebuilt only when the files the install is built from change.
import hashlib
import shutil
import subprocess
import time
from typing import Any

from benchmarks.common import BUILD, ROOT, note_command
from scripts.lib.stealthlab import CLIENT_TREE, SYSTEM_PYTHON, install_client

VENV = BUILD / "client-venv"
STAMP = VENV / "tree-sha256"  # the hash of the tree the venv was built from


def tree_files() -> list[str]:
    """The files `pip install .` builds from (tracked, or new and not ignored), as in the work tree."""
    argv = ["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "--", *CLIENT_TREE]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return sorted(p for p in out.splitlines() if (ROOT / p).is_file())


def tree_hash(files: list[str]) -> str:
    h = hashlib.sha256()
    for rel in files:
        h.update(rel.encode() + b"\0" + (ROOT / rel).read_bytes() + b"\0")
    return h.hexdigest()


def client_venv() -> dict[str, Any]:
    """The client venv (built now if the tree changed since): its stealth-connect and python, the tree's
    hash, whether it was rebuilt, and the commands that built it."""
    files = tree_files()
    digest = tree_hash(files)
    src = BUILD / "client-src"
    commands = [f"{SYSTEM_PYTHON} -m venv {VENV}",
                f"{VENV}/bin/pip install {src}  # a copy of: {' '.join(CLIENT_TREE)}"]
    t = time.monotonic()
    rebuilt = not STAMP.exists() or STAMP.read_text().strip() != digest
    if rebuilt:
        shutil.rmtree(VENV, ignore_errors=True)
        shutil.rmtree(src, ignore_errors=True)
        for rel in files:
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
        install_client(src, VENV)
        STAMP.write_text(digest + "\n")
    for c in commands:
        note_command([c])
    return {"venv": str(VENV), "stealth_connect": str(VENV / "bin" / "stealth-connect"),
            "python": str(VENV / "bin" / "python"), "base_python": SYSTEM_PYTHON, "tree_sha256": digest,
            "files": len(files), "rebuilt": rebuilt, "seconds": round(time.monotonic() - t, 1),
            "commands": commands}
