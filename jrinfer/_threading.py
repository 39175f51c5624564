"""Locks around torch state that is global to the process, not to a thread.

torch's forward-mode automatic differentiation keeps its dual levels
(``torch.autograd.forward_ad.dual_level``, also entered by
``torch.func.jacfwd``/``jvp``) in process-global state: two threads inside
forward mode at once close each other's levels ("Trying to create a dual Tensor
for forward AD but no level exists"). Every forward-mode Jacobian in jrinfer
runs under :data:`FORWARD_AD`, so fits in threads (a ``ThreadPoolExecutor``,
Dask's threaded workers) are correct; their forward-mode parts run one at a
time. Processes are unaffected.
"""

import threading

#: Held while a thread is inside torch forward-mode AD.
FORWARD_AD = threading.RLock()
