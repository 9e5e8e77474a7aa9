"""Fuzzing harness: targets and a seeded byte mutator (no pytest, no hypothesis).

A :class:`Target` wraps one parser that takes outside bytes. ``run(data)``
feeds one case through the real product code; it may raise only the
exception types in ``allowed`` (the parser's own error types). Anything else
is a finding. The same targets (one module per parser in this package) drive
the pytest suite (``tests/fuzz``: hypothesis, a bounded number of examples)
and ``python -m bench.fuzz`` (a seeded mutation loop).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

_INTERESTING: Final = (
    0,
    1,
    0x7F,
    0x80,
    0xFF,
    0x7FFF,
    0xFFFF,
    0x7FFFFFFF,
    0xFFFFFFFF,
    2**63 - 1,
    2**63,
    2**64 - 1,
)

Mutator = Callable[[bytes, random.Random], bytes]


def _put_int(data: bytearray, rng: random.Random) -> None:
    width = rng.choice((1, 2, 4, 8))
    value = rng.choice(_INTERESTING) % (1 << (8 * width))
    fmt = {1: "B", 2: "H", 4: "I", 8: "Q"}[width]
    pos = rng.randrange(max(len(data) - width, 0) + 1)
    data[pos : pos + width] = struct.pack("<" + fmt, value)


def mutate_bytes(seed: bytes, rng: random.Random) -> bytes:
    """Apply 1–4 random edits (bit flip, interesting integer, insert, delete, splice, cut)."""
    data = bytearray(seed)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        n = len(data)
        if op == 0 and n:
            data[rng.randrange(n)] ^= 1 << rng.randrange(8)
        elif op == 1:
            _put_int(data, rng)
        elif op == 2:
            pos = rng.randrange(n + 1)
            data[pos:pos] = rng.randbytes(rng.choice((1, 2, 8, 64)))
        elif op == 3 and n:
            a = rng.randrange(n)
            del data[a : a + rng.randint(1, 64)]
        elif op == 4 and n:
            a = rng.randrange(n)
            chunk = data[a : a + rng.randint(1, 64)]
            pos = rng.randrange(n + 1)
            data[pos:pos] = chunk
        elif op == 5 and n:
            del data[rng.randrange(n) :]
        elif n:
            data[rng.randrange(n)] = rng.randrange(256)
    return bytes(data)


@dataclass(frozen=True)
class Target:
    """One fuzz target: valid seeds, the code under test and the errors it may raise."""

    name: str
    seeds: Sequence[bytes]
    run: Callable[[bytes], None]
    allowed: tuple[type[BaseException], ...]
    mutate: Mutator = field(default=mutate_bytes)

    def case(self, index: int, rng: random.Random) -> bytes:
        """Case ``index``: mostly a mutated seed, sometimes a seed or random bytes."""
        r = rng.random()
        if r < 0.05:
            return self.seeds[index % len(self.seeds)]
        if r < 0.15:
            return rng.randbytes(rng.randrange(512))
        return self.mutate(rng.choice(self.seeds), rng)

    def check(self, data: bytes) -> bool:
        """Run one case; True if it was refused with an allowed error, False if accepted.

        Any other exception propagates: it is a finding.
        """
        try:
            self.run(data)
        except self.allowed:
            return True
        return False
