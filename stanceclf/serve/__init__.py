"""The HTTP API (``stanceclf serve``): a FastAPI app that micro-batches concurrent requests.

Needs the ``serve`` extra (``pip install 'stanceclf[serve]'``). Nothing here is imported by
``import stanceclf`` or by the other verbs.
"""
