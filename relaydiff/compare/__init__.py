"""The method comparison: single-stage EDM, CDM, LowDiff and relay on one budget (docs/COMPARE.md).

    python -m relaydiff.compare --smoke

study.py runs it (options, training each method's units, sampling at matched NFE, scoring,
results.md); methods.py says what each method trains and how it samples; nets.py, cdm.py,
lowdiff.py and single_stage.py are the baselines' networks, losses and samplers. The study
uses the core (networks, losses, sampling, training_loop) and nothing in the core uses it.
"""

from .study import SMOKE, main, parse_args, run, score, write_results

__all__ = ["SMOKE", "main", "parse_args", "run", "score", "write_results"]
