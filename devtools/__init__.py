"""Development tooling: the tansu broker launcher and the local dev stack.

Installed with the `sim` extra; the container image does not ship it."""
