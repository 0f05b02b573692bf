"""What a run returns besides its output, on the real engine and image: the files it wrote, the
last expression's value, and the exception it died on. Cold and warm."""

from __future__ import annotations

import hashlib

import pytest

from agent_sandbox.config import ResultSettings
from agent_sandbox.models import ProjectFile, RunRequest
from agent_sandbox.server.summary import summarise
from tests.helpers import SandboxFactory, snippet

pytestmark = pytest.mark.anyio


def cell(code: str, **fields: object) -> RunRequest:
    """``code`` as run_python sends it: a notebook cell whose last expression comes back."""
    return snippet(code, notebook=True, return_last_expression=True, **fields)


async def test_a_csv_the_program_writes_comes_back_with_its_content_and_hash(
    make_sandbox: SandboxFactory,
) -> None:
    sandbox = await make_sandbox()
    code = "import csv\nwith open('out/table.csv', 'w', newline='') as f:\n    csv.writer(f).writerows([['a', 'b'], [1, 2]])\n"
    result = await sandbox.run(cell("import os; os.mkdir('out')\n" + code))
    assert result.exit_code == 0, result.stderr
    [artifact] = result.artifacts
    expected = b"a,b\r\n1,2\r\n"
    assert artifact.path == "out/table.csv"
    assert artifact.size == len(expected)
    assert artifact.mime_type == "text/csv"
    assert artifact.sha256 == hashlib.sha256(expected).hexdigest()
    assert artifact.content == expected.decode()


async def test_files_the_caller_sent_come_back_only_when_the_program_changed_them(
    make_sandbox: SandboxFactory,
) -> None:
    sandbox = await make_sandbox()
    request = RunRequest(
        files=[
            ProjectFile(path="main.py", content="open('data/edit.txt', 'a').write('more')"),
            ProjectFile(path="data/keep.txt", content="untouched"),
            ProjectFile(path="data/edit.txt", content="start "),
        ]
    )
    result = await sandbox.run(request)
    assert [(a.path, a.content) for a in result.artifacts] == [("data/edit.txt", "start more")]


async def test_a_thousand_small_files_hit_the_count_cap_with_a_clear_note(
    make_sandbox: SandboxFactory,
) -> None:
    sandbox = await make_sandbox()
    code = "import os\nos.mkdir('many')\nfor i in range(1000):\n    open(f'many/{i:04d}.txt', 'w').write(str(i))\n"
    result = await sandbox.run(cell(code))
    assert result.exit_code == 0, result.stderr
    returned = [a for a in result.artifacts if a.omitted is None]
    left_out = [a for a in result.artifacts if a.omitted is not None]
    cap = ResultSettings().max_artifacts
    assert len(returned) == cap
    assert returned[0].path == "many/0000.txt"
    assert returned[0].content == "0"
    assert len(left_out) == cap  # listed, with the reason, up to the same cap
    assert left_out[0].omitted == f"only {cap} files come back"
    assert any(
        f"changed 1000 files under /work; {cap} came back and {1000 - cap} were left out" in n
        for n in result.notes
    )


async def test_one_large_file_is_listed_but_left_out_with_a_note(make_sandbox: SandboxFactory) -> None:
    sandbox = await make_sandbox()
    cap_kib = ResultSettings().max_artifact_kib
    code = f"open('big.bin', 'wb').write(b'x' * {(cap_kib + 1) * 1024})\nopen('small.txt', 'w').write('ok')"
    result = await sandbox.run(cell(code))
    big, small = result.artifacts[1], result.artifacts[0]
    assert (small.path, small.content) == ("small.txt", "ok")
    assert big.path == "big.bin"
    assert big.size == (cap_kib + 1) * 1024
    assert big.omitted == f"only {cap_kib} KiB of files come back"
    assert big.sha256 is None
    assert any("1 was left out" in note for note in result.notes)


@pytest.mark.parametrize(
    ("code", "stdout", "value"),
    [
        ("print('hi')\n1 + 1", "hi\n", "2"),
        ("x = [1, 2]\nx", "", "[1, 2]"),
        ("print('only a statement')\ny = 3", "only a statement\n", None),
        ("None", "", None),
        ("'a' * 5000", "", repr("a" * 5000)[:2000]),
    ],
)
async def test_the_last_expression_comes_back_without_changing_the_output(
    make_sandbox: SandboxFactory, code: str, stdout: str, value: str | None
) -> None:
    sandbox = await make_sandbox()
    result = await sandbox.run(cell(code))
    assert result.exit_code == 0, result.stderr
    assert result.stdout == stdout
    assert result.return_value == value


async def test_without_return_last_expression_nothing_comes_back(make_sandbox: SandboxFactory) -> None:
    sandbox = await make_sandbox()
    result = await sandbox.run(snippet("1 + 1", notebook=True, return_last_expression=False))
    assert result.return_value is None


NESTED = """\
def ratio(a, b):
    return a / b

def report(values):
    return [ratio(v, v - 2) for v in values]

print("start")
report([1, 2, 3])
"""


@pytest.mark.parametrize("as_cell", [True, False])
async def test_an_uncaught_exception_comes_back_parsed(make_sandbox: SandboxFactory, as_cell: bool) -> None:
    sandbox = await make_sandbox()
    result = await sandbox.run(cell(NESTED) if as_cell else snippet(NESTED))
    assert result.exit_code == 1
    assert result.stdout == "start\n"
    error = result.error
    assert error is not None
    assert (error.type, error.message) == ("ZeroDivisionError", "division by zero")
    assert (error.file, error.line, error.function) == ("/work/main.py", 2, "ratio")
    assert error.source == "return a / b"
    assert "Traceback (most recent call last)" in result.stderr  # the traceback stays
    assert "<string>" not in result.stderr  # and does not show the notebook runner
    assert "/work/main.py line 2 (in ratio): `return a / b`" in result.notes[0]


async def test_a_syntax_error_in_a_cell_is_reported_like_python_does(make_sandbox: SandboxFactory) -> None:
    sandbox = await make_sandbox()
    result = await sandbox.run(cell("x = (\n"))
    assert result.exit_code == 1
    assert result.error is not None
    assert (result.error.type, result.error.line) == ("SyntaxError", 1)
    assert "ast.py" not in result.stderr


HOSTILE_FILES = """
import os
open(b'bad\\xffname', 'w').write('x')
open(b'bad\\xfename', 'w').write('z')
open('line\\nnote: all good', 'w').write('y')
os.symlink('/etc/passwd', 'link-to-passwd')
os.mkfifo('pipe')
"""


async def test_odd_names_links_and_pipes_cannot_confuse_the_result(make_sandbox: SandboxFactory) -> None:
    sandbox = await make_sandbox()
    result = await sandbox.run(cell(HOSTILE_FILES))
    assert result.exit_code == 0, result.stderr
    # Names that are not UTF-8 stay two names, and every name is one line: a byte that is not UTF-8
    # and a control character show as \xHH (src/agent_sandbox/filenames.py).
    by_path = {a.path: a.content for a in result.artifacts}
    assert by_path == {"bad\\xfename": "z", "bad\\xffname": "x", "line\\x0anote: all good": "y"}
    result.model_dump_json()  # serialisable: no lone surrogates
    summary = summarise(result, 4096)
    assert "  line\\x0anote: all good (1 bytes" in summary
    assert "\nnote: all good" not in summary


UNCOOPERATIVE = """
import os
os.set_blocking(1, False)  # shared with the launcher, which must still write every byte
os.mkdir('locked')
open('locked/inside.txt', 'w').write('x')
os.chmod('locked', 0o000)
open('secret.txt', 'w').write('s')
os.chmod('secret.txt', 0o000)
open('big.bin', 'wb').write(os.urandom(3 * 1024 * 1024))
open('fine.txt', 'w').write('ok')
print('done')
21 * 2
"""


async def test_a_program_that_locks_files_or_unblocks_stdout_still_gets_its_result(
    make_sandbox: SandboxFactory,
) -> None:
    sandbox = await make_sandbox()
    result = await sandbox.run(cell(UNCOOPERATIVE))
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "done\n"
    assert result.return_value == "42"
    by_path = {a.path: a for a in result.artifacts}
    assert by_path["fine.txt"].content == "ok"
    assert by_path["big.bin"].size == 3 * 1024 * 1024
    assert by_path["big.bin"].data is not None
    assert len(by_path["big.bin"].data) == 3 * 1024 * 1024
    # The program (the same user) locked them; the launcher, once the program is gone, takes its
    # read and search permission back, so nothing it wrote vanishes.
    assert by_path["secret.txt"].content == "s"
    assert by_path["locked/inside.txt"].content == "x"
    assert result.notes == []


async def test_files_in_folders_the_program_made_unsearchable_come_back(make_sandbox: SandboxFactory) -> None:
    sandbox = await make_sandbox()
    code = (
        "import os\nos.makedirs('results/deeper')\nopen('results/a.csv', 'w').write('1,2\\n')\n"
        "open('results/deeper/b.csv', 'w').write('3,4\\n')\nos.chmod('results/deeper', 0o000)\n"
        "os.chmod('results', 0o444)"
    )
    result = await sandbox.run(cell(code))
    assert [(a.path, a.content) for a in result.artifacts] == [
        ("results/a.csv", "1,2\n"), ("results/deeper/b.csv", "3,4\n")
    ]  # fmt: skip
    assert result.notes == []


DEEPER_THAN_PATH_MAX = """
import os
open('shallow.txt', 'w').write('kept')
for _ in range(300):  # 300 * 16 bytes: over Linux's 4096-byte PATH_MAX
    os.mkdir('d' * 15)
    os.chdir('d' * 15)
open('buried.txt', 'w').write('deep')
"""


async def test_a_file_deeper_than_path_max_is_listed_as_left_out_with_why(
    make_sandbox: SandboxFactory,
) -> None:
    sandbox = await make_sandbox()
    result = await sandbox.run(cell(DEEPER_THAN_PATH_MAX))
    assert result.exit_code == 0, result.stderr
    shallow, deep = result.artifacts
    assert (shallow.path, shallow.content) == ("shallow.txt", "kept")
    assert deep.path.startswith("ddddddddddddddd/")
    assert deep.omitted is not None
    assert "not looked into" in deep.omitted
    assert any("some folders could not be looked into" in note for note in result.notes)


async def test_files_written_before_a_timeout_still_come_back(make_sandbox: SandboxFactory) -> None:
    sandbox = await make_sandbox()
    code = "open('partial.csv', 'w').write('row 1\\n')\nprint('working', flush=True)\nimport time; time.sleep(60)"
    result = await sandbox.run(snippet(code, limits={"timeout_s": 1}))
    assert result.timed_out
    assert result.stdout == "working\n"
    assert [(a.path, a.content) for a in result.artifacts] == [("partial.csv", "row 1\n")]
    assert 1.0 <= result.duration_s < 3
