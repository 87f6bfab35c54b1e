"""Device mesh with axes (data, fsdp, tensor) and logical-axis sharding rules.

Parameters carry logical axis names; rules map each onto mesh axes. A mesh
axis that does not divide a dimension is dropped for that dimension (the
dimension is replicated), so e.g. 3 KV heads still run on tensor=2.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxrec.sharding import batch_devices

MESH_AXES = ("data", "fsdp", "tensor")

DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("lora_rank", None),
)


@dataclasses.dataclass
class MeshSpec:
    data: int = -1
    """Devices along the data axis; -1 takes every device not used by fsdp and tensor."""
    fsdp: int = 1
    tensor: int = 1
    rules: list[list[str]] | None = None
    """Logical-axis rules as [[logical, mesh axis or null], ...]; default: DEFAULT_RULES."""
    cpu_devices: int | None = None
    """On CPU, split the host into this many JAX devices (default: JAX's, one),
    which the mesh then spans: each runs its shard of the batch on its own
    thread, which small models use better than XLA's intra-op threads. Takes
    effect only where JAX has not started yet (``jaxrec.launch`` sets it first)."""

    def __post_init__(self):
        if self.cpu_devices is not None and self.cpu_devices < 1:
            raise ValueError(f"cpu_devices must be a positive count, got {self.cpu_devices}")


def make_mesh(spec: MeshSpec, devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = list(devices if devices is not None else jax.devices())
    local_cpus = [d for d in devices if d.platform == "cpu" and d.process_index == jax.process_index()]
    if spec.cpu_devices is not None and local_cpus and len(local_cpus) != spec.cpu_devices:
        raise ValueError(f"mesh.cpu_devices={spec.cpu_devices}, but JAX started with {len(local_cpus)} CPU device(s) "
                         "per process: it takes effect only before JAX starts, as python -m jaxrec.launch applies it")
    data = spec.data if spec.data != -1 else len(devices) // (spec.fsdp * spec.tensor)
    shape = (data, spec.fsdp, spec.tensor)
    if math.prod(shape) != len(devices) or data < 1:
        raise ValueError(
            f"mesh data={spec.data}, fsdp={spec.fsdp}, tensor={spec.tensor} does not fit {len(devices)} devices"
        )
    axis_types = (jax.sharding.AxisType.Auto,) * 3  # sharding propagates from the annotated inputs
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=axis_types)


def rules_of(spec: MeshSpec) -> dict[str, tuple[str, ...]]:
    pairs = DEFAULT_RULES if spec.rules is None else [tuple(r) for r in spec.rules]
    table = {}
    for logical, target in pairs:
        if target is None:
            table[logical] = ()
        else:
            table[logical] = (target,) if isinstance(target, str) else tuple(target)
        unknown = [a for a in table[logical] if a not in MESH_AXES]
        if unknown:
            raise ValueError(f"sharding rule for {logical!r} names unknown mesh axes {unknown}; use {MESH_AXES}")
    return table


def local_batch_devices(mesh: Mesh, batch_axes: Sequence[str]) -> int:
    """Devices this process's block of a batch is split over."""
    return batch_devices(mesh, batch_axes) // process_batch_block(mesh, batch_axes)[1]


def process_batch_block(mesh: Mesh, batch_axes: Sequence[str], process_index: int | None = None) -> tuple[int, int]:
    """(block, blocks): the part of every global batch this process reads.

    A global batch is split into ``blocks`` equal contiguous blocks of rows,
    one per distinct set of rows the processes' devices hold under the batch
    sharding. Processes whose devices hold the same rows (the batch axes lie
    within each process, or have size 1, so the batch is replicated across
    processes) read the same block; with no process sharing rows, blocks is the
    number of processes.
    """
    process_index = jax.process_index() if process_index is None else process_index
    rows = batch_devices(mesh, batch_axes)
    sharding = NamedSharding(mesh, PartitionSpec(tuple(batch_axes) or None))
    held: dict[int, set[int]] = {}
    for device, index in sharding.devices_indices_map((rows,)).items():
        span = index[0]
        held.setdefault(device.process_index, set()).update(range(span.start or 0, rows if span.stop is None else span.stop))
    distinct = sorted({tuple(sorted(r)) for r in held.values()})
    for block in distinct:
        if list(block) != list(range(block[0], block[0] + len(block))) or len(block) != len(distinct[0]):
            raise ValueError(f"the mesh {dict(mesh.shape)} gives processes uneven or non-contiguous batch rows "
                             f"{distinct}; order the devices so that each process holds one contiguous block")
    covered = sorted(i for block in distinct for i in block)
    if covered != list(range(rows)):
        raise ValueError(f"the processes' batch rows {distinct} overlap without being equal; use a mesh whose "
                         "batch axes split the processes evenly or lie within each process")
    return distinct.index(tuple(sorted(held[process_index]))), len(distinct)
