"""`moss-edge`'s exit codes, defined once."""

OK = 0
FAILURE = 1  # a bug: the traceback is printed
USAGE = 2  # argparse's own
BAD_INPUT = 3  # an InputError: audio, bundle, checkpoint, device or output directory
MISSING_EXTRA = 4  # an optional dependency is not installed
INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT
