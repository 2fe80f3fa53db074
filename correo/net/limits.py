"""Connection limits: ``[limits] max_connections`` and ``max_connections_per_ip``.

One process counts its own connections exactly (a dict). When SMTP worker processes
serve the MX port (``correo.workers``), the limits must still hold for the server as a
whole, as Postfix's ``anvil`` makes them hold across its ``smtpd`` processes: each
process then also publishes its counts in a small shared-memory table, one row per
process, and admits a connection only if the sum over all rows leaves room.

Each row has one writer (its process), so no lock is needed: a process updates its own
32-bit cells and reads the others'. Two processes admitting the same client at the same
instant can overshoot a limit by one connection each; a restarted worker's row is
cleared by the main process, so a crash leaks nothing. Client addresses are hashed into
:data:`SLOTS` cells per row (CRC-32, the same in every process); two addresses sharing a
cell are counted together, which can only make the limit stricter, and only for them.
"""

from __future__ import annotations

import mmap
import os
import zlib

SLOTS = 1 << 16
"""Per-IP cells per row; the row's total follows them."""
_ROW = SLOTS + 1
_CELL = 4  # int32


class SharedTable:
    """The rows of every process's counts, in an anonymous shared memory file (memfd)."""

    def __init__(self, fd: int, rows: int) -> None:
        self.fd = fd
        self.rows = rows
        self._map = mmap.mmap(fd, rows * _ROW * _CELL)
        self.cells = memoryview(self._map).cast("i")

    @classmethod
    def create(cls, rows: int) -> SharedTable:
        """A zeroed table for ``rows`` processes; its ``fd`` is passed to the workers."""
        fd = os.memfd_create("correo-connections", os.MFD_CLOEXEC)
        os.ftruncate(fd, rows * _ROW * _CELL)
        return cls(fd, rows)

    def clear_row(self, row: int) -> None:
        """Forget what a process counted (it exited: its connections went with it)."""
        start = row * _ROW
        self.cells[start : start + _ROW] = memoryview(bytes(_ROW * _CELL)).cast("i")

    def close_fd(self) -> None:
        """Close the file descriptor (the mapping stays until no one counts through it)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def slot(ip: str) -> int:
    return zlib.crc32(ip.encode()) & (SLOTS - 1)


class ConnectionCounts:
    """Admits or refuses each new connection; the runner calls :meth:`release` when it
    ends. Without a table the counts are this process's alone."""

    def __init__(
        self, max_total: int, max_per_ip: int, table: SharedTable | None = None, row: int = 0
    ) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.total = 0
        self._per_ip: dict[str, int] = {}
        self._table = table
        self._row = row

    def admit(self, ip: str) -> bool:
        own = self._per_ip.get(ip, 0)
        table = self._table
        if table is None:
            if self.total >= self.max_total or own >= self.max_per_ip:
                return False
        else:
            cells, cell = table.cells, slot(ip)
            others_ip = others_total = 0
            for row in range(table.rows):
                if row != self._row:
                    others_ip += cells[row * _ROW + cell]
                    others_total += cells[row * _ROW + SLOTS]
            if self.total + others_total >= self.max_total:
                return False
            if own + others_ip >= self.max_per_ip:
                return False
            cells[self._row * _ROW + cell] += 1
            cells[self._row * _ROW + SLOTS] += 1
        self._per_ip[ip] = own + 1
        self.total += 1
        return True

    def release(self, ip: str) -> None:
        n = self._per_ip.get(ip, 0)
        if n <= 0:
            return
        if n == 1:
            del self._per_ip[ip]
        else:
            self._per_ip[ip] = n - 1
        self.total -= 1
        if self._table is not None:
            cells = self._table.cells
            cells[self._row * _ROW + slot(ip)] -= 1
            cells[self._row * _ROW + SLOTS] -= 1
