"""The pipeline's stages: one thin command line per DVC / Snakemake stage (`python -m
stages.<name> --flags`), each over library functions of `bowflow`. dvc.yaml is generated
from workflow/pipeline.py; a stage never reads params.yaml itself."""
