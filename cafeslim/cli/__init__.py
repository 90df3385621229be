"""The ``cafeslim`` command line: one module per sub-command, registered in :mod:`.app`.

Commands parse flags, call one library function and render its result; they import the
library lazily so that ``cafeslim --help`` does not pay for importing torch.
"""
