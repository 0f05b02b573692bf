"""The notebook runner's Python state, cell after cell, run on the host's Python (fast; the real
engine's tests are tests/integration/test_cell_state.py): each cell is a fresh process, as each
sandbox is, given the previous cell's state bytes the way the launcher gives them."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent_sandbox.engine.launch import NOTEBOOK_RUNNER
from agent_sandbox.engine.protocol import NOTEBOOK_STATE


@dataclass
class Cell:
    exit_code: int
    stdout: str
    stderr: str
    report: dict[str, Any] | None
    state: bytes


def start_runner(fields: list[str], pass_fds: tuple[int, ...], **popen: Any) -> subprocess.Popen[bytes]:
    """Start the real runner as the launcher does, its parameters (``fields``) on a pipe."""
    params_read, params_write = os.pipe()
    command = [sys.executable, "-P", "-c", NOTEBOOK_RUNNER, str(params_read)]
    process = subprocess.Popen(command, pass_fds=(*pass_fds, params_read), **popen)
    os.close(params_read)
    with os.fdopen(params_write, "wb") as params:
        params.write("\0".join(fields).encode())
    return process


def run_cell(folder: Path, code: str, saved: bytes = b"", max_bytes: int = 1 << 20) -> Cell:
    """Run ``code`` as a cell through the real runner, with ``saved`` as the workspace's state."""
    script = folder / "main.py"
    script.write_text(code)
    report_read, report_write = os.pipe()
    state_in, to_cell = os.pipe()
    from_cell, state_out = os.pipe()
    process = start_runner(
        [str(report_write), "0", f"{state_in},{state_out},{max_bytes}", NOTEBOOK_STATE, "", "0", str(script)],
        cwd=folder,
        pass_fds=(report_write, state_in, state_out),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    for fd in (report_write, state_in, state_out):
        os.close(fd)

    def give() -> None:
        with os.fdopen(to_cell, "wb") as out:
            out.write(saved)

    written: list[bytes] = []

    def take() -> None:
        with os.fdopen(from_cell, "rb") as source:
            written.append(source.read())

    threads = [threading.Thread(target=give), threading.Thread(target=take)]
    for thread in threads:
        thread.start()
    stdout, stderr = process.communicate(timeout=60)
    for thread in threads:
        thread.join()
    os.close(report_read)
    state, newline, line = written[0].rpartition(b"\n")  # the report is the last line
    return Cell(
        process.returncode,
        stdout.decode(),
        stderr.decode(),
        json.loads(line) if newline else None,
        state,
    )


def cells(folder: Path, *codes: str) -> list[Cell]:
    """Run ``codes`` one after another, each starting from the state the one before kept."""
    ran, saved = [], b""
    for code in codes:
        cell = run_cell(folder, code, saved)
        assert cell.report is not None, cell.stderr
        ran.append(cell)
        saved = cell.state
    return ran


def test_functions_classes_instances_and_lambdas_come_back_working(tmp_path: Path) -> None:
    first, second = cells(
        tmp_path,
        "import json as j\nfrom math import sqrt\ncounter = 10\n"
        "def bump(): return counter + 1\n"
        "class Point:\n    def __init__(self, x): self.x = x\n    def twice(self): return 2 * self.x\n"
        "p = Point(4)\nsame = [p, p]\nscale = lambda v: v * counter\n"
        "def make_adder(n):\n    def add(v): return v + n\n    return add\nadd3 = make_adder(3)\n",
        "counter = 100\n"
        "print(bump(), scale(2), p.twice(), isinstance(p, Point), same[0] is p, add3(1),"
        " j.dumps([1]), sqrt(16))\n",
    )
    assert first.report is not None
    assert set(first.report["kept"]) == {
        "j",
        "sqrt",
        "counter",
        "bump",
        "Point",
        "p",
        "same",
        "scale",
        "make_adder",
        "add3",
    }
    assert first.report["dropped"] == []
    # The restored function reads the live namespace: counter is 100 now, not the 10 it was saved with.
    assert second.stdout.split() == ["101", "200", "8", "True", "True", "4", "[1]", "4.0"]


def test_what_cannot_be_carried_is_dropped_by_name_with_a_way_to_recreate_it(tmp_path: Path) -> None:
    (cell,) = cells(
        tmp_path,
        "import threading, socket\n"
        "numbers = (i for i in range(3))\nhandle = open('notes.txt', 'w')\nguard = threading.Lock()\n"
        "worker = threading.Thread(target=print)\nconnection = socket.socket()\n"
        "class Stubborn:\n    def __reduce__(self): raise TypeError('not me')\n"
        "stubborn = Stubborn()\nkept = {'a': 1}\n",
    )
    assert cell.report is not None
    why = dict(cell.report["dropped"])
    assert set(why) == {"numbers", "handle", "guard", "worker", "connection", "stubborn"}
    assert "generator" in why["numbers"]
    assert "open file" in why["handle"]
    assert "lock" in why["guard"]
    assert "thread" in why["worker"]
    assert "socket" in why["connection"]
    assert "cannot be pickled (TypeError: not me)" in why["stubborn"]
    assert {"kept", "Stubborn", "threading", "socket"} <= set(cell.report["kept"])


def test_a_name_too_big_for_the_cap_is_dropped_and_the_rest_kept(tmp_path: Path) -> None:
    cell = run_cell(tmp_path, "big = b'x' * 300_000\nsmall = [1, 2, 3]\n", max_bytes=100_000)
    assert cell.report is not None
    assert cell.report["kept"] == ["small"]
    ((name, why),) = cell.report["dropped"]
    assert name == "big"
    assert "too big to keep" in why
    assert "97 KiB" in why
    assert len(cell.state) < 100_000


def test_a_failed_cell_keeps_what_it_defined_and_sys_exit_saves_too(tmp_path: Path) -> None:
    failed = run_cell(tmp_path, "before = 1\nraise ValueError('boom')\nafter = 2\n")
    assert failed.exit_code == 1
    assert "ValueError: boom" in failed.stderr
    assert failed.report is not None
    assert failed.report["kept"] == ["before"]
    exited = run_cell(tmp_path, "import sys\nmore = before + 1\nsys.exit(3)\n", failed.state)
    assert exited.exit_code == 3
    assert exited.report is not None
    assert set(exited.report["kept"]) == {"before", "more", "sys"}


def test_os_exit_leaves_no_state_behind(tmp_path: Path) -> None:
    cell = run_cell(tmp_path, "import os\nx = 1\nos._exit(0)\n")
    assert cell.report is None
    assert cell.state == b""


def test_a_name_that_cannot_be_restored_is_named_and_carried_for_a_later_run(tmp_path: Path) -> None:
    (tmp_path / "shapes.py").write_text("class Square:\n    side = 2\n")
    first = run_cell(
        tmp_path, "import shapes\nsq = shapes.Square()\nother = 5\ndef helper():\n    return other\n"
    )
    (tmp_path / "shapes.py").unlink()  # as under a profile that lacks the package
    second = run_cell(tmp_path, "print(helper())\n", first.state)
    assert second.stdout.strip() == "5"
    assert second.report is not None
    not_restored = dict(second.report["not_restored"])
    assert not_restored["shapes"] == "needs the module 'shapes', which this image does not have"
    assert "sq" in not_restored
    # Kept as saved: a later cell where the module is back gets them again.
    assert {"shapes", "sq", "other"} <= set(second.report["kept"])
    (tmp_path / "shapes.py").write_text("class Square:\n    side = 2\n")
    third = run_cell(tmp_path, "print(sq.side, type(sq) is shapes.Square)\n", second.state)
    assert third.stdout.split() == ["2", "True"]


def test_a_name_the_cell_defines_anew_replaces_the_carried_one(tmp_path: Path) -> None:
    (tmp_path / "shapes.py").write_text("VALUE = 1\n")
    first = run_cell(tmp_path, "import shapes\n")
    (tmp_path / "shapes.py").unlink()
    second = run_cell(tmp_path, "shapes = 'a string now'\n", first.state)
    assert second.report is not None
    assert second.report["kept"] == ["shapes"]
    third = run_cell(tmp_path, "print(shapes)\n", second.state)
    assert third.stdout.strip() == "a string now"


def test_an_unreadable_state_is_reported_and_the_cell_still_runs(tmp_path: Path) -> None:
    cell = run_cell(tmp_path, "print('ran')\nfresh = 1\n", b"not a pickle at all")
    assert cell.stdout.strip() == "ran"
    assert cell.report is not None
    ((_name, why),) = cell.report["not_restored"]
    assert "cannot be read" in why
    assert cell.report["kept"] == ["fresh"]


def test_a_crafted_state_runs_its_code_in_the_cell_process_only(tmp_path: Path) -> None:
    """What a state can do when unpickled, it does in the process that restores it: the
    sandbox's runner. (The integration test proves the server never unpickles one.)"""
    marker = tmp_path / "unpickled-here"

    class Crafted:
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(marker), "w"))

    cell = run_cell(tmp_path, f"import os\nprint(os.path.exists({str(marker)!r}))\n", pickle.dumps(Crafted()))
    assert cell.stdout.strip() == "True"


def test_the_programs_own_dill_module_is_not_the_one_that_saves(tmp_path: Path) -> None:
    (tmp_path / "dill.py").write_text("raise SystemExit('the program dill was imported')\n")
    cell = run_cell(tmp_path, "value = 42\n")
    assert cell.report is not None, cell.stderr
    assert cell.report["kept"] == ["value"]


@pytest.mark.parametrize("code", ["x = 1\ndef (:\n", ""])
def test_a_cell_that_does_not_compile_keeps_the_restored_names(tmp_path: Path, code: str) -> None:
    first = run_cell(tmp_path, "kept_before = 7\n")
    second = run_cell(tmp_path, code, first.state)
    assert second.report is not None
    assert second.report["kept"] == ["kept_before"]


def test_a_module_of_the_programs_named_like_the_states_imports_is_still_its_own(tmp_path: Path) -> None:
    (tmp_path / "types.py").write_text("Point = tuple\n")
    (tmp_path / "pickle.py").write_text("MINE = True\n")
    first = run_cell(tmp_path, "value = [1]\n")
    second = run_cell(tmp_path, "import types, pickle\nprint(types.Point, pickle.MINE, value)\n", first.state)
    assert second.stdout.strip() == "<class 'tuple'> True [1]", second.stderr
    assert second.report is not None
    assert {"value", "types", "pickle"} <= set(second.report["kept"])
    third = run_cell(tmp_path, "print(types.Point, pickle.MINE, value)\n", second.state)
    assert third.stdout.strip() == "<class 'tuple'> True [1]", third.stderr


def test_a_name_saved_under_another_python_says_so(tmp_path: Path) -> None:
    first = run_cell(tmp_path, "def f():\n    return 1\n")
    state = pickle.loads(first.state)
    state["python"] = [3, 99, 0]
    (names, kind, payload) = state["entries"][0]
    state["entries"][0] = (names, kind, payload[:-5])  # as code another Python cannot load
    second = run_cell(tmp_path, "print('ran')\n", pickle.dumps(state))
    assert second.stdout.strip() == "ran"
    assert second.report is not None
    ((name, why),) = second.report["not_restored"]
    assert name == "f"
    assert why.endswith(
        f"(saved under Python 3.99.0; this image runs {'.'.join(map(str, sys.version_info[:3]))})"
    )


def test_code_saved_under_another_minor_version_is_not_loaded_and_data_still_is(tmp_path: Path) -> None:
    """A function dill saved under 3.11 crashes 3.13 when called (the bytecode differs): the
    runner does not load it, says why, and keeps it for a call on the Python that saved it."""
    first = run_cell(tmp_path, "def f():\n    return 1\n\nsquares = [1, 4, 9]\n")
    state = pickle.loads(first.state)
    other = [3, sys.version_info[1] + 2, 0]
    state["python"] = other
    second = run_cell(tmp_path, "print(squares)\n", pickle.dumps(state))
    assert second.stdout.strip() == "[1, 4, 9]"
    assert second.report is not None
    ((name, why),) = second.report["not_restored"]
    assert name == "f"
    assert why.startswith(f"its code is Python 3.{other[1]}'s, which this Python cannot run (saved under")
    assert second.report["kept"] == ["squares", "f"]  # carried for the Python that saved it
    carried = pickle.loads(second.state)
    assert carried["python"] == list(sys.version_info[:3])  # this run's: the entry says its own
    ((names, kind, payload),) = [entry for entry in carried["entries"] if entry[0] == ("f",)]
    assert kind == f"dill:3.{other[1]}"
    third = run_cell(tmp_path, "print(squares)\n", second.state)
    assert third.report is not None
    assert [name for name, _ in third.report["not_restored"]] == ["f"]  # still not loaded here
    here = f"dill:{sys.version_info[0]}.{sys.version_info[1]}"
    carried["entries"] = [(names, here, payload)]
    fourth = run_cell(tmp_path, "print(f())\n", pickle.dumps(carried))
    assert fourth.stdout.strip() == "1"  # on the Python whose code it is, it runs


def test_names_that_share_an_object_still_share_it_after_a_restore(tmp_path: Path) -> None:
    first, second = cells(
        tmp_path,
        "months = [1, 2]\nsales = {'north': months}\n"
        "class Region:\n    def __init__(self, m): self.m = m\nregion = Region(months)\nalone = [9]\n",
        "sales['north'].append(3)\nprint(region.m, months, region.m is sales['north'], alone)\n",
    )
    assert second.stdout.strip() == "[1, 2, 3] [1, 2, 3] True [9]"
    assert first.report is not None
    assert set(first.report["kept"]) == {"Region", "months", "sales", "region", "alone"}


def test_a_group_that_cannot_be_restored_names_each_member_and_spares_the_rest(tmp_path: Path) -> None:
    (tmp_path / "shapes.py").write_text("class Square:\n    pass\n")
    first = run_cell(
        tmp_path,
        "import shapes\nsq = shapes.Square()\nboth = [shapes.Square()]\nalso = {'s': both[0]}\n"
        "holder = [sq]\nfree = 1\n",
    )
    (tmp_path / "shapes.py").unlink()
    second = run_cell(tmp_path, "print(free)\n", first.state)
    assert second.stdout.strip() == "1"
    assert second.report is not None
    why = dict(second.report["not_restored"])
    assert set(why) == {"shapes", "sq", "both", "also", "holder"}
    assert why["both"].endswith("(saved together with also, which share objects with it)")
    assert why["holder"].endswith("(saved together with sq, which share objects with it)")


def test_a_name_that_refers_to_a_dropped_one_is_dropped_saying_so(tmp_path: Path) -> None:
    code = "def first(d=b'x' * 60_000):\n    return d\ndef second(d=b'y' * 60_000):\n    return d\nholder = [second]\n"
    cell = run_cell(tmp_path, code, max_bytes=100_000)
    assert cell.report is not None
    why = dict(cell.report["dropped"])
    assert why["second"].startswith("too big to keep: 58 KiB")  # it fits alone, not after first
    assert why["holder"] == "it refers to 'second', which was dropped"
    assert cell.report["kept"] == ["first"]


def test_plain_data_goes_through_the_c_pickler_and_what_the_cell_defined_through_dill(tmp_path: Path) -> None:
    """dill's pure-Python pickler takes 20 times as long on plain data (100,000 dicts: 0.9 s
    against 0.04 s in the image): it is kept for what only it can pickle."""
    cell = run_cell(
        tmp_path,
        "rows = [{'id': i} for i in range(3)]\nclass Point:\n    pass\np = Point()\n"
        "def f():\n    return 1\nsquare = lambda v: v * v\nhandlers = {'sq': lambda v: v * v}\n",
    )
    kinds = {names[0]: kind for names, kind, _ in pickle.loads(cell.state)["entries"]}
    assert kinds == {
        "Point": "dill",
        "f": "dill",
        "square": "dill",
        "rows": "pickle",
        "p": "pickle",
        "handlers": "dill",
    }


def test_an_image_without_dill_runs_the_cell_and_says_to_rebuild(tmp_path: Path) -> None:
    """An image built before states were kept: the cell still runs, the state is not saved."""
    script = tmp_path / "main.py"
    script.write_text("print('ran')\n")
    state_in, to_cell = os.pipe()
    from_cell, state_out = os.pipe()
    os.close(to_cell)
    fields = ["2", "0", f"{state_in},{state_out},1000", "import dill_that_is_not_there", "", "0", str(script)]
    process = start_runner(
        fields, cwd=tmp_path, pass_fds=(state_in, state_out), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    stdout, _ = process.communicate(timeout=60)
    os.close(state_out)
    with os.fdopen(from_cell, "rb") as source:
        written = source.read()
    assert stdout == b"ran\n"
    assert json.loads(written.rpartition(b"\n")[2]) == {
        "error": "this image cannot keep Python state (ModuleNotFoundError): rebuild it (agent-sandbox image build)"
    }


def test_a_process_the_cell_forked_never_saves(tmp_path: Path) -> None:
    _, second = cells(
        tmp_path,
        "import os\nx = 'parent'\npid = os.fork()\nif pid == 0:\n    x = 'child'\nelse:\n    os.waitpid(pid, 0)\n",
        "print(x)\n",
    )
    assert second.stdout.strip() == "parent"


@pytest.mark.parametrize(("code", "exit_code"), [("", 0), ("import sys\nsys.exit(3)\n", 3)])
def test_a_cell_that_closes_the_states_descriptor_keeps_its_exit_code(
    tmp_path: Path, code: str, exit_code: int
) -> None:
    cell = run_cell(
        tmp_path,
        "import os\nx = 1\nos.closerange(3, 1024)\nos.open('other.txt', os.O_CREAT | os.O_WRONLY)\n" + code,
    )
    assert cell.exit_code == exit_code, cell.stderr
    assert cell.report is None
    assert (tmp_path / "other.txt").read_bytes() == b""  # the state never went into the cell's file


def test_ten_thousand_names_fit_a_report_that_says_how_many(tmp_path: Path) -> None:
    cell = run_cell(tmp_path, "for i in range(10_000):\n    globals()[f'name_number_{i}'] = i\n")
    assert cell.report is not None
    assert cell.report["kept_count"] == 10_001  # and i
    assert 0 < len(cell.report["kept"]) < 10_001
    assert cell.report["bytes"] == len(cell.state)


def test_the_state_stays_within_its_cap_framing_included(tmp_path: Path) -> None:
    code = "for i in range(2000):\n    globals()[f'n{i}'] = b'x' * 40\n"
    cell = run_cell(tmp_path, code, max_bytes=140_000)
    assert cell.report is not None
    assert len(cell.state) <= 140_000
    assert cell.report["dropped_count"] > 0


def test_sharing_holds_through_a_name_in_between(tmp_path: Path) -> None:
    _, second = cells(
        tmp_path,
        "from types import SimpleNamespace\nL = []\nx = {'k': L}\nc = SimpleNamespace()\ny = [L, c]\ndel L\na = None\n",
        "x['k'].append(1)\nprint(y[0], y[1] is c, a)\n",
    )
    assert second.stdout.strip() == "[1] True None"
