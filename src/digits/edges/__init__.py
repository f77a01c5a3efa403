"""The edges: one module per outside library or service (tracking, registry, validation,
Dask, Prefect, the CLI), each keeping its library to itself."""
