"""What a stage handler (handlers.py) is given: light, so that the render session can be set
up, and a fully cached film delivered, without the GPU stack (numpy, torch) installed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from moldbatch.execute.store import Artifact


@dataclass
class StageContext:
    """What a handler may use: the artifacts of its needs, and the shared runtimes."""

    device: str | None
    inputs: dict[str, Artifact]  # stage id -> artifact, for this stage's needs
    on_step: Callable[[int, int], None] | None = None
    runtimes: dict = field(default_factory=dict)  # model name -> Runtime, one per process
    compile: bool = False  # torch.compile the transformer (render --compile)
    memory: str = "resident"  # the runtimes' memory tier (runtime/memory.py)

    def runtime(self, model: str):
        if model not in self.runtimes:
            from moldbatch.runtime import Runtime

            self.runtimes[model] = Runtime(
                model, device=self.device, compile=self.compile, memory=self.memory
            )
        return self.runtimes[model]
