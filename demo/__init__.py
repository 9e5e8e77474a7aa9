"""One-machine demonstration of the whole pipeline (the README's main command)."""
