"""One job's conversation with its launcher, whatever carries the bytes.

A backend starts the launcher with the session's ``payload`` on its stdin, feeds it the output
as it comes (``feed(stream, bytes)``), asks it now and then what is ``due`` (resume a launcher
the program stopped, or kill the sandbox), and at the end turns it into an ``Outcome``, asking
the backend how the sandbox ended only where the launcher's end report does not say. The session
owns the launcher protocol's parsers (engine/protocol.py), the output caps and the deadlines:

- the install, if any, has ``install_timeout_s``; the program's limit starts after it;
- the launcher stops the program at its limit itself, so the host waits that limit plus a grace
  (and time to unpack the files) for the files block; past it, the launcher may have been stopped
  by the program (SIGSTOP, same user): it is resumed once and given the grace again, then killed;
- once the files block has begun, the launcher is plainly running: it gets time to send it all;
- after a kill, output still in flight is read for a moment.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from agent_sandbox.engine.base import LIMITS, STDERR, STDOUT, OutputCallback
from agent_sandbox.engine.protocol import (
    PREVIEW_WAIT_S,
    SNAPSHOT_PREFIX,
    STATE_PREFIX,
    STATE_REPORT_BYTES,
    EndOfJob,
    FilesBlock,
    InstallDone,
    SoFarLines,
    end_report,
    install_outcome,
    job_header,
    measured_so_far,
)
from agent_sandbox.engine.spec import Measured, Outcome, RunSpec

log = logging.getLogger(__name__)

TICK_S = 0.1  # how long a backend's receive waits for output before the driver looks at the deadlines
LAUNCHER_GRACE_S = 5.0  # for the launcher to stop a program at its time limit itself
FILES_GRACE_S = 30.0  # to stream the files out once the program has ended
DRAIN_S = 2.0  # to read what is still in flight after a kill
UNPACK_BYTES_PER_S = 10 * 1024 * 1024  # a slow guess, for the deadline only
CUT_LINE = b"\n[agent-sandbox: %d bytes cut here]\n"
# The exit code of a program killed by SIGKILL, as the OOM killer kills. Where the launcher reports
# one without a memory-kill counter, the engine's flag is asked (waiting for the sandbox's end);
# any other exit cannot be a memory kill of the program, and where no counter is kept (gVisor) a
# memory kill takes the whole sandbox, launcher and report with it.
SIGKILLED = 137

Action = Literal["resume", "kill"]
# How the sandbox ended, as the engine saw it: (exit code, killed for memory), asked only where the
# launcher's end report does not say. True asks it to look harder for a memory kill: the launcher
# never reported and the host did not kill the sandbox, so memory may have (its flag can be late).
FinalState = Callable[[bool], tuple[int | None, bool]]
# What a backend's stream gave: (stream, bytes) chunks, [] for nothing yet, None once it ended.
Receive = Callable[[], list[tuple[int, bytes]] | None]


@dataclass
class Capture:
    """Keeps at most ``cap`` bytes of a stream, the first three quarters and the last quarter,
    and counts all of them. The end matters: that is where a traceback is."""

    cap: int
    seen: int = 0
    _head: bytearray = field(default_factory=bytearray)
    _tail: bytearray = field(default_factory=bytearray)

    @property
    def _tail_cap(self) -> int:
        return self.cap // 4

    def add(self, data: bytes) -> None:
        self.seen += len(data)
        room = self.cap - self._tail_cap - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        self._tail += data
        if len(self._tail) > 2 * self._tail_cap:  # trim now and then, not on every write
            del self._tail[: len(self._tail) - self._tail_cap]

    @property
    def truncated(self) -> bool:
        return self.seen > self.cap

    @property
    def data(self) -> bytes:
        """What was kept; where bytes were cut, a line says how many."""
        if not self.truncated:
            return bytes(self._head + self._tail)
        tail = self._tail[len(self._tail) - self._tail_cap :] if self._tail_cap else b""
        cut = self.seen - len(self._head) - len(tail)
        return bytes(self._head) + CUT_LINE % cut + bytes(tail)


class JobSession:
    """See the module docstring. Not thread-safe: one driver feeds and asks it."""

    def __init__(
        self,
        spec: RunSpec,
        on_output: OutputCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
        resumable: bool = True,
    ):
        self.spec = spec
        # False where the program cannot stop the launcher (it is PID 1 of its PID namespace, as in a
        # pod): a launcher late at its deadline is then plainly stuck, and is killed at once.
        self._resumable = resumable
        self._clock = clock
        nonce, install_nonce, measured_nonce = (secrets.token_hex(16) for _ in range(3))
        header = job_header(spec, nonce, install_nonce, measured_nonce)
        self.payload = header + spec.archive + (spec.stdin or b"") + spec.state
        cap = spec.limits.output_capture_kib * 1024
        self._captures = {STDOUT: Capture(cap), STDERR: Capture(cap)}
        self._watchers = [on_output] if on_output is not None else []
        self._ends = {STDOUT: EndOfJob(nonce), STDERR: EndOfJob(nonce)}
        self._so_far = SoFarLines(measured_nonce)
        self._reached: list[str] = []  # the kinds of limit seen reached while the program runs
        results = spec.results
        self._files = FilesBlock(nonce, results.max_files, results.max_bytes)
        self._snapshot = FilesBlock(nonce, results.snapshot_files, results.snapshot_bytes, SNAPSHOT_PREFIX)
        self._state = FilesBlock(nonce, 2, results.state_bytes + STATE_REPORT_BYTES, STATE_PREFIX)
        self._installing = InstallDone(install_nonce) if spec.install is not None else None
        self._installed_in_time = False
        self._started = self._program_started = clock()
        # The launcher's timer starts after it has read the files and the state.
        unpack_s = (len(spec.archive) + len(spec.state)) / UNPACK_BYTES_PER_S
        # After the program, the launcher may spend PREVIEW_WAIT_S on Parquet previews before it
        # sends the files block that tells us the program ended.
        self._program_deadline_s = spec.limits.timeout_s + LAUNCHER_GRACE_S + PREVIEW_WAIT_S + unpack_s
        first = spec.install.timeout_s if spec.install is not None else self._program_deadline_s
        self._deadline = self._started + first
        self._program_ended: float | None = None
        self._stop_reading_at: float | None = None
        self.timed_out = self.output_killed = self.resumed = False  # what the host had to do

    @property
    def ended(self) -> bool:
        """The launcher's end line is in on both streams: the whole result is."""
        return all(end.report is not None for end in self._ends.values())

    @property
    def done_reading(self) -> bool:
        """After a kill, what was in flight has had its moment."""
        return self._stop_reading_at is not None and self._clock() >= self._stop_reading_at

    def feed(self, stream: int, data: bytes) -> None:
        """Take a chunk of the sandbox's ``stream`` (STDOUT or STDERR)."""
        if stream == STDOUT:
            data = self._take_launcher_blocks(data)
        elif stream == STDERR:
            data = self._so_far.feed(data)
            self._tell_reached()
        if stream in self._captures:
            self._keep(stream, self._ends[stream].feed(data))
        seen = sum(capture.seen for capture in self._captures.values())
        if self._stop_reading_at is None and seen > self.spec.limits.output_kill_kib * 1024:
            self.output_killed = True  # due() says kill

    def due(self) -> Action | None:
        """What the driver must do now, if anything: ``resume`` a launcher the program may have
        stopped (SIGCONT, once), or ``kill`` the sandbox (for time or output; once)."""
        now = self._clock()
        if self._stop_reading_at is not None:
            return None
        if self.output_killed:
            self._stop_reading_at = now + DRAIN_S
            return "kill"
        if self.ended or now < self._deadline:
            return None
        program_running = self._program_ended is None and (
            self._installing is None or self._installing.report is not None
        )
        if program_running and self._resumable and not self.resumed:
            self.resumed = True
            self._deadline = now + LAUNCHER_GRACE_S
            return "resume"
        self.timed_out = True
        self._stop_reading_at = now + DRAIN_S
        return "kill"

    def outcome(self, final_state: FinalState) -> Outcome:
        """The run's raw facts, once the streams are done; ``final_state`` is asked only where the
        launcher's end report does not say."""
        program_ran = self._installing is None or self._installed_in_time
        ended_at = self._program_ended or self._clock()
        duration = ended_at - self._program_started if program_ran else 0.0
        held = self._files.flush() + self._snapshot.flush() + self._state.flush()
        self._keep(STDOUT, self._ends[STDOUT].feed(held))
        self._keep(STDERR, self._ends[STDERR].feed(self._so_far.flush()))
        for stream, end in self._ends.items():
            self._keep(stream, end.flush())
        report = end_report(self._ends[STDOUT].report, self._ends[STDERR].report)
        killed = self.timed_out or self.output_killed
        exit_code: int | None
        return_value = None
        timed_out = self.timed_out
        measured = report if report is not None and not killed else None
        if measured is not None:
            exit_code, return_value, timed_out = measured.exit_code, measured.return_value, measured.timed_out
            oom_killed = measured.oom_killed
            if oom_killed is None:  # no cgroup counter (gVisor): the engine's flag, if it can say
                oom_killed = final_state(False)[1] if measured.exit_code == SIGKILLED else False
        else:
            exit_code, oom_killed = final_state(not killed)
        install = None
        if self.spec.install is not None:
            assert self._installing is not None
            line = self._installing.report if self._installed_in_time else None
            install = install_outcome(line, self._clock() - self._started, self.spec.install.timeout_s)
            if not install.finished or install.exit_code != 0:
                exit_code = None  # the program never ran
        out, err = self._captures[STDOUT], self._captures[STDERR]
        return Outcome(
            exit_code=exit_code,
            stdout=out.data,
            stderr=err.data,
            stdout_bytes=out.seen,
            stderr_bytes=err.seen,
            stdout_truncated=out.truncated,
            stderr_truncated=err.truncated,
            duration_s=round(duration, 3),
            timed_out=timed_out,
            oom_killed=oom_killed,
            output_killed=self.output_killed,
            install=install,
            files=self._files.result(),
            snapshot=self._snapshot.result(),
            state=self._state.result() if self.spec.results.state_bytes else None,
            return_value=return_value,
            launcher_lost=report is None and not killed,
            launcher_resumed=self.resumed and report is not None and not killed and not timed_out,
            output_relayed=self.spec.relays_output,
            usage=measured.usage if measured else None,
            measured=measured.measured if measured else Measured(),
            oom_victim=measured.oom_victim if measured else None,
            post_mortem=measured.post_mortem if measured else None,
        )

    def _take_launcher_blocks(self, data: bytes) -> bytes:
        """Take the install line and the files blocks out of stdout; the rest is the program's."""
        installing = self._installing
        if installing is not None and installing.report is None:
            data = installing.feed(data)
            if installing.report is not None:
                data += installing.rest
                # A line that comes after a kill came too late: the install did not finish.
                self._installed_in_time = self._stop_reading_at is None
                self._program_started = self._clock()
                self._deadline = self._program_started + self._program_deadline_s
        if not self._files.complete:
            data = self._files.feed(data)
            if self._files.manifest is not None and self._program_ended is None:
                # The launcher sends files only once everything of the program is gone.
                self._program_ended = self._clock()
                if self._stop_reading_at is None:
                    self._deadline = max(self._deadline, self._program_ended + FILES_GRACE_S)
        if self.spec.results.snapshot_files and not self._snapshot.complete:
            data = self._snapshot.feed(data)
        results = self.spec.results
        after_snapshot = self._snapshot.complete or not results.snapshot_files
        if results.state_bytes and after_snapshot and not self._state.complete:
            data = self._state.feed(data)
        return data

    def _tell_reached(self) -> None:
        """Take in the launcher's newest measurements of the running program."""
        if not self._so_far.reports:
            return
        parsed = measured_so_far(self._so_far.reports[-1])
        self._so_far.reports.clear()
        if parsed is not None:
            measured, oom_kills = parsed
            self._reach(measured.reached(self.spec.limits) + (["memory"] if oom_kills else []))

    def _reach(self, kinds: list[str]) -> None:
        """Tell the watchers when another kind of limit is reached."""
        if set(kinds) - set(self._reached):
            self._reached = sorted(set(kinds) | set(self._reached))
            self._tell(LIMITS, ",".join(self._reached).encode())

    def _keep(self, stream: int, data: bytes) -> None:
        capture = self._captures[stream]
        capture.add(data)
        if data:
            self._tell(stream, data)
            if capture.truncated:  # more than is kept of it: the output limit, as the verdict says
                self._reach(["output"])

    def _tell(self, stream: int, data: bytes) -> None:
        for watcher in self._watchers:
            try:
                watcher(stream, data)
            except Exception as exc:  # a reader that went away must not cost the result
                log.warning("live output stopped: %s", exc)
                self._watchers.clear()


def drive(session: JobSession, receive: Receive, act: Callable[[Action], None]) -> None:
    """Run ``session`` to its end over a backend's stream: do what is due (``act``), then take
    what ``receive`` gives, until the launcher's end line is in on both streams, the stream
    ends, or the moment after a kill is over. Every backend's loop, written once."""
    while True:
        due = session.due()
        if due is not None:
            act(due)
        if session.ended or session.done_reading:
            return
        chunks = receive()
        if chunks is None:
            return
        for stream, data in chunks:
            session.feed(stream, data)
