"""card stage: the model cards (README.md) of the merged model and of the adapter, for the Hub."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sqltune.cards import write_cards  # noqa: E402
from sqltune.config import load_params  # noqa: E402
from sqltune.errors import run_main  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--metrics", required=True, help="the evaluate stage's headline metrics (JSON)")
    ap.add_argument("--out", required=True, help="output folder: <out>/merged/README.md and <out>/adapter/README.md")
    args = ap.parse_args()

    params = load_params(args.params)
    written = write_cards(params, args.metrics, args.out)
    print(f"card: wrote {', '.join(map(str, written))}")


if __name__ == "__main__":
    run_main(main, log="card")
