"""PIPNet for the pipnet runtime: a PyTorch model whose state-dict keys match the official
PIPNet checkpoints, an exporter to the pipnet ONNX contract (format 1), and a numpy reference
of the contract's preprocessing, decoding and neighbour-vote merge.

Only numpy is needed for :mod:`pipnet_export.reference` and :mod:`pipnet_export.contract`;
:mod:`pipnet_export.pipeline` adds onnxruntime and Pillow; :mod:`pipnet_export.network` and
:mod:`pipnet_export.export` need torch and torchvision.
"""

__version__ = "0.1.0"
