"""Pipeline stages: thin wrappers that read a params section, call the library, write outputs
atomically and log to MLflow. Each is runnable as `python -m stages.NAME [REGIME]`, and each
exposes `run(params, regime=None)` which the Prefect flow calls as well."""
