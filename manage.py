#!/usr/bin/env python
"""Django's command-line utility for PiCloud."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "picloud.settings")
    from django.core.management import execute_from_command_line

    from picloud.config import ConfigError

    try:
        execute_from_command_line(sys.argv)
    except ConfigError as exc:
        # One line that names the variable, the value and what is allowed.
        sys.exit(f"picloud: configuration error: {exc}")


if __name__ == "__main__":
    main()
