"""Test setup: 8 host CPU devices, so multi-device code is tested on one CPU.

The flag must be set before jax is imported anywhere, which is why it lives here.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
