"""`python -m ppp_min.bench NAME [args]`: run one benchmark (sampler | simulator)."""

import importlib
import sys

NAMES = ("sampler", "simulator")


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in NAMES:
        print(f"usage: python -m ppp_min.bench {{{'|'.join(NAMES)}}} [--help]", file=sys.stderr)
        return 2
    mod = importlib.import_module(f"ppp_min.bench.{sys.argv[1]}")
    return mod.main(sys.argv[2:]) or 0


if __name__ == "__main__":
    sys.exit(main())
