"""Entry point: python -m tokcodec.train {tokenizer,ladder,...} [options]."""

import argparse

from . import decoder, prior, quality, realism, tokenizer


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tokcodec.train", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    tokenizer.add_args(sub)
    prior.add_args(sub)
    quality.add_args(sub)
    realism.add_args(sub)
    decoder.add_args(sub)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
