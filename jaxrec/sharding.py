"""Mapping logical axis names onto a device mesh: which mesh axes each
dimension of an array is split over. A leaf module (jax and numpy only), so
the model layers can pin activations to the batch axes without importing the
training layer."""

from __future__ import annotations

import math
from typing import Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def dimension_axes(shape: Sequence[int], logical: Sequence[str | None], mesh: Mesh,
                   rules: dict) -> list[tuple[str, ...]]:
    """The mesh axes each dimension is split over; axes that do not divide it
    or are already used by an earlier dimension are left out."""
    used: set[str] = set()
    out = []
    for size, name in zip(shape, logical):
        axes: list[str] = []
        for axis in rules.get(name, ()) if name is not None else ():
            span = math.prod(mesh.shape[a] for a in axes + [axis])
            if axis not in used and size % span == 0:
                axes.append(axis)
        used.update(axes)
        out.append(tuple(axes))
    return out


def physical_spec(shape: Sequence[int], logical: Sequence[str | None], mesh: Mesh, rules: dict) -> PartitionSpec:
    """``dimension_axes`` as a PartitionSpec (one axis by its name, none as None)."""
    return PartitionSpec(*(axes if len(axes) > 1 else (axes[0] if axes else None)
                           for axes in dimension_axes(shape, logical, mesh, rules)))


def tree_shardings(abstract, logical_specs, mesh: Mesh, rules: dict):
    """NamedShardings for a tree of arrays given their logical PartitionSpecs."""
    return jax.tree.map(
        lambda leaf, spec: NamedSharding(mesh, physical_spec(leaf.shape, tuple(spec), mesh, rules)),
        abstract,
        logical_specs,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )



def batch_devices(mesh: Mesh, batch_axes: Sequence[str]) -> int:
    """Devices a global batch is split over (row counts must be a multiple of it)."""
    return math.prod(mesh.shape[axis] for axis in batch_axes)
