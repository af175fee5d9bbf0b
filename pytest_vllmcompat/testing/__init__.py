"""What the compatibility tests share: the offline tiny model, the transformers reference, fresh-interpreter
probes, and the backend's patches as data. Imports nothing heavy at module import."""
