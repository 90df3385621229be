"""``python -m cafeslim`` runs the command line, exactly like the ``cafeslim`` script."""

from cafeslim.cli.app import main

if __name__ == "__main__":
    main()
