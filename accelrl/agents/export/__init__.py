"""Trained policies as ONNX policy bundles (the format is :mod:`accelrl.bundle`).

* :mod:`~accelrl.agents.export.writer`: :func:`~accelrl.agents.export.writer.export` (an
  :class:`~accelrl.agents.policy.MLPPolicy` directory or an SB3 zip -> a verified bundle);
* :mod:`~accelrl.agents.export.sb3`: an SB3 model as an ``MLPPolicy``;
* :mod:`~accelrl.agents.export.onnx_graph`: the ONNX graph, op by op from the weights.
"""
