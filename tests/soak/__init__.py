"""The soak run (`make soak`, `python -m tests.soak`): the real stack for a long while, audited.

Not a pytest module, so `make test` never collects it.
"""
