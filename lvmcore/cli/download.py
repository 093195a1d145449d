"""``lvmcore download-mnist DEST``: statically binarized MNIST, checked by SHA-256."""

from ._common import PROG


def add_parser(sub):
    dl = sub.add_parser(
        "download-mnist",
        help="download statically binarized MNIST",
        description="Download the three binarized MNIST .amat files "
        "(Larochelle & Murray 2011) and check their SHA-256.",
    )
    dl.add_argument("dest", metavar="DEST", help="folder to write into (created if absent)")
    dl.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    dl.set_defaults(func=run)
    return dl


def run(args):
    from ..data import download_binarized_mnist

    dest = download_binarized_mnist(args.dest, progress=args.progress)
    print(f"{PROG}: binarized MNIST is in {dest}; train on it with `{PROG} train --data {dest}`")
    return 0
