"""Developer tooling: the ``make run`` launcher and the ``make chat`` terminal client."""
