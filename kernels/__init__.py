"""markovian-rsa's Triton kernels (CCA for ZAYA1), each beside its plain PyTorch reference.

Not Hugging Face's ``kernels`` library: transformers probes for a package of that name, and
tests/unit/test_names.py proves it never mistakes this one for it.
"""
