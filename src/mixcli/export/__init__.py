"""`mix export`'s formats: for now the merged checkpoint in its authors' layout (export/checkpoint.py)."""
