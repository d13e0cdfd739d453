"""`python -m ppp_min.bench NAME [args]`: run one benchmark (sampler | simulator) or diagnostic (induction)."""

import sys

from ppp_min.bench import induction, sampler, simulator

BENCHMARKS = {"sampler": sampler.main, "simulator": simulator.main, "induction": induction.main}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in BENCHMARKS:
        print(f"usage: python -m ppp_min.bench {{{'|'.join(BENCHMARKS)}}} [--help]", file=sys.stderr)
        return 2
    return BENCHMARKS[sys.argv[1]](sys.argv[2:]) or 0


if __name__ == "__main__":
    sys.exit(main())
