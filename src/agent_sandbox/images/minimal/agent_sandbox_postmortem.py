"""Lets the launcher ask every Python process of a run where it is, at the time limit.

Imported at interpreter start by ``agent_sandbox_postmortem.pth`` in the image's site-packages (a
``.pth`` rather than a ``sitecustomize``: Debian's Python ships its own, and a run's packages on
PYTHONPATH could shadow one). When the launcher runs a program it listens on an abstract Unix
socket named in ``AGENT_SANDBOX_POSTMORTEM``; each Python process connects once, says its pid, and
registers ``faulthandler`` to write the stacks of all its threads into that connection on SIGURG
(whose default action is to ignore: a process that is not Python is not hurt by it). The dump
goes to the launcher, never into the program's stdout or stderr; the launcher knows each
connection's process from the kernel (SO_PEERCRED) and discards whatever arrives before it sends
the signal. The connection is moved to a high descriptor number, so that a program that closes
its descriptors (a daemon does) and opens files again is unlikely to be handed that number,
which faulthandler would then write into.

Builtin modules only, and nothing at all without the variable: it runs before every program.
"""

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING, which mypy honours by name, without importing typing
if TYPE_CHECKING:
    import _socket

_HIGH_DESCRIPTORS = (1023, 511, 255, 127, 63)  # below the limit's own top, should it be taken
_channel: "_socket.socket | None" = None
_identity: "tuple[int, int] | None" = None  # the connection's (st_dev, st_ino), to know it again


def _connect() -> None:
    """Connect (again, in a forked child), never failing the program: with no connection, no dump."""
    try:
        _drop_inherited()
        _open()
    except Exception:
        pass


def _drop_inherited() -> None:
    """In a forked child the parent's connection is the parent's: stop dumping into it, and close
    it unless the program has closed it and got that descriptor number for a file of its own."""
    global _channel, _identity
    if _channel is None:
        return
    import _signal  # type: ignore[import-not-found]  # builtin: what ``signal`` wraps, no stub
    import faulthandler

    faulthandler.unregister(_signal.SIGURG)
    channel, _channel = _channel, None
    try:
        status = os.fstat(channel.fileno())
        if (status.st_dev, status.st_ino) == _identity:
            channel.close()
            return
    except OSError:
        pass
    channel.detach()  # not ours any more: leave the descriptor alone


def _open() -> None:
    global _channel, _identity
    name = os.environ.get("AGENT_SANDBOX_POSTMORTEM")
    if not name:
        return
    import _signal
    import _socket
    import faulthandler

    channel = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    channel.setblocking(False)  # a full backlog must not hold the program's start
    try:
        channel.connect("\0" + name)
        channel.setblocking(True)  # faulthandler writes from a signal handler and does not retry
        channel.sendall(b"%d\n" % os.getpid())  # where the kernel cannot tell the launcher (gVisor)
        channel = _high(channel)
    except OSError:
        channel.close()
        return
    status = os.fstat(channel.fileno())
    faulthandler.register(_signal.SIGURG, file=channel.fileno(), all_threads=True, chain=False)
    _channel, _identity = channel, (status.st_dev, status.st_ino)


def _high(channel: "_socket.socket") -> "_socket.socket":
    """``channel`` on a free descriptor near the top of those allowed, if one is."""
    import _socket

    top = os.sysconf("SC_OPEN_MAX")  # the descriptor limit
    for number in (top - 1, *_HIGH_DESCRIPTORS):
        if not 2 < number < top:
            continue
        try:
            os.fstat(number)
            continue  # taken
        except OSError:
            pass
        try:
            os.dup2(channel.fileno(), number, inheritable=False)
        except OSError:
            continue
        channel.close()
        return _socket.socket(fileno=number)
    return channel


_connect()
if _channel is not None:
    os.register_at_fork(after_in_child=_connect)
