"""Deployments of the SFT pipeline: `python -m deployments.serve`, or `prefect deploy` with prefect.yaml."""
