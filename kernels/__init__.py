"""markovian-rsa's Triton kernels (CCA for ZAYA1), each beside its plain PyTorch reference.

Installed as ``mrsa.kernels``; not Hugging Face's ``kernels`` library, which transformers
imports when it is installed (tests/packaging/test_names.py).
"""

if __name__ == "kernels":  # this folder, found under the bare name from a checkout's root
    from mrsa import step_aside

    step_aside(__name__, __file__)

