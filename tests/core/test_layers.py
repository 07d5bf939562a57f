# Why: the client must install and run without the server (no NetfilterQueue, no compiler), and the
# server must not depend on the client. The import graph says whether that holds: every import in
# every module, at any depth inside functions too, is checked against the layer rules.
import ast
from pathlib import Path

from tests.conftest import ROOT

# `stealth` itself is only its version string
SHARED = ("stealth", "stealth.core", "stealth.checks", "stealth.constants", "stealth.errors",
          "stealth.profile", "stealth.store", "stealth.cliutil")
SHARED_THIRD_PARTY = ("click", "tomli_w")


def _module_name(path: Path) -> str:
    base = ROOT / "client" if path.is_relative_to(ROOT / "client") else ROOT
    rel = path.relative_to(base)
    parts = list(rel.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or (p != "stealth" and name.startswith(p + ".")) for p in prefixes)


def _modules(*dirs: str) -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for d in dirs for p in sorted((ROOT / d).rglob("*.py"))}


def test_the_client_imports_only_the_shared_layer() -> None:
    for module, imports in _modules("client/stealth_connect").items():
        ours = {i for i in imports if i.split(".")[0] == "stealth"}
        assert all(_within(i, SHARED) for i in ours), (module, ours)


def test_the_server_never_imports_the_client() -> None:
    for module, imports in _modules("stealth").items():
        assert not {i for i in imports if i.split(".")[0] in ("stealth_connect", "stealth_cli")}, module


def test_the_shared_layer_needs_only_the_standard_library_click_and_tomli_w() -> None:
    import sys

    for module, imports in _modules("stealth").items():
        if not _within(module, SHARED):
            continue
        for name in imports:
            top = name.split(".")[0]
            assert (_within(name, SHARED) or top in sys.stdlib_module_names or top in SHARED_THIRD_PARTY
                    ), (module, name)
