"""pgml_fdw: train and serve scikit-learn models from SQL, through a Multicorn foreign data wrapper."""

__version__ = "0.5.1"
