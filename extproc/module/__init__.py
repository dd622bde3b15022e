"""The Envoy dynamic module of ``--data-path module``: the C shim and its build.

- ``extproc_module.c``: the shim, the project's only C. Inside Envoy (an HTTP filter) it picks
  hosts from the tables the service writes into a shared region and reports the outcomes;
  it decides nothing. Its contract is the "module path" section of ``extproc/wire.py``.
- ``build``: compiles it with the system C compiler into a cache, once per source and
  compiler (``build()`` returns the directory for ``ENVOY_DYNAMIC_MODULES_SEARCH_PATH``).

Rules of the room: ``build`` imports only ``errors`` and ``wire``; nothing here runs at
import time.
"""
