"""The checks behind `python -m bowflow.config` (the check_params stage), one job per module:

    schema         one key or one section: types, unknown keys, top-level values, run names
    runs           the four kinds of run (one per role) and the one (section, key, run) walk
    backbones      the backbone a run builds, on PyTorch's meta device, for layer checks
    run_sections   the entries of pretrain:, generations:, teachers:, distill: (method, role,
                   imported weights, generation parents, distillation teachers)
    cross_run      what relates runs to each other and to the other sections (layers,
                   patches, batches, resources, parents' compatibility)
    dvc_sync       params.yaml against what dvc.yaml was written for (seeds, imported runs)
    data_needs     what the params ask of the images, for the prepare stage
    probes         this machine and file system (data folders, GPUs)
    validate       `validate_params`: a whole params.yaml, in order

`bowflow.config` is the command line and re-exports the public names."""
