"""Process control: the /proc reader, ports, the children's environment, the server executor, orphan sweeps.

Depends on nothing of the package but `errors`; knows nothing of pytest, vLLM or the backend.
"""
