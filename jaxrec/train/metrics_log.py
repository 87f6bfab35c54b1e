"""Metric sinks: a JSONL file and TensorBoard event files.

The event files are written directly in TensorBoard's record format (length,
masked CRC-32C, serialized ``Event`` proto, masked CRC-32C), so logging
scalars needs neither TensorFlow nor a protobuf dependency.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from pathlib import Path


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, *, file_version: str | None = None, scalars: dict | None = None) -> bytes:
    """An ``Event`` proto: wall_time (1, double), step (2, int64),
    file_version (3, string), summary (5) of values {tag (1), simple_value (2, float)}."""
    out = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step)
    if file_version is not None:
        out += _length_delimited(3, file_version.encode())
    if scalars:
        values = b"".join(
            _length_delimited(1, _length_delimited(1, tag.encode()) + b"\x15" + struct.pack("<f", float(value)))
            for tag, value in scalars.items()
        )
        out += _length_delimited(5, values)
    return out


class TensorBoardWriter:
    def __init__(self, directory: str | Path):
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.jaxrec"
        self._file = open(directory / name, "ab")
        self._write(_event(time.time(), 0, file_version="brain.Event:2"))

    def _write(self, record: bytes) -> None:
        header = struct.pack("<Q", len(record))
        self._file.write(header + struct.pack("<I", _masked_crc(header)) + record + struct.pack("<I", _masked_crc(record)))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self._write(_event(time.time(), step, scalars=values))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class MetricsLog:
    """Appends one JSON object per call to ``metrics.jsonl`` and mirrors the
    scalars to TensorBoard under ``tensorboard/``."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True):
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(run_dir / "metrics.jsonl", "a")
        self._tb = TensorBoardWriter(run_dir / "tensorboard") if tensorboard else None

    def write(self, step: int, values: dict[str, float], split: str = "train") -> None:
        row = {"step": step, "split": split, "time": round(time.time(), 3), **values}
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            self._tb.scalars(step, {f"{split}/{k}": v for k, v in values.items()})

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
