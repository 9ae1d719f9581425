"""Command line of obcache: `obcache eval ...` (or `python -m obcache eval ...`)."""
import argparse
import sys

COMMANDS = {"eval": "measure every eviction method on a real model (see `obcache eval --help`)"}


def main(argv=None):
    """Dispatch the subcommand; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="obcache", description="obcache command line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    if argv[0] not in COMMANDS:
        parser.error(f"unknown command {argv[0]!r}; valid: {', '.join(COMMANDS)}")
    from obcache.eval.cli import main as eval_main

    return eval_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
