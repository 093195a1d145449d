"""Argument types of the command line: a bad value fails at parse time with argparse's usage
line and exit status 2 ("argument --lr: expected a positive number, got '-1'").

The models name their own flags with these types (``Model.flags``), so this module imports
nothing from lvmcore.
"""

import argparse

__all__ = [
    "positive_int",
    "nonneg_int",
    "positive_float",
    "nonneg_float",
    "unit_float",
    "int_list",
    "nonempty_text",
    "latent_widths",
]


def _number(kind, low, low_inclusive, what):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if (
            value != value
            or value < low
            or (value == low and not low_inclusive)
            or value == float("inf")
        ):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what
    return parse


positive_int = _number(int, 1, True, "a positive integer")
nonneg_int = _number(int, 0, True, "a non-negative integer")
positive_float = _number(float, 0.0, False, "a positive number")
nonneg_float = _number(float, 0.0, True, "a non-negative number")


def unit_float(text):
    """A number in [0, 1)."""
    value = nonneg_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def int_list(text):
    """'200,200' -> (200, 200); '' -> () (no hidden layer). An empty item ('16,,16', '16,')
    is an error, not skipped: it is more likely a typo than a wish for fewer layers."""
    message = (
        f"expected comma-separated positive integers such as 200,200 (or '' for none), got {text!r}"
    )
    if not text.strip():
        return ()
    try:
        sizes = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(message) from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(message)
    return sizes


def nonempty_text(what):
    """A type that refuses an empty (or blank) string, e.g. ``--data ""`` from an unset
    shell variable, which would otherwise fall back to a default silently."""

    def parse(text):
        if not text.strip():
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return text

    parse.__name__ = what
    return parse


def latent_widths(text):
    """'50' -> 50; '100,50' -> (100, 50): one latent width, or one per stochastic layer."""
    try:
        sizes = int_list(text)
    except argparse.ArgumentTypeError:
        sizes = ()
    if not sizes:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer, or one per stochastic layer such as 100,50, got {text!r}"
        )
    return sizes[0] if len(sizes) == 1 else sizes
