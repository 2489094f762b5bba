"""``python -m tilesparse``: the ``tilesparse`` command, through the same entry point (one-line
errors, exit codes, ``--debug``)."""

from tilesparse.cli.main import main

if __name__ == "__main__":
    main()
