"""How many jobs of a sweep may run at once, overall and per target, and which GPU each gets."""

from __future__ import annotations

from runner.launch import Plan


class Capacity:
    """How many jobs may run at once, overall and per target, and which GPU each gets."""

    def __init__(self, max_parallel: int | None) -> None:
        self.max_parallel = max_parallel if max_parallel and max_parallel > 0 else None
        self.running: dict[str, int] = {}
        self.gpu_load: dict[str, dict[str, int]] = {}

    def free(self, plan: Plan) -> bool:
        total = sum(self.running.values())
        if self.max_parallel is not None and total >= self.max_parallel:
            return False
        slots = int(getattr(plan.backend.config, "slots", 1) or 0)
        return slots <= 0 or self.running.get(plan.target_name, 0) < slots

    def take(self, plan: Plan, gpus: list[str] | None) -> str | None:
        self.running[plan.target_name] = self.running.get(plan.target_name, 0) + 1
        if not gpus:
            return None
        load = self.gpu_load.setdefault(plan.target_name, {g: 0 for g in gpus})
        gpu = min(gpus, key=lambda g: (load.get(g, 0), gpus.index(g)))
        load[gpu] = load.get(gpu, 0) + 1
        return gpu

    def give_back(self, plan: Plan, gpu: str | None) -> None:
        self.running[plan.target_name] -= 1
        if gpu is not None:
            self.gpu_load[plan.target_name][gpu] -= 1
