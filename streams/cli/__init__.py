"""The ``cronorch`` command line: entry point, sub-commands and the local dev stack.
"""
