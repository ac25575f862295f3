"""Reporting of evaluation results: a console table and a PNG plot."""
