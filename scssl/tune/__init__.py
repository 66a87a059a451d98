"""Tune layer: search spaces, the Ray Tune trainable, MLflow tracking, and the final retrain stage."""
