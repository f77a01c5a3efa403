"""The team shape of the project's services: shared servers that several people and machines use.

`python -m digits.edges.team up|down|status` (``make team-up``, ``team-down``, ``team-status``)
runs, under one git-ignored state folder (``.team/``):

* PostgreSQL (Debian's server; the databases of MLflow, MLflow's users and Prefect),
* an S3 store (``rclone serve s3``): MLflow's artifacts and the DVC remote,
* an MLflow server on PostgreSQL with artifacts in S3 served through it and basic auth,
* a Prefect server on PostgreSQL with an API auth string,
* a Dask scheduler with TLS (a self-signed CA; certificates for the scheduler, clients and each
  worker host).

A checkout moves onto them with one variable, ``DIGITS_SERVICES=team``
(`digits.edges.services`), which reads ``.team/client.env``.
"""
