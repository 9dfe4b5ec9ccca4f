"""The control plane of a torchrun launch: rank 0's connection to every other rank, for commands, their
replies and failures. Collectives carry tensors; everything else travels here.

    rank 0 (controller)                                rank r > 0
    Listener(port 0): its address goes out once   -->  Client(address), authenticated
    send(r, command)  --------------------------->     inbox (a reader thread drains the connection)
    inbox             <---------------------------     reply
    Heartbeat every HEARTBEAT_S   <------------->      Heartbeat every HEARTBEAT_S
    Failure(rank, error)          <------------->      Failure(rank, error), then the process exits

Why not commands by broadcast (a collective): a rank waiting for the next command would wait inside a
collective for as long as rank 0 generates, so the collective timeout would have to exceed the longest rollout,
and an error on rank 0 while the others sit in a collective (an FSDP all-gather of a micro-batch) left them
there until that timeout (10-30 min), since nothing can interrupt a thread blocked in a collective.

Fail fast: every wait here is bounded, and a rank's reader threads end their own process (os._exit) on a peer's
Failure, on a lost connection, or when a peer has sent nothing (not even a heartbeat) for `peer_timeout_s`;
this works even while the main thread is blocked in a collective. A rank that raises sends Failure to its
peers first (`fail`), so every rank stops within seconds with the first error's rank and message.
"""
from __future__ import annotations

import os
import pickle
import queue
import secrets
import socket
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Client, Connection, Listener
from typing import Any

HEARTBEAT_S = 2.0  # how often each rank tells its peers it is alive
POLL_S = 0.5  # how often a bounded wait re-checks its deadline


@dataclass(frozen=True, slots=True)
class Heartbeat:
    pass


@dataclass(frozen=True, slots=True)
class Failure:
    rank: int
    error: str  # "ExceptionType: message" of the first error on that rank


@dataclass(frozen=True, slots=True)
class Bye:
    """A clean end: the connection closing after this is not a failure."""


class PeerTimeout(TimeoutError):
    """No message arrived from a peer within the wait's bound; the message names what was waited for."""


def _exit_now(message: str) -> None:
    """End this process at once with status 1: its main thread may be blocked in a collective."""
    print(f"[cadence] {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)


class Peer:
    """One connection to another rank: sends under a lock (the heartbeat thread sends too), a reader thread
    that puts commands and replies in `inbox` and ends the process on the peer's failure or silence."""

    def __init__(self, conn: Connection, rank: int, me: int, timeout_s: float) -> None:
        self.conn, self.rank, self.me, self.timeout_s = conn, rank, me, timeout_s
        self.inbox: queue.Queue = queue.Queue()
        self.last_seen = time.monotonic()
        self.closing = False
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name=f"cadence-control-{rank}", daemon=True)
        self._reader.start()

    def send(self, message: Any) -> None:
        # plain pickle, by value: Connection.send's pickler shares tensors through file descriptors of this
        # host (torch.multiprocessing), which a rank on another host, or another process tree, cannot open
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            self.conn.send_bytes(data)

    def receive(self, doing: str, timeout_s: float | None = None) -> Any:
        """The next command or reply from this peer; PeerTimeout after `timeout_s` (None: as long as the peer
        keeps sending heartbeats, which the reader checks)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            wait = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
            if wait <= 0:
                raise PeerTimeout(f"rank {self.me}: nothing from rank {self.rank} within {timeout_s:g} s while "
                                  f"{doing}")
            try:
                return self.inbox.get(timeout=wait)
            except queue.Empty:
                continue

    def poll(self) -> Any | None:
        """The next command or reply from this peer if one has arrived, else None (never waits)."""
        try:
            return self.inbox.get_nowait()
        except queue.Empty:
            return None

    def silent_for(self) -> float:
        return time.monotonic() - self.last_seen

    def _read(self) -> None:
        while True:
            try:
                message = pickle.loads(self.conn.recv_bytes())
            except Exception:  # EOF, a reset, or this rank closing the connection under the read
                if not self.closing:
                    _exit_now(f"rank {self.me}: lost the connection to rank {self.rank} (its process ended); "
                              f"stopping")
                return
            self.last_seen = time.monotonic()
            if isinstance(message, Failure):
                _exit_now(f"rank {self.me}: stopping because rank {message.rank} failed: {message.error}")
            if isinstance(message, Bye):
                self.closing = True
            elif not isinstance(message, Heartbeat):
                self.inbox.put(message)


class ControlPlane:
    """This rank's peers: rank 0 holds one per other rank, every other rank holds rank 0 only."""

    def __init__(self, rank: int, peers: dict[int, Peer], timeout_s: float) -> None:
        self.rank = rank
        self.peers = peers
        self.timeout_s = timeout_s
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="cadence-heartbeat", daemon=True)
        self._beat.start()

    @classmethod
    def connect(cls, rank: int, world_size: int, timeout_s: float, share_address) -> ControlPlane:
        """Rank 0 listens, the others connect. `share_address(value_on_rank_0)` returns rank 0's value on every
        rank (a broadcast over the process group, the one collective this needs)."""
        listener = None
        if rank == 0:
            key = secrets.token_bytes(32)
            listener = Listener(("", 0), authkey=key)
            address = (socket.gethostname(), listener.address[1], key)
        else:
            address = None
        host, port, key = share_address(address)
        if rank == 0:
            peers = _accept(listener, world_size, timeout_s)
        else:
            conn = Client((host, port), authkey=key)
            conn.send_bytes(pickle.dumps(rank))
            peers = {0: Peer(conn, 0, rank, timeout_s)}
        return cls(rank, peers, timeout_s)

    def send(self, rank: int, message: Any) -> None:
        self.peers[rank].send(message)

    def broadcast(self, message: Any) -> None:
        """Rank 0: the same command to every other rank."""
        for peer in self.peers.values():
            peer.send(message)

    def receive(self, rank: int, doing: str, timeout_s: float | None = None) -> Any:
        return self.peers[rank].receive(doing, timeout_s)

    def poll(self, rank: int) -> Any | None:
        return self.peers[rank].poll()

    def fail(self, exc: BaseException) -> None:
        """Tell every peer this rank failed (they stop within a poll slice); then the caller exits."""
        failure = Failure(self.rank, f"{type(exc).__name__}: {exc}".splitlines()[0][:2000])
        for peer in self.peers.values():
            peer.closing = True  # this rank ends: its peers' EOF is expected from now on
            try:
                peer.send(failure)
            except OSError:
                pass

    def close(self) -> None:
        """A clean end (after the last command): stop the heartbeats, say goodbye, close the connections."""
        self._stop.set()
        for peer in self.peers.values():
            peer.closing = True
            try:
                peer.send(Bye())
            except OSError:
                pass
        self._beat.join(timeout=HEARTBEAT_S * 2)
        for peer in self.peers.values():
            peer.conn.close()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            for peer in self.peers.values():
                if peer.closing:
                    continue
                if peer.silent_for() > self.timeout_s:
                    _exit_now(f"rank {self.rank}: rank {peer.rank} sent nothing for {peer.silent_for():.0f} s "
                              f"(backend.peer_timeout_s={self.timeout_s:g}); stopping")
                try:
                    peer.send(Heartbeat())
                except OSError:
                    pass  # the reader reports the lost connection


def _accept(listener: Listener, world_size: int, timeout_s: float) -> dict[int, Peer]:
    """Rank 0: one connection from every other rank, each naming its rank, within `timeout_s` (accept() has no
    timeout of its own: it runs in a thread, and the listener is closed if the ranks are late)."""
    peers: dict[int, Peer] = {}

    def accept_all() -> None:
        while len(peers) < world_size - 1:
            conn = listener.accept()
            rank = pickle.loads(conn.recv_bytes())
            peers[rank] = Peer(conn, rank, 0, timeout_s)

    accepting = threading.Thread(target=accept_all, name="cadence-control-accept", daemon=True)
    accepting.start()
    accepting.join(timeout_s)
    listener.close()
    if len(peers) < world_size - 1:
        missing = sorted(set(range(1, world_size)) - set(peers))
        raise PeerTimeout(f"rank 0: ranks {missing} did not connect to the control plane within {timeout_s:g} s")
    return peers
