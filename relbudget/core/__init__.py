"""The core every phase stands on: params (typed, validated), paths, atomic file io, the pandera
schemas of the tables between stages, user-facing errors and MLflow tracking. It imports no other
layer of relbudget."""
