"""What crosses between the control process and the episode-writer process.

Frames go through a ring of shared-memory slots (a memfd mapped by both
processes: no name to leak or clean up, gone when both close it); everything
else is a small pickled message on a pipe.  The control thread's side never
waits: a slot is claimed only if it is free, and a message is written with one
non-blocking ``write`` of at most ``PIPE_BUF`` bytes, which the kernel makes
all-or-nothing, so a full pipe drops the step instead of blocking the tick.

Slot states are one byte each at the start of the mapping: the control process
sets a slot busy before it names the slot in a message, the writer copies the
frame out and sets it free.  Each byte has a single writer per transition.
"""

from __future__ import annotations

import mmap
import os
import pickle
import select
import struct
import time
from typing import Any

import numpy as np

FREE, BUSY = 0, 1
_HEADER = struct.Struct("<I")
MAX_MESSAGE = select.PIPE_BUF  # atomic pipe writes: all of it or nothing
_HDR_ALIGN = 64


class SlotRing:
    """``n`` slots of ``slot_bytes`` in one shared mapping."""

    def __init__(self, fd: int, n: int, slot_bytes: int) -> None:
        self.fd, self.n, self.slot_bytes = fd, n, slot_bytes
        self._base = -(-n // _HDR_ALIGN) * _HDR_ALIGN
        self._map = mmap.mmap(fd, self._base + n * slot_bytes)
        self._state = np.frombuffer(self._map, np.uint8, n)

    @classmethod
    def create(cls, n: int, slot_bytes: int) -> SlotRing:
        fd = os.memfd_create("continuon-frames", 0)  # not inheritable until passed on purpose
        base = -(-n // _HDR_ALIGN) * _HDR_ALIGN
        os.ftruncate(fd, base + n * slot_bytes)
        return cls(fd, n, slot_bytes)

    def view(self, slot: int, nbytes: int) -> np.ndarray:
        off = self._base + slot * self.slot_bytes
        return np.frombuffer(self._map, np.uint8, nbytes, off)

    # ---- the control process
    def put(self, arr: np.ndarray) -> int | None:
        """Copy ``arr`` into a free slot, return its index; None if none is free or too small.

        The lowest free slot: normally the writer copies a frame out within milliseconds and
        the first few slots take all the traffic, so the ring's other pages are only touched
        (and only then resident) when the writer falls behind — a deep ring that costs memory
        only while it is used.
        """
        if arr.nbytes > self.slot_bytes:
            return None
        free = np.flatnonzero(self._state == FREE)
        if free.size == 0:
            return None
        slot = int(free[0])
        dst = self.view(slot, arr.nbytes).view(arr.dtype).reshape(arr.shape)
        np.copyto(dst, arr, casting="no")
        self._state[slot] = BUSY
        return slot

    def release(self, slot: int) -> None:
        self._state[slot] = FREE

    def reset(self) -> None:
        """Every slot free (a new writer process starts with an empty ring)."""
        self._state[:] = FREE

    def busy(self) -> int:
        return int(np.count_nonzero(self._state))

    # ---- the writer process
    def take(self, slot: int, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        """A private copy of the frame in ``slot``; the slot is free again afterwards."""
        dt = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dt.itemsize
        if not 0 <= slot < self.n or nbytes > self.slot_bytes:
            raise ValueError(f"bad frame reference: slot {slot}, {shape} {dtype}")
        out = self.view(slot, nbytes).view(dt).reshape(shape).copy()
        self._state[slot] = FREE
        return out

    def close(self) -> None:
        self._state = None  # type: ignore[assignment]
        self._map.close()
        os.close(self.fd)


def pack(message: Any) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


def read_message(fd: int) -> Any:
    """The next message on a blocking pipe; EOFError when the other end is closed."""
    (n,) = _HEADER.unpack(_read_exact(fd, _HEADER.size))
    return pickle.loads(_read_exact(fd, n))


def _read_exact(fd: int, n: int) -> bytes:
    chunks: list[bytes] = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def write_all(fd: int, data: bytes) -> None:
    """Blocking write of everything (the writer's events, the control process's commands)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def send_nowait(fd: int, data: bytes) -> bool:
    """One atomic non-blocking write; False (nothing written) if the pipe is full or gone."""
    if len(data) > MAX_MESSAGE:
        return False
    try:
        return os.write(fd, data) == len(data)
    except (BlockingIOError, BrokenPipeError, OSError):
        return False


def send_within(fd: int, data: bytes, timeout: float) -> bool:
    """An atomic write to a non-blocking pipe, waiting up to ``timeout`` s for room."""
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"message of {len(data)} bytes is over PIPE_BUF ({MAX_MESSAGE})")
    deadline = time.monotonic() + timeout
    while True:
        try:
            return os.write(fd, data) == len(data)
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            select.select([], [fd], [], min(left, 0.05))
        except OSError:
            return False
