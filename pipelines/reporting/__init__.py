"""What a person reads after a run: the evaluation table, restorations side by side, training
curves and the run's provenance, as one self-contained HTML page (no torch imports here)."""
