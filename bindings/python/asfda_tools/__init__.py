"""Tool-time Python for asfda (never needed at run time by the library):

- ``asfda_tools.synth``: synthetic subjects and scanner "sites" from real ICBM152 anatomy;
- ``asfda_tools.export``: model bundles (inference ONNX, standard-op train-step ONNX, checkpoint,
  manifest, source knowledge) from a PyTorch module.
"""
