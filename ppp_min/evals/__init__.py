"""Evaluation: the one evaluation path (EvalConfig), paper Table 2 reports, sample records, show, API agents."""
