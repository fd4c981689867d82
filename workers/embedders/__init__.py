"""Embedding backends, one per module behind one interface (``base.Embedder``), and the one
factory that picks a backend for a model (``select.make_embedder``).

``base``     the interface, the frozen model spec, what every backend shares
``packing``  texts -> forward passes within a token budget
``torch``    sentence-transformers on torch (CPU or GPU)
``onnx``     an exported graph on onnxruntime (CPU, fp32 or int8)
``instant``  a fixed vector for every text, no model (benchmarks: the pipeline's ceiling)
``export``   the ONNX export and its int8 quantisation
``gate``     the quality gate an int8 backend passes before it serves
``select``   ``make_embedder``: the backend for a spec
"""
