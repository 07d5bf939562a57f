# Why: the project's Python developer tools (scripts/gen-vectors, scripts/record-captures) live here as
# importable modules, so ruff and mypy check them like the rest of the code; the scripts are shims.
