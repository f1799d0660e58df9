"""The layout of the schedulable workers, before any job is charged: their groups (one per pool,
GPU type, region and spot), members and capacities. It depends on the workers alone, so it is worked
out once for a tuple of workers and kept while a cycle is handed the same one."""

from __future__ import annotations

import operator
from dataclasses import dataclass

from trainyard.scheduler.snapshot import ResourceVector, Worker

_by_id = operator.attrgetter("id")


@dataclass(frozen=True, slots=True)
class FleetLayout:
    """What the workers alone decide, before any job is charged: the groups, their members and
    capacities. The simulator hands every cycle the same workers until one leaves or comes back,
    so :func:`fleet_layout` keeps the last one worked out."""

    workers: tuple[Worker, ...]
    """The snapshot's tuple it was worked out from (the key: the same object)."""
    gpu_type_of: dict[str, str | None]
    """GPU type of every registered worker (see ``Fleet.gpu_type_of``); never changed."""
    members: tuple[tuple[Worker, int], ...]
    """The schedulable workers, each id once, in id order, with the index of its group."""
    specs: tuple[tuple[str, str | None, str | None, bool], ...]
    """Each group's (pool, GPU type, region, spot), in the order first met."""
    shapes: tuple[dict[tuple[float, int, int], int], ...]
    """Each group's ``WorkerGroup.shapes``; never changed (a fleet copies them)."""
    max_gpu: tuple[int, ...]
    order: tuple[int, ...]
    """The groups' indexes sorted by (pool, GPU type, region, spot)."""
    capacity: ResourceVector


_last_layout: list[FleetLayout] = []
"""The last layout worked out (one entry): swapped whole, so a concurrent cycle sees an old or a new
one, each complete."""


def fleet_layout(workers: tuple[Worker, ...]) -> FleetLayout:
    """The layout of these workers: the last one if it was worked out from this very tuple."""
    last = _last_layout[:1]
    if last and last[0].workers is workers:
        return last[0]
    in_id_order = sorted(workers, key=_by_id)
    seen: set[str] = set()
    index: dict[tuple[str, str | None, str | None, bool], int] = {}
    members: list[tuple[Worker, int]] = []
    shapes: list[dict[tuple[float, int, int], int]] = []
    max_gpu: list[int] = []
    total = [0.0, 0.0, 0.0]
    for w in in_id_order:
        if not w.schedulable or w.id in seen:
            continue
        seen.add(w.id)
        constraints = (w.pool, w.gpu_type, w.region, w.spot)
        i = index.get(constraints)
        if i is None:
            i = index[constraints] = len(shapes)
            shapes.append({})
            max_gpu.append(0)
        members.append((w, i))
        shape = (float(w.cpu), w.memory, w.gpu)
        shapes[i][shape] = shapes[i].get(shape, 0) + 1
        if w.gpu > max_gpu[i]:  # max(), without the builtin's keyword parsing
            max_gpu[i] = w.gpu
        total[0] += w.cpu
        total[1] += w.memory
        total[2] += w.gpu
    specs = tuple(index)
    layout = FleetLayout(
        workers=workers,
        gpu_type_of={w.id: w.gpu_type for w in in_id_order},
        members=tuple(members),
        specs=specs,
        shapes=tuple(shapes),
        max_gpu=tuple(max_gpu),
        order=tuple(sorted(range(len(specs)), key=lambda i: _group_order(specs[i]))),
        capacity=ResourceVector(*total),
    )
    _last_layout[:] = [layout]
    return layout


def _group_order(spec: tuple[str, str | None, str | None, bool]) -> tuple[str, str, str, bool]:
    pool, gpu_type, region, spot = spec
    return (pool, gpu_type or "", region or "", spot)
