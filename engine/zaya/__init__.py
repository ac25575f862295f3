"""ZAYA1 (Compressed Convolutional Attention + MoE) as an out-of-tree vLLM model.

``plugin.register`` is the ``vllm.general_plugins`` entry point; ``model.ZayaForCausalLM`` is the
vLLM model; ``tiny`` writes a tiny random checkpoint for tests. Importing this package imports
nothing heavy: vLLM and torch are imported by the submodules that need them.
"""
