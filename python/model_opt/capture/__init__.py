"""Capturing a training step as an aten-level graph, faithful to eager PyTorch.

* `step` — trace the user's step function (`capture_step`) and run the graph on real tensors
  (`CapturedStep.run`);
* `discover` — find the modules and optimizers a step function uses;
* `ops` — the operators that keep the graph faithful: the optimizer's own step, the RNG state;
* `ddp` — DistributedDataParallel's communication as operators;
* `guards` — the context a captured graph depends on, read at every call;
* `dataflow` — the storage-level dataflow graph the scheduler takes, and `CaptureError`.
"""

from model_opt.capture.dataflow import CaptureError, DataflowGraph, build_dataflow
from model_opt.capture.step import (
    CapturedStep,
    StepState,
    capture_inference_step,
    capture_step,
    capture_training_step,
)

__all__ = [
    "CaptureError",
    "CapturedStep",
    "DataflowGraph",
    "StepState",
    "build_dataflow",
    "capture_inference_step",
    "capture_step",
    "capture_training_step",
]
