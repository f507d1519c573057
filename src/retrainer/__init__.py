"""retrainer: keep a tabular model fresh."""
