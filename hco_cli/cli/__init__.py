"""Command-line interface: thin modules that parse options and call library functions."""
