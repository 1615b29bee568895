"""One module per subcommand of ``python -m zoo``: parse the arguments, make one library call, print.

Only :mod:`zoo.cli` (the table of subcommands) imports these; nothing else in zoo parses a command line.
"""
