"""The sans-IO core: protocol logic driven by messages in and the current time.

Nothing under ``mesh.core`` imports trio, httpx or socket, reads a clock or uses the
global random generator; a test proves it. Inputs carry ``now`` (float seconds on
the caller's clock); outputs are :mod:`mesh.core.effects` values for the caller to
execute, plus ``next_deadline()`` telling it when to call ``tick`` again.
"""
