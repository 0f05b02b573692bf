"""Reading the exception a program died on from real tracebacks (made by the host's Python)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent_sandbox.tracebacks import parse_error


def stderr_of(tmp_path: Path, source: str, name: str = "main.py") -> str:
    """Run ``source`` as /work-like ``tmp_path/work/NAME`` and return its stderr."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    (work / name).write_text(source)
    done = subprocess.run([sys.executable, name], cwd=work, capture_output=True, text=True, timeout=30)
    return done.stderr.replace(str(work) + "/", "/work/")


def test_the_frame_in_the_programs_own_code_is_named(tmp_path: Path) -> None:
    source = "def divide(a, b):\n    return a / b\n\ndef main():\n    return divide(1, 0)\n\nmain()\n"
    error = parse_error(stderr_of(tmp_path, source))
    assert error is not None
    assert (error.type, error.message) == ("ZeroDivisionError", "division by zero")
    assert (error.file, error.line, error.function) == ("/work/main.py", 2, "divide")
    assert error.source == "return a / b"


def test_a_library_frame_is_passed_over_for_the_programs_line(tmp_path: Path) -> None:
    error = parse_error(stderr_of(tmp_path, "import json\n\njson.loads('{nope')\n"))
    assert error is not None
    assert error.type == "json.decoder.JSONDecodeError"
    assert error.message.startswith("Expecting property name")
    assert (error.file, error.line) == ("/work/main.py", 3)


def test_the_last_of_chained_exceptions_is_the_one_that_ended_the_program(tmp_path: Path) -> None:
    source = "try:\n    {}['k']\nexcept KeyError:\n    raise ValueError('bad\\nsecond line')\n"
    error = parse_error(stderr_of(tmp_path, source))
    assert error is not None
    assert error.type == "ValueError"
    assert error.message == "bad\nsecond line"
    assert error.line == 4


def test_a_syntax_error_has_its_position(tmp_path: Path) -> None:
    error = parse_error(stderr_of(tmp_path, "x = 1\ny = (\n"))
    assert error is not None
    assert error.type == "SyntaxError"
    assert (error.file, error.line) == ("/work/main.py", 2)


def test_an_exception_without_a_message(tmp_path: Path) -> None:
    error = parse_error(stderr_of(tmp_path, "raise KeyboardInterrupt\n"))
    assert error is not None
    assert (error.type, error.message) == ("KeyboardInterrupt", "")


@pytest.mark.parametrize("stderr", ["", "some warning\n", "Traceback (most recent call last):\n  garbage\n"])
def test_no_traceback_no_error(stderr: str) -> None:
    assert parse_error(stderr) is None
