"""ONNX export of trained engine models (planned: `engine export`, not built yet).

The checkpoint already carries what an exporter needs to rebuild the exact model on its own:
the config, the input shape, the class names and the normalisation (see
`engine.checkpoint.model_from_checkpoint`). Nothing here is imported by `engine` today.
"""
