"""The notebook suite (01_baseline ... 06_summary) and `perfkit suite`, which runs it.

Notebooks stay thin: a `parameters` cell, one `context.setup(...)` call that validates every
parameter and the params file, then calls into their module here and `perfkit.plots`.
Everything a notebook computes is reachable (and tested) from these modules:

    params      the params schema (`load_suite_params`) and the notebooks' parameters
    context     `setup`, `Context`, the shared sample (`ensure_sample`) and small shared helpers
    baseline    01_baseline          profiling   02_profiling         scaling     03_scaling
    tuning      04_tuning            validation  05_full_validation   verdict     06_summary
    runner      `perfkit suite`: the notebooks through papermill into one run folder

The maths that needs no knowledge of the models or notebooks is the kit's: `perfkit.projection`
(projections to the full sample), `perfkit.scaling_maths` (1-vs-N fits and factors), `perfkit.utilisation`
(a chain's GPU utilisation) and `perfkit.verdict` (a run folder's criteria verdict).

Run folder layout (`run_dir`):
    sample.fa, sample.json           the synthetic sample, made once per run folder
    <notebook>/metrics.json          headline values the notebook recorded (+ its details)
    <notebook>/*.png, *.json         figures and tables
    <notebook>/runs/<name>/          each embedding run's summary.json, telemetry.jsonl
    <notebook>.ipynb / .html         executed notebooks (written by `perfkit suite`)
    suite.json, summary.json         suite status; the criteria verdict (06)
"""
