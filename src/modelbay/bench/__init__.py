"""`modelbay bench`: a load generator (load.py) and the sweep that finds the best batching (sweep.py)."""
