"""scripts/serve.py refuses bad start-up input in one line: a port in use, a missing [serve] extra."""

from __future__ import annotations

import socket
from pathlib import Path

from conftest import run_script


def one_line_error(result) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_a_port_in_use_is_named_before_the_model_loads(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        line = one_line_error(run_script("serve.py", str(tmp_path / "any_run"), "--port", port))
    assert f"--port {port}" in line and "already in use" in line and "--port (0 picks a free one)" in line


def test_without_the_serve_extra_the_error_names_the_pip_command(tmp_path: Path) -> None:
    missing = tmp_path / "hide" / "fastapi"
    missing.mkdir(parents=True)
    (missing / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'fastapi'\", name='fastapi')\n"
    )
    result = run_script("serve.py", str(tmp_path), env={"PYTHONPATH": str(missing.parent)})
    line = one_line_error(result)
    assert "fastapi is not installed" in line and "pip install -e .[serve]" in line
