"""Test only: on a server started with ``PYTHON_JACSERVE_COMPROMISED=1`` and this folder
on ``PYTHONPATH``, every real worker (forked from the zygote, confined, its archive
loaded) obeys requests whose method is ``attack:…`` — what a worker is once an archive has
found a way to run code. See ``attacks.py`` and ``tests/e2e/test_compromised_worker.py``.
"""

import os

if os.environ.get("PYTHON_JACSERVE_COMPROMISED") == "1":
    import attacks

    attacks.install()
