"""`moss-edge`, the command line: one module per concern.

main.py builds the parser and maps failures to exit codes (exit_codes.py); transcribe.py has
`run`, `transcribe` and `ask`; live.py `listen`; bundle.py `info`, `export` and `quantize`;
serve.py `serve`; bench.py `bench`; demo.py `demo`.
"""
from .main import build_parser, main

__all__ = ["build_parser", "main"]
