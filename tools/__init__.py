"""The harness next to the product: the demo, the benchmarks, the fault report and its hostile
messages, the dataset reader, and real worker processes for the tests. It imports ``jobfit``;
nothing in ``jobfit`` imports it, and the wheel does not ship it. Run it from the repository
root: ``python -m tools --help``."""
