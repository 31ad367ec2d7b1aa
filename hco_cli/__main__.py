"""``python -m hco_cli`` runs the ``hco`` command, where the console script is not installed."""

from hco_cli.cli.app import main

if __name__ == "__main__":
    main()
