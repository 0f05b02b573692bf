"""Starting the real server as a subprocess on a loopback port."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Logs:
    """Where a served process's stdout and stderr went: files, never pipes nobody reads (a busy
    server would block on a full pipe). Once the server stops, the text is kept and the folder
    removed, so no test leaves one behind in /tmp."""

    folder: Path
    kept: dict[str, str] = field(default_factory=dict)

    @property
    def stdout(self) -> str:
        return self._text("stdout")

    @property
    def stderr(self) -> str:
        return self._text("stderr")

    def _text(self, name: str) -> str:
        return self.kept[name] if name in self.kept else (self.folder / name).read_text()

    def keep_and_remove(self) -> None:
        self.kept = {name: (self.folder / name).read_text() for name in ("stdout", "stderr")}
        shutil.rmtree(self.folder)


@contextmanager
def serving(
    transport: str, env: dict[str, str] | None = None, argv: list[str] | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes], Logs]]:
    """Start `agent-sandbox serve` on a loopback port (or ``argv``, with ``{port}`` in it); yield
    its base URL, the process and its logs; stop it with SIGTERM."""
    port = free_port()
    default = [sys.executable, "-m", "agent_sandbox", "serve", "--transport", transport, "--port", "{port}"]
    logs = Logs(Path(tempfile.mkdtemp(prefix="agent-sandbox-serve-")))
    with (logs.folder / "stdout").open("wb") as stdout, (logs.folder / "stderr").open("wb") as stderr:
        process = subprocess.Popen(
            [arg.replace("{port}", str(port)) for arg in argv or default],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=stdout,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise AssertionError(f"the server exited early:\n{logs.stderr}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("the server did not listen within 30 s") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", process, logs
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        logs.keep_and_remove()
