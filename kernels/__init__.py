"""Numba kernels for the hot paths, installed as ``erniem_np.kernels``.

Each module holds the plain NumPy twin of its operation first, then the Numba kernel. The NumPy reference
backend (``erniem_np.layers``) is complete on its own; the kernels arrive with the kernels work and are
switched in through ``backend=``.
"""
