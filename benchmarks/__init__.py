"""`make bench`: FlexIP's cost on a full-size SD1.5 step, with ComfyUI in-process (see README.md here).

OpenMP threads are told to sleep, not spin, while they wait (`OMP_WAIT_POLICY=PASSIVE`, unless
the caller set it): on a shared machine a spinning thread burns CPU time that is not work, and
the timed figures compare CPU time. It must be set before torch is imported.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
