"""The map explorer: `tessera serve` (a Starlette app on uvicorn) and its single page. A leaf:
nothing outside this package imports it but the command line."""
