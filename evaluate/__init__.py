"""spritegen.evaluate: the evaluator, reference statistics, metrics, the suite, reports (and the gate).

Installed from the repository's ``evaluate/`` folder as ``spritegen.evaluate`` (see pyproject.toml), so it
can never be confused with Hugging Face's ``evaluate`` package.

    from spritegen.evaluate.metrics import fd, kid, prdc, r_precision_hits, collapse_score   # pure maths
    from spritegen.evaluate.evaluator import load_evaluator                                 # the CLIP-style model
    from spritegen.evaluate.suite import evaluate_images, EvaluateConfig                    # the whole suite

Commands: ``spritegen evaluator | reference | evaluate | report`` (see docs/evaluation.md).
"""
