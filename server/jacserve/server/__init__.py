"""The jacserve server: registry, engine and gRPC service for remote differentiation.

Start one from Python with :func:`jacserve.server.app.serve`, or from a shell with
``jacserve serve``.
"""
