"""Agent side: tell a dead rendezvous member from a slow one in milliseconds.

torch's rendezvous learns that a member is gone only when its keep-alive expires
(interval x attempts: 1 s x 5 with the operator's settings). A survivor whose peer's
pod was lost waits that long outside the old round before a smaller one can form:
bench/recovery measured 5.3 s from a lost pod to the next step, 4.1 s of it in the
rendezvous. Shorter keep-alives are no answer: a loaded agent that missed a few
heartbeats was dropped as dead and the job split.

So each agent also listens on a TCP port that does nothing but accept, and publishes
its address under its node's name in the job's store. An agent that finds itself
outside a complete round (it is re-forming the group) dials that round's members:

- **refused or unreachable**: nothing listens there any more (the process is gone,
  or its pod's address is), so the member's heartbeat is taken as expired now and
  torch's own clean-up drops it, as it would have after the keep-alive;
- **accepted**: alive, however slow;
- **no answer within the dial timeout**: proves nothing (a loaded node, a
  partition), and the heartbeat decides, as before.

A refusal is trusted only from a member this agent has reached before: after each
round it dials the round's members once (up to CONFIRM_AT_MOST of them), in the
background. A port that never answered, say behind a network policy that rejects
rather than drops, is never taken for a death. A member that published no address
(an older image), or was never reached, is left to its heartbeat.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

logger = logging.getLogger("trainop_runtime.liveness")

KEY_PREFIX: Final = "trainop/liveness/"
DIAL_TIMEOUT_SECONDS: Final = 0.25
# Dials to one member at most this often: a waiting agent syncs every poll (50 ms).
REDIAL_SECONDS: Final = 0.25
# What a dial to a vanished process or pod gets back, as opposed to a timeout.
_GONE: Final = frozenset(
    {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNRESET}
)
_EXPIRED: Final = datetime(1970, 1, 1, tzinfo=UTC)
# Members dialled after each round; beyond that, heartbeats alone decide (a job of
# more pods than this pays a few seconds more for a lost pod, not a connection storm).
CONFIRM_AT_MOST: Final = 32


class Listener:
    """A port that accepts and closes: being able to connect is the only signal."""

    def __init__(self, host: str) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.create_server((host, 0), family=family, backlog=64)
        self.address = f"{host}:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._serve, name="trainop-liveness", daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except (ConnectionError, InterruptedError):
                continue  # a dialler that gave up before the accept: keep serving
            except OSError:
                return  # closed
            conn.close()

    def close(self) -> None:
        # shutdown first: a bare close() leaves the port listening while the serving
        # thread is blocked in accept().
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def dial_all(addresses: Iterable[str], timeout: float) -> dict[str, bool | None]:
    """Connect to every address at once. True: accepted; False: refused or
    unreachable; None: no answer in time (or a malformed address)."""
    out: dict[str, bool | None] = {}
    sel = selectors.DefaultSelector()
    try:
        for address in addresses:
            try:
                host, port = split_address(address)
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                sock = socket.socket(family, socket.SOCK_STREAM)
            except (ValueError, OSError):
                out[address] = None
                continue
            sock.setblocking(False)
            code = sock.connect_ex((host, port))
            if code in (0, errno.EINPROGRESS):
                sel.register(sock, selectors.EVENT_WRITE, address)
            else:
                out[address] = False if code in _GONE else None
                sock.close()
        deadline = time.monotonic() + timeout
        while sel.get_map() and (left := deadline - time.monotonic()) > 0:
            for key, _ in sel.select(left):
                done: socket.socket = key.fileobj  # type: ignore[assignment]  # sockets only
                code = done.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                out[key.data] = True if code == 0 else (False if code in _GONE else None)
                sel.unregister(done)
                done.close()
        for key in list(sel.get_map().values()):
            out.setdefault(key.data, None)
            key.fileobj.close()  # type: ignore[union-attr]  # sockets only
    finally:
        sel.close()
    return out


def local_address_towards(host: str, port: int) -> str | None:
    """The address this host uses to reach host:port: the one peers can dial back."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        with socket.socket(info[0], socket.SOCK_DGRAM) as probe:
            probe.connect(info[4])  # UDP: picks a route, sends nothing
            return str(probe.getsockname()[0])
    except OSError:
        return None


class Evictor:
    """Decides which members of a round are gone, from their published addresses."""

    def __init__(
        self,
        lookup: Callable[[str], str | None],
        *,
        dial: Callable[[Iterable[str], float], Mapping[str, bool | None]] = dial_all,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self._dial = dial
        self._clock = clock
        self._last_dial: dict[str, float] = {}
        self._reached: set[str] = set()
        self._lock = threading.Lock()

    def confirm(self, members: Iterable[str]) -> None:
        """Dial members once: those that answer may later be declared gone."""
        addresses = {m: a for m in members if (a := self._lookup(m)) is not None}
        answers = self._dial(addresses.values(), DIAL_TIMEOUT_SECONDS * 4) if addresses else {}
        with self._lock:
            self._reached |= {m for m, a in addresses.items() if answers.get(a) is True}

    def gone(self, members: Iterable[str]) -> list[str]:
        now = self._clock()
        with self._lock:
            reached = set(self._reached)
        due = {
            m: a
            for m in members
            if m in reached
            and now - self._last_dial.get(m, -REDIAL_SECONDS) >= REDIAL_SECONDS
            and (a := self._lookup(m)) is not None
        }
        for m in due:
            self._last_dial[m] = now
        answers = self._dial(due.values(), DIAL_TIMEOUT_SECONDS) if due else {}
        return [m for m, a in due.items() if answers.get(a) is False]


class Liveness:
    """This agent's listener, and what it knows of its peers' liveness ports."""

    def __init__(self, listener: Listener, evictor: Evictor, members: Callable[[], list[str]]):
        self.listener = listener
        self.evictor = evictor
        self._members = members

    def confirm_round(self) -> None:
        """In the background: dial this round's members, so a later refusal counts."""
        members = self._members()[:CONFIRM_AT_MOST]
        threading.Thread(
            target=self.evictor.confirm, args=(members,), name="trainop-liveness-confirm",
            daemon=True,
        ).start()  # fmt: skip


def install(handler: Any, store: Any, endpoint: str) -> Liveness | None:
    """Publish this agent's liveness address and let its rendezvous drop gone members.

    ``handler`` is torch's DynamicRendezvousHandler; what this uses of it is private
    to torch, so anything missing leaves torch's heartbeats alone in charge.
    """
    holder = getattr(handler, "_state_holder", None)
    node = getattr(handler, "_this_node", None)
    sanitize = getattr(holder, "_sanitize", None)
    if holder is None or node is None or sanitize is None:
        return None
    try:
        host = local_address_towards(*split_address(endpoint))
        if host is None:
            return None
        listener = Listener(host)
        if dial_all([listener.address], DIAL_TIMEOUT_SECONDS * 4).get(listener.address) is not True:
            listener.close()  # peers could not reach it either: a false "gone" is worse
            return None
        store.set(KEY_PREFIX + repr(node), listener.address)
    except (OSError, ValueError, RuntimeError) as exc:
        logger.warning("liveness address not published (%s): heartbeats alone decide", exc)
        return None

    def lookup(member: str) -> str | None:
        key = KEY_PREFIX + member
        with contextlib.suppress(RuntimeError):
            if store.check([key]):  # get() would block on a key never written
                return str(store.get(key).decode())
        return None

    evictor = Evictor(lookup)

    def sanitize_with_liveness() -> None:
        sanitize()
        state = holder._state
        # Only outside a complete round: the case where a gone member holds us back.
        if not state.complete or node in state.participants:
            return
        by_name = {repr(m): m for m in state.participants}
        gone = evictor.gone(by_name)
        for name in gone:
            logger.info("rendezvous member %s is gone (its liveness port refused)", name)
            state.last_heartbeats[by_name[name]] = _EXPIRED
        if gone:
            sanitize()  # torch's own removal, as after a keep-alive expiry

    holder._sanitize = sanitize_with_liveness

    def members() -> list[str]:
        return [repr(m) for m in holder._state.participants if m != node]

    return Liveness(listener, evictor, members)
