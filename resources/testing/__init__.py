"""What tests and benchmarks make for themselves: synthetic table rows, official-layout tiles, a COG
server that fails on request, `tessera serve` as a process, geotessera itself in its own environment,
and the op-by-op reference model the fast encoder is measured against. Shipped apart from `model/` and
`tests/` so that benchmarks never import from tests/ and the model package holds only what inference
and training run."""
