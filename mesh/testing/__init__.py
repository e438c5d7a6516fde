"""Test helpers shipped with mesh, as trio ships trio.testing."""
