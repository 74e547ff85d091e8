"""Fidelity checks against the methods' official code, run from a scratch checkout of that code
(never copied into this repository): `python -m benchmarks.fidelity.<method> --official PATH`."""
