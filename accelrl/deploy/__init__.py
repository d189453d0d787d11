"""Zero-shot deployment: ONNX policy bundles, a torch-free runtime controller, machine
interfaces (simulation, EPICS Channel Access), a safety layer and a virtual accelerator.

Nothing in this package imports torch at run time: the runtime needs numpy, onnxruntime,
pydantic and (for EPICS) caproto only. Submodules are imported on first use.
"""

from __future__ import annotations
