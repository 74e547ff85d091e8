"""Fidelity checks: our methods against their authors' official code (copied weights, identical inputs).

The official code is never part of this repository: each script takes `--official PATH` to a checkout
made elsewhere (e.g. with git clone into /tmp) and imports it from there."""
