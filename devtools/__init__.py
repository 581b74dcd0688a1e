"""Development tooling: the tansu broker launcher and the local dev stack (the `sim` extra; not in the image)."""
