"""The ``tilesparse`` command line (typer). One module per group of verbs; see ``main.py``."""
